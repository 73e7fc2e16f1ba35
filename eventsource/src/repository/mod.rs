//! The repository: loads aggregates from their events and a snapshot, saves new events, takes
//! snapshots as its policy says, and runs commands. Each job is a module of its own: loading
//! (a snapshot bound to its history, then the tail), saving (one idempotent append),
//! snapshotting (after saves and on request, every store call bounded and guarded), the
//! background queue, commands (load, decide, save, retried on conflicts) and what they answer,
//! idempotent requests (the first outcome of a request id, found and recorded), the
//! per-aggregate command queue, and verification (snapshot and tail against a full replay).

mod background;
mod batch;
mod execute;
mod lifecycle;
mod load;
mod operations;
mod outcome;
mod queue;
mod requests;
mod save;
mod snapshotting;
mod verify;

pub use execute::Command;
pub use operations::{operations_of, AggregateOperations, OperationsOf, OperationsRegistration};
pub use outcome::{CommandError, Executed};
pub use requests::DEFAULT_REQUEST_RETENTION;
pub use verify::{Drift, Verification, VerifyReport};

use std::marker::PhantomData;
use std::sync::Arc;

use uuid::Uuid;

use self::background::BackgroundQueue;
use crate::abilities::RequestIndex;
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::event_store::EventStore;
use crate::lifecycle::StreamLifecycle;
use crate::personal::Keyring;
use crate::root::AggregateRoot;
use crate::snapshot::{JointSnapshots, SnapshotMetrics, SnapshotMode, SnapshotPolicy, SnapshotStore};

/// Loads and saves aggregates of type `A`.
///
/// ```
/// # use eventsourcing_kit::prelude::*;
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
    /// Set when commands on one aggregate run one after another in this process.
    commands: Option<Arc<queue::CommandQueue<AggregateRoot<A>>>>,
    /// Where commands find their request ids; without it, they read the aggregate's stream.
    requests: Option<Arc<dyn RequestIndex>>,
    /// How long a recorded refusal answers a request sent again.
    request_retention: std::time::Duration,
    /// What personal fields are sealed with when saved and opened with when loaded.
    keys: Option<Keyring>,
    /// How the event store deletes and archives streams, if it can, and the snapshot store
    /// a deletion deletes the stream's snapshots from.
    lifecycle: Option<(Arc<dyn StreamLifecycle>, Arc<dyn SnapshotStore>)>,
    aggregate: PhantomData<fn() -> A>,
}

#[derive(Clone)]
struct Snapshots {
    store: Arc<dyn SnapshotStore>,
    policy: SnapshotPolicy,
    queue: Option<Arc<BackgroundQueue>>,
    /// Set when snapshots are read with events, and written with them, in one round trip.
    joint: Option<JointSnapshots>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            events: self.events.clone(),
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            commands: self.commands.clone(),
            requests: self.requests.clone(),
            request_retention: self.request_retention,
            keys: self.keys.clone(),
            lifecycle: self.lifecycle.clone(),
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
        Self::on(Arc::new(event_store))
    }

    /// A repository on an event store shared already (no second `Arc` around it).
    pub(crate) fn on(events: Arc<dyn EventStore>) -> Self {
        Repository {
            events,
            snapshots: None,
            metrics: Arc::default(),
            commands: None,
            requests: None,
            request_retention: DEFAULT_REQUEST_RETENTION,
            keys: None,
            lifecycle: None,
            aggregate: PhantomData,
        }
    }

    /// The same repository, sealing the personal fields of the events it saves with `keys`
    /// and opening them when it loads (see [`crate::personal`]).
    /// [`backend::Stores::repository`](crate::backend::Stores::repository) wires the
    /// backend's keys. Without it, a save of events with personal fields is
    /// [`Error::InvalidConfiguration`] and a load of one
    /// fails to decode its sealed fields.
    #[must_use]
    pub fn with_personal_data(mut self, keys: Keyring) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The same repository, deleting and archiving streams with `lifecycle`, the event
    /// store's (see [`crate::lifecycle`]); a deletion deletes the stream's snapshots from
    /// `snapshots`, whether or not the repository snapshots into it.
    /// [`backend::Stores::repository`](crate::backend::Stores::repository) wires the
    /// backend's. Without it, [`delete`](Self::delete), [`archive`](Self::archive) and
    /// [`restore`](Self::restore) are [`Error::InvalidConfiguration`].
    #[must_use]
    pub fn with_stream_lifecycle(
        mut self,
        lifecycle: Arc<dyn StreamLifecycle>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Self {
        self.lifecycle = Some((lifecycle, snapshots));
        self
    }

    /// The same repository, snapshotting into `store` as `policy` says.
    #[must_use]
    pub fn with_snapshots(self, store: impl SnapshotStore + 'static, policy: SnapshotPolicy) -> Self {
        self.snapshotting(Arc::new(store), None, policy)
    }

    /// The same repository, snapshotting into the store of `joint` as `policy` says, and
    /// reading a snapshot with the events after it, and (in [`SnapshotMode::Sync`]) writing
    /// events with a due snapshot, in one round trip each. The outcome is the same as with
    /// [`with_snapshots`](Self::with_snapshots) on the same store; only the round trips differ.
    /// [`backend::Stores::repository`](crate::backend::Stores::repository) wires this when
    /// its backend has the ability.
    #[must_use]
    pub fn with_joint_snapshots(self, joint: JointSnapshots, policy: SnapshotPolicy) -> Self {
        self.snapshotting(joint.store().clone(), Some(joint), policy)
    }

    fn snapshotting(
        mut self,
        store: Arc<dyn SnapshotStore>,
        joint: Option<JointSnapshots>,
        policy: SnapshotPolicy,
    ) -> Self {
        let queue = (policy.mode() == SnapshotMode::Background).then(|| {
            Arc::new(BackgroundQueue::new(
                store.clone(),
                self.metrics.clone(),
                A::TYPE_NAME,
                policy,
            ))
        });
        self.snapshots = Some(Snapshots {
            store,
            policy,
            queue,
            joint,
        });
        self
    }

    /// The same repository, counting into `metrics`, which several repositories can share.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<SnapshotMetrics>) -> Self {
        self.metrics = metrics;
        match self.snapshots.take() {
            // The background queue counts its writes too: give it the new counters.
            Some(Snapshots {
                store, policy, joint, ..
            }) => self.snapshotting(store, joint, policy),
            None => self,
        }
    }

    /// The same repository, running the [commands](Self::command) on one aggregate one after
    /// another, in the order they came, instead of letting them race: commands on a hot
    /// aggregate then wait for their turn instead of losing conflicts and deciding again.
    /// Clones share the queue. It orders the commands of this process only; writers in other
    /// processes still meet conflicts, which commands retry as usual.
    ///
    /// The commands waiting for their turn are decided together: each decides, in order, on
    /// the root the first one loaded, and the batch is saved in one append (one load and one
    /// commit for all of them). A command's refusal or panic leaves the others' events; a
    /// conflict has each decide again (a conflict with a writer elsewhere costs every command
    /// of the batch an attempt); an event that cannot be stored has each decide again alone.
    /// Commands with a request id, and create-only ones, run alone. The batch is saved
    /// through the repository of its first command: give clones that share a queue the same
    /// configuration (set `with_command_queue` last).
    #[must_use]
    pub fn with_command_queue(mut self) -> Self {
        self.commands = Some(Arc::default());
        self
    }

    /// The same repository, recording the first outcome of every [command](Self::command)
    /// run with a request id in `index`: its events (appended with the record), or its
    /// refusal. A request id sent again then finds that outcome whatever aggregate it ran on,
    /// and one reused for another request (another fingerprint) is refused. Without an index,
    /// a command finds its request id among its own aggregate's events only, by reading the
    /// stream, and refusals are decided again.
    /// [`backend::Stores::repository`](crate::backend::Stores::repository) wires it.
    #[must_use]
    pub fn with_request_index(mut self, index: Arc<dyn RequestIndex>) -> Self {
        self.requests = Some(index);
        self
    }

    /// The same repository, answering a request id sent again with its recorded refusal for
    /// `retention` after the refusal ([`DEFAULT_REQUEST_RETENTION`], a day, by default); a
    /// request sent later is decided again. Events a command stored answer its request id
    /// for as long as they are kept. [`RequestIndex::forget_refusals`] deletes the records
    /// of older refusals.
    #[must_use]
    pub fn with_request_retention(mut self, retention: std::time::Duration) -> Self {
        self.request_retention = retention;
        self
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
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn exists(&self, id: Uuid) -> Result<bool> {
        Ok(self.events.stream_version(id, A::TYPE_NAME).await? > 0)
    }

    /// The aggregate, or a new one if it has no events.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), but for a stream with no events, which gives a new aggregate.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn load_or_create(&self, id: Uuid) -> Result<AggregateRoot<A>> {
        match self.load(id).await {
            Err(Error::NotFound { .. }) => Ok(self.create_new(id)),
            other => other,
        }
    }
}
