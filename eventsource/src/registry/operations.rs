//! What the tools of operators do with a registered aggregate type without naming it in code.

use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::error::Result;
use crate::event_store::EventStore;
use crate::repository::{Repository, VerifyReport};
use crate::snapshot::{SnapshotPolicy, SnapshotStore};

/// A registered aggregate type's repository operations, behind a trait object: what the
/// admin command line runs for a type it knows only by name. `#[derive(Aggregate)]`
/// registers one for every non-generic state ([`AggregateRegistration::operations`]).
///
/// [`AggregateRegistration::operations`]: super::AggregateRegistration::operations
pub trait AggregateOperations: Send + Sync {
    /// [`Repository::warm_snapshot`]: writes a current-schema snapshot from a full replay;
    /// returns the version it stands for, or `None` when the store kept a newer one.
    fn warm_snapshot(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        id: Uuid,
    ) -> BoxFuture<'static, Result<Option<u64>>>;

    /// [`Repository::verify_each`]: compares each aggregate's load from its snapshot with a
    /// full replay.
    fn verify(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        ids: Vec<Uuid>,
    ) -> BoxFuture<'static, Result<VerifyReport>>;
}

/// The [`AggregateOperations`] of `A`.
pub struct OperationsOf<A>(PhantomData<fn() -> A>);

impl<A> OperationsOf<A> {
    /// The operations, as a constant the registration can point at.
    pub const NEW: Self = OperationsOf(PhantomData);
}

fn repository<A: Aggregate>(events: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) -> Repository<A> {
    // Manual: loading for a check or a warm-up never writes a snapshot of its own accord.
    Repository::new(events).with_snapshots(snapshots, SnapshotPolicy::manual())
}

impl<A: Aggregate> AggregateOperations for OperationsOf<A> {
    fn warm_snapshot(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        id: Uuid,
    ) -> BoxFuture<'static, Result<Option<u64>>> {
        Box::pin(async move {
            let snapshot = repository::<A>(events, snapshots).warm_snapshot(id).await?;
            Ok(snapshot.map(|s| s.version))
        })
    }

    fn verify(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        ids: Vec<Uuid>,
    ) -> BoxFuture<'static, Result<VerifyReport>> {
        Box::pin(async move { repository::<A>(events, snapshots).verify_each(ids).await })
    }
}
