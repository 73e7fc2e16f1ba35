//! What the tools of operators do with an aggregate type they know by name only: a
//! repository's operations behind a trait object, registered by `#[derive(Aggregate)]` beside
//! the type's registration.

use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::{Repository, VerifyReport};
use crate::aggregate::Aggregate;
use crate::error::Result;
use crate::event_store::EventStore;
use crate::personal::Keyring;
use crate::snapshot::{SnapshotPolicy, SnapshotStore};

/// A registered aggregate type's repository operations, behind a trait object: what the
/// admin command line runs for a type it knows only by name. `#[derive(Aggregate)]`
/// registers one for every non-generic state; [`operations_of`] finds it.
pub trait AggregateOperations: Send + Sync {
    /// [`Repository::warm_snapshot`]: writes a current-schema snapshot from a full replay
    /// (personal fields opened with `keys`); returns the version it stands for, or `None`
    /// when the store kept a newer one.
    fn warm_snapshot(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        keys: Option<Keyring>,
        id: Uuid,
    ) -> BoxFuture<'static, Result<Option<u64>>>;

    /// [`Repository::verify_each`]: compares each aggregate's load from its snapshot with a
    /// full replay (personal fields opened with `keys`).
    fn verify(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        keys: Option<Keyring>,
        ids: Vec<Uuid>,
    ) -> BoxFuture<'static, Result<VerifyReport>>;
}

/// The operations of one aggregate type, as `#[derive(Aggregate)]` registers them.
#[derive(Debug)]
pub struct OperationsRegistration {
    /// The aggregate type name.
    pub name: &'static str,
    /// Its repository's operations.
    pub operations: &'static dyn AggregateOperations,
}

impl std::fmt::Debug for dyn AggregateOperations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AggregateOperations")
    }
}

inventory::collect!(OperationsRegistration);

/// The repository operations registered for the aggregate type `name`; `None` for a type
/// not registered, or a generic state (it has one per type argument, which only the program
/// that names them can build).
pub fn operations_of(name: &str) -> Option<&'static dyn AggregateOperations> {
    inventory::iter::<OperationsRegistration>
        .into_iter()
        .find(|registration| registration.name == name)
        .map(|registration| registration.operations)
}

/// The [`AggregateOperations`] of `A`.
pub struct OperationsOf<A>(PhantomData<fn() -> A>);

impl<A> std::fmt::Debug for OperationsOf<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OperationsOf")
            .field(&std::any::type_name::<A>())
            .finish()
    }
}

impl<A> OperationsOf<A> {
    /// The operations, as a constant the registration can point at.
    pub const NEW: Self = OperationsOf(PhantomData);
}

fn repository<A: Aggregate>(
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    keys: Option<Keyring>,
) -> Repository<A> {
    // Manual: loading for a check or a warm-up never writes a snapshot of its own accord.
    let repository = Repository::new(events).with_snapshots(snapshots, SnapshotPolicy::manual());
    match keys {
        Some(keys) => repository.with_personal_data(keys),
        None => repository,
    }
}

impl<A: Aggregate> AggregateOperations for OperationsOf<A> {
    fn warm_snapshot(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        keys: Option<Keyring>,
        id: Uuid,
    ) -> BoxFuture<'static, Result<Option<u64>>> {
        Box::pin(async move {
            let snapshot = repository::<A>(events, snapshots, keys).warm_snapshot(id).await?;
            Ok(snapshot.map(|s| s.version))
        })
    }

    fn verify(
        &self,
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        keys: Option<Keyring>,
        ids: Vec<Uuid>,
    ) -> BoxFuture<'static, Result<VerifyReport>> {
        Box::pin(async move { repository::<A>(events, snapshots, keys).verify_each(ids).await })
    }
}
