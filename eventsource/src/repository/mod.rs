//! The repository: loads aggregates from their events and a snapshot, saves new events, and
//! takes snapshots as its policy says.

mod background;

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use tracing::field::Empty;
use tracing::Instrument;
use uuid::Uuid;

use self::background::BackgroundQueue;
use crate::aggregate::{Aggregate, AggregateEvent};
use crate::codec;
use crate::error::{Error, Result};
use crate::event_store::{EventStore, EventStream};
use crate::registry;
use crate::root::AggregateRoot;
use crate::snapshot::metrics::Counter;
use crate::snapshot::{
    JointSnapshotRead, MissReason, Snapshot, SnapshotMetrics, SnapshotMode, SnapshotPolicy, SnapshotStore,
};

/// Loads and saves aggregates of type `A`.
///
/// ```
/// # use eventsource::prelude::*;
/// # #[event(aggregate = "Counter")] pub struct Incremented { pub by: u64 }
/// # #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
/// # #[aggregate(name = "Counter", events(Incremented))]
/// # pub struct Counter { pub value: u64 }
/// # impl Apply<Incremented> for Counter { fn apply(&mut self, e: &Incremented) { self.value += e.by } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let repo = Repository::<Counter>::new(InMemoryEventStore::new())
///     .with_snapshots(InMemorySnapshotStore::new(), SnapshotPolicy::every(100)?);
/// let id = Uuid::new_v4();
/// let mut counter = repo.create_new(id);
/// counter.record(Incremented { by: 2 });
/// repo.save(&mut counter).await?;
/// assert_eq!(repo.load(id).await?.state().value, 2);
/// # Ok(()) }
/// ```
///
/// A repository is cheap to clone; clones share their stores, metrics and background queue.
pub struct Repository<A: Aggregate> {
    events: Arc<dyn EventStore>,
    snapshots: Option<Snapshots>,
    metrics: Arc<SnapshotMetrics>,
    aggregate: PhantomData<fn() -> A>,
}

#[derive(Clone)]
struct Snapshots {
    store: Arc<dyn SnapshotStore>,
    policy: SnapshotPolicy,
    queue: Option<Arc<BackgroundQueue>>,
    /// Set when the event store reads snapshots and events in one round trip.
    joint: Option<Arc<dyn JointSnapshotRead>>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            events: self.events.clone(),
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE_NAME)
            .field("snapshot_policy", &self.snapshots.as_ref().map(|s| s.policy))
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository on an event store, without snapshots.
    pub fn new(event_store: impl EventStore + 'static) -> Self {
        Repository {
            events: Arc::new(event_store),
            snapshots: None,
            metrics: Arc::default(),
            aggregate: PhantomData,
        }
    }

    /// The same repository, snapshotting into `store` as `policy` says.
    pub fn with_snapshots(self, store: impl SnapshotStore + 'static, policy: SnapshotPolicy) -> Self {
        self.snapshotting(Arc::new(store), policy)
    }

    fn snapshotting(mut self, store: Arc<dyn SnapshotStore>, policy: SnapshotPolicy) -> Self {
        let queue = (policy.mode() == SnapshotMode::Background).then(|| {
            Arc::new(BackgroundQueue::new(
                store.clone(),
                self.metrics.clone(),
                A::TYPE_NAME,
                policy,
            ))
        });
        let joint = store.as_any().and_then(|s| self.events.joint_snapshot_reader(s));
        self.snapshots = Some(Snapshots {
            store,
            policy,
            queue,
            joint,
        });
        self
    }

    /// The same repository, counting into `metrics`, which several repositories can share.
    pub fn with_metrics(mut self, metrics: Arc<SnapshotMetrics>) -> Self {
        self.metrics = metrics;
        match self.snapshots.take() {
            // The background queue counts its writes too: give it the new counters.
            Some(Snapshots { store, policy, .. }) => self.snapshotting(store, policy),
            None => self,
        }
    }

    /// The snapshot hit, miss and write counters of this repository.
    pub fn metrics(&self) -> &Arc<SnapshotMetrics> {
        &self.metrics
    }

    /// The event store.
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.events
    }

    /// The snapshot store, if snapshots are configured.
    pub fn snapshot_store(&self) -> Option<&Arc<dyn SnapshotStore>> {
        self.snapshots.as_ref().map(|s| &s.store)
    }

    /// The snapshot policy, if snapshots are configured.
    pub fn snapshot_policy(&self) -> Option<SnapshotPolicy> {
        self.snapshots.as_ref().map(|s| s.policy)
    }

    /// A new aggregate with no events. Nothing is stored until it is saved.
    pub fn create_new(&self, id: Uuid) -> AggregateRoot<A> {
        AggregateRoot::new(id)
    }

    /// Whether the aggregate has any stored event.
    pub async fn exists(&self, id: Uuid) -> Result<bool> {
        Ok(self.events.stream_version(id, A::TYPE_NAME).await? > 0)
    }

    /// The aggregate, or a new one if it has no events.
    pub async fn load_or_create(&self, id: Uuid) -> Result<AggregateRoot<A>> {
        match self.load(id).await {
            Err(Error::NotFound { .. }) => Ok(self.create_new(id)),
            other => other,
        }
    }

    /// Loads the aggregate from its snapshot, when one is usable, and the events after it.
    ///
    /// A snapshot is used only if its schema version is `A::SCHEMA_VERSION`, its state
    /// deserializes and the stream has reached its version; otherwise every event is
    /// replayed. A snapshot store that fails never fails the load: the miss is logged and
    /// counted in [`metrics`](Self::metrics). A stream with no events is
    /// [`Error::NotFound`].
    pub async fn load(&self, id: Uuid) -> Result<AggregateRoot<A>> {
        registry::check()?;
        let span = tracing::info_span!(
            "eventsource.repository.load",
            aggregate.id = %id,
            aggregate.type = A::TYPE_NAME,
            version = Empty,
            snapshot.used = false,
            snapshot.version = Empty,
            events.replayed = Empty,
        );
        self.load_in(id, &span).instrument(span.clone()).await
    }

    async fn load_in(&self, id: Uuid, span: &tracing::Span) -> Result<AggregateRoot<A>> {
        if let Some((version, state, mut events)) = self.snapshot_and_events(id).await {
            // The event at the snapshot's own version proves the stream has reached it.
            match events.next().await.transpose()? {
                Some(event) if event.aggregate_version == version => {
                    let mut root = AggregateRoot::from_state(id, version, state);
                    let replayed = replay(&mut root, events).await?;
                    self.metrics.add(A::TYPE_NAME, Counter::Hit);
                    span.record("snapshot.used", true);
                    span.record("snapshot.version", version);
                    return Ok(finish(root, replayed, span));
                }
                _ => {
                    let detail = format!("stream has not reached version {version}");
                    self.miss::<()>(id, MissReason::BeyondStreamHead, detail);
                }
            }
        }
        let mut root = AggregateRoot::new(id);
        let replayed = replay(&mut root, self.events.read_stream(id, A::TYPE_NAME, 0)).await?;
        if root.version() == 0 {
            return Err(Error::NotFound {
                aggregate_type: A::TYPE_NAME.to_owned(),
                aggregate_id: id,
            });
        }
        Ok(finish(root, replayed, span))
    }

    /// A snapshot that passes every check but the stream's, as its version and state, and the
    /// stream's events from that version on: read together in one round trip where the event
    /// store can, one after the other otherwise.
    async fn snapshot_and_events(&self, id: Uuid) -> Option<(u64, A, EventStream<'_>)> {
        let snapshots = self.snapshots.as_ref()?;
        let timeout = snapshots.policy.store_timeout();
        let span = tracing::debug_span!("eventsource.snapshot.get", aggregate.id = %id, aggregate.type = A::TYPE_NAME);
        if let Some(joint) = &snapshots.joint {
            let found = match within(timeout, joint.read(id, A::TYPE_NAME))
                .instrument(span)
                .await
            {
                Ok(Some(found)) => found,
                Ok(None) => return self.miss(id, MissReason::Missing, String::new()),
                Err(e) => return self.miss(id, MissReason::StoreError, e.to_string()),
            };
            let (version, state) = self.usable(id, found.snapshot)?;
            return Some((version, state, found.events));
        }
        let read = snapshots.store.get_snapshot(id, A::TYPE_NAME).instrument(span);
        let snapshot = match within(timeout, read).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return self.miss(id, MissReason::Missing, String::new()),
            Err(e) => return self.miss(id, MissReason::StoreError, e.to_string()),
        };
        let (version, state) = self.usable(id, snapshot)?;
        Some((
            version,
            state,
            self.events.read_stream(id, A::TYPE_NAME, version - 1),
        ))
    }

    /// The snapshot's version and state, if it passes every check but the stream's.
    fn usable(&self, id: Uuid, snapshot: Snapshot) -> Option<(u64, A)> {
        if snapshot.aggregate_id != id || snapshot.aggregate_type != A::TYPE_NAME {
            let detail = format!(
                "store returned the snapshot of {} {}",
                snapshot.aggregate_type, snapshot.aggregate_id
            );
            return self.miss(id, MissReason::StoreError, detail);
        }
        if snapshot.schema_version != A::SCHEMA_VERSION {
            let detail = format!(
                "snapshot schema {}, aggregate schema {}",
                snapshot.schema_version,
                A::SCHEMA_VERSION
            );
            return self.miss(id, MissReason::SchemaMismatch, detail);
        }
        if snapshot.version == 0 {
            return self.miss(
                id,
                MissReason::StoreError,
                "store returned a snapshot at version 0".into(),
            );
        }
        match codec::from_json::<A>(&snapshot.state, || {
            format!("snapshot state of {} {id}", A::TYPE_NAME)
        }) {
            Ok(state) => Some((snapshot.version, state)),
            Err(e) => self.miss(id, MissReason::DeserializationError, e.to_string()),
        }
    }

    fn miss<T>(&self, id: Uuid, reason: MissReason, detail: String) -> Option<T> {
        self.metrics.add(A::TYPE_NAME, Counter::Miss(reason));
        match reason {
            MissReason::Missing => {
                tracing::debug!(aggregate.id = %id, aggregate.type = A::TYPE_NAME, reason = reason.as_str(), "no snapshot, replaying every event")
            }
            MissReason::SchemaMismatch => {
                tracing::info!(aggregate.id = %id, aggregate.type = A::TYPE_NAME, reason = reason.as_str(), detail, "snapshot not used, replaying every event")
            }
            _ => {
                tracing::warn!(aggregate.id = %id, aggregate.type = A::TYPE_NAME, reason = reason.as_str(), detail, "snapshot not used, replaying every event")
            }
        }
        None
    }

    /// Appends the aggregate's unsaved events, expecting the stream at its saved version.
    ///
    /// On success the events are no longer pending and the new version is returned; a
    /// snapshot is then taken if the policy says so. A snapshot that fails to be written is
    /// logged and counted and never fails the save. On any error the events stay pending on
    /// `root`. After [`Error::Conflict`] (another writer saved first), [`Error::InvalidInput`]
    /// or [`Error::Serialization`] nothing was written; after [`Error::Store`] (a connection
    /// lost around the commit, say) the append may have committed, and saving again is safe:
    /// it then gets [`Error::Conflict`].
    pub async fn save(&self, root: &mut AggregateRoot<A>) -> Result<u64> {
        registry::check()?;
        if !root.has_pending_events() {
            return Ok(root.version());
        }
        let saved = root.pending_events().len() as u64;
        let span = tracing::info_span!(
            "eventsource.repository.save",
            aggregate.id = %root.id(),
            aggregate.type = A::TYPE_NAME,
            version = root.version(),
            events.saved = saved,
        );
        async {
            let envelopes = root.pending_envelopes()?;
            self.events
                .append(root.id(), A::TYPE_NAME, root.saved_version(), &envelopes)
                .await?;
            root.mark_saved();
            if let Some(snapshots) = &self.snapshots {
                if snapshots.policy.is_due(root.version(), saved) {
                    self.snapshot_after_save(snapshots, root).await;
                }
            }
            Ok(root.version())
        }
        .instrument(span)
        .await
    }

    async fn snapshot_after_save(&self, snapshots: &Snapshots, root: &AggregateRoot<A>) {
        let snapshot = match take_snapshot(root) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.metrics.add(A::TYPE_NAME, Counter::WriteFailed);
                tracing::warn!(aggregate.id = %root.id(), aggregate.type = A::TYPE_NAME, error = %e, "cannot serialize snapshot state");
                return;
            }
        };
        let snapshot = match &snapshots.queue {
            Some(queue) => match queue.schedule(snapshot) {
                None => return,
                Some(overflow) => overflow,
            },
            None => snapshot,
        };
        // Failures are logged and counted inside; the save has succeeded regardless.
        let _ = write_snapshot(
            &*snapshots.store,
            &self.metrics,
            A::TYPE_NAME,
            snapshots.policy.store_timeout(),
            &snapshot,
        )
        .await;
    }

    /// Writes a snapshot of the aggregate now, whatever the mode, and returns it.
    ///
    /// Refused with [`Error::UnsavedEvents`] if the aggregate has events not yet saved (a
    /// snapshot must stand for stored events only), with [`Error::NotFound`] if it has no
    /// events at all, and with [`Error::InvalidConfiguration`] if the repository has no
    /// snapshot store. A store failure is returned, since the snapshot was asked for.
    pub async fn create_snapshot(&self, root: &AggregateRoot<A>) -> Result<Snapshot> {
        let span = tracing::info_span!(
            "eventsource.repository.create_snapshot",
            aggregate.id = %root.id(),
            aggregate.type = A::TYPE_NAME,
            version = root.version(),
        );
        async {
            let snapshots = self.snapshots.as_ref().ok_or_else(|| {
                Error::InvalidConfiguration(format!(
                    "the {} repository has no snapshot store; configure one with with_snapshots",
                    A::TYPE_NAME
                ))
            })?;
            if root.has_pending_events() {
                return Err(Error::UnsavedEvents {
                    aggregate_type: A::TYPE_NAME.to_owned(),
                    aggregate_id: root.id(),
                    count: root.pending_events().len(),
                });
            }
            if root.version() == 0 {
                return Err(Error::NotFound {
                    aggregate_type: A::TYPE_NAME.to_owned(),
                    aggregate_id: root.id(),
                });
            }
            let snapshot = take_snapshot(root)?;
            write_snapshot(
                &*snapshots.store,
                &self.metrics,
                A::TYPE_NAME,
                snapshots.policy.store_timeout(),
                &snapshot,
            )
            .await?;
            Ok(snapshot)
        }
        .instrument(span)
        .await
    }

    /// Waits for the background snapshots scheduled so far; returns how many were written
    /// since the last call. Returns 0 at once in the other modes.
    pub async fn await_pending_snapshots(&self) -> usize {
        match self.snapshots.as_ref().and_then(|s| s.queue.as_ref()) {
            Some(queue) => queue.wait_idle().await,
            None => 0,
        }
    }

    /// How many background snapshots are waiting to be written.
    pub fn pending_snapshots(&self) -> usize {
        self.snapshots
            .as_ref()
            .and_then(|s| s.queue.as_ref())
            .map_or(0, |q| q.pending())
    }
}

/// Applies a stream's events to the root, checking that each belongs to the stream and that
/// versions follow on without a gap.
async fn replay<A: Aggregate>(root: &mut AggregateRoot<A>, mut events: EventStream<'_>) -> Result<u64> {
    let start = root.version();
    while let Some(stored) = events.next().await {
        let stored = stored?;
        let expected = root.version().checked_add(1);
        if stored.aggregate_id != root.id() || *stored.aggregate_type != *A::TYPE_NAME {
            return Err(Error::corrupt(
                format!("stream {} {}", A::TYPE_NAME, root.id()),
                format!(
                    "read an event of {} {}",
                    stored.aggregate_type, stored.aggregate_id
                ),
            ));
        }
        if expected != Some(stored.aggregate_version) {
            return Err(Error::corrupt(
                format!("stream {} {}", A::TYPE_NAME, root.id()),
                format!(
                    "after version {}, read version {}",
                    root.version(),
                    stored.aggregate_version
                ),
            ));
        }
        let event = A::Event::from_json(&stored.event_type, &stored.payload)?;
        root.apply_stored(&event);
    }
    Ok(root.version() - start)
}

fn finish<A: Aggregate>(root: AggregateRoot<A>, replayed: u64, span: &tracing::Span) -> AggregateRoot<A> {
    span.record("version", root.version());
    span.record("events.replayed", replayed);
    root
}

/// The snapshot of a root's state now, serialized at once.
fn take_snapshot<A: Aggregate>(root: &AggregateRoot<A>) -> Result<Snapshot> {
    Ok(Snapshot {
        aggregate_id: root.id(),
        aggregate_type: A::TYPE_NAME.to_owned(),
        version: root.version(),
        state: codec::to_json(root.state(), || {
            format!("snapshot state of {} {}", A::TYPE_NAME, root.id())
        })?,
        schema_version: A::SCHEMA_VERSION,
        created_at: Utc::now(),
    })
}

/// The store call's outcome, or a store error if it takes longer than `timeout`.
async fn within<T>(timeout: Option<Duration>, call: impl Future<Output = Result<T>>) -> Result<T> {
    let Some(timeout) = timeout else {
        return call.await;
    };
    tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
        Err(Error::Store {
            backend: "snapshot",
            message: format!("snapshot store did not answer within {timeout:?}"),
            source: None,
        })
    })
}

/// Writes one snapshot within the policy's timeout, counting and logging the outcome.
async fn write_snapshot(
    store: &dyn SnapshotStore,
    metrics: &SnapshotMetrics,
    aggregate_type: &'static str,
    timeout: Option<Duration>,
    snapshot: &Snapshot,
) -> Result<bool> {
    let span = tracing::debug_span!(
        "eventsource.snapshot.save",
        aggregate.id = %snapshot.aggregate_id,
        aggregate.type = aggregate_type,
        snapshot.version = snapshot.version,
    );
    match within(timeout, store.save_snapshot(snapshot).instrument(span)).await {
        Ok(stored) => {
            metrics.add(aggregate_type, Counter::Written);
            Ok(stored)
        }
        Err(e) => {
            metrics.add(aggregate_type, Counter::WriteFailed);
            tracing::warn!(
                aggregate.id = %snapshot.aggregate_id,
                aggregate.type = aggregate_type,
                snapshot.version = snapshot.version,
                error = %e,
                "snapshot write failed; loads replay the events instead"
            );
            Err(e)
        }
    }
}
