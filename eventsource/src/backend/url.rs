//! The stores of one backend with the abilities it has, chosen from a URL at run time.

use std::sync::Arc;

use crate::abilities::{AppendSignal, RequestIndex, SliceFeed, SnapshotListing, StreamListing};
use crate::aggregate::Aggregate;
use crate::backend::durability::{self, Demand, Durability};
use crate::backend::memory::{
    InMemoryEventStore, InMemoryKeyStore, InMemorySnapshotStore, InMemorySubscriptionStore,
};
use crate::backend::param::Param;
use crate::error::{Error, Result};
use crate::event_store::EventStore;
use crate::lifecycle::StreamLifecycle;
use crate::multi_stream::MultiStreamAppend;
use crate::personal::{KeyStore, Keyring};
use crate::process::{ProcessManager, ProcessRunner};
use crate::projection::{Projection, ReadModelStore};
use crate::repository::Repository;
use crate::slice::{SliceCount, SliceParts};
use crate::snapshot::{JointSnapshots, SnapshotPolicy, SnapshotStore, SnapshotVersion};
use crate::subscription::{Consumer, Subscription, SubscriptionStore};

/// An event store, a snapshot store and a subscription store on one backend, with the
/// [abilities](crate::abilities) the backend has, and the builders that wire them.
///
/// [`open`] gives the stores a URL names; a program that builds its stores itself (a wrapper,
/// a router, a backend of its own) puts them together with [`Stores::new`] and hands out the
/// abilities it has with the `with_` methods. Repositories, subscriptions and projections
/// built here ([`repository`](Self::repository), [`subscription`](Self::subscription),
/// [`projection`](Self::projection)) use every ability given; built from the stores alone,
/// they give the same results, polling for new events and making a round trip more where a
/// joint statement would do.
///
/// On PostgreSQL and on `sqlite::memory:` the stores share one connection pool; on a SQLite
/// file each has its own, so snapshot writes skip the per-commit sync that appends wait for
/// (they still take the file's one write lock in turn with appends).
#[derive(Clone)]
pub struct Stores {
    /// The event store.
    pub events: Arc<dyn EventStore>,
    /// The snapshot store.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The subscription store (checkpoints, leases, dead letters), beside the events.
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// The signal raised after appends to the event store, if the backend has one.
    pub append_signal: Option<AppendSignal>,
    /// The event store's listing of streams, if the backend has one.
    pub stream_listing: Option<Arc<dyn StreamListing>>,
    /// The snapshot store's listing of snapshots, if the backend has one.
    pub snapshot_listing: Option<Arc<dyn SnapshotListing>>,
    /// The event store's index of request ids, if the backend has one.
    pub request_index: Option<Arc<dyn RequestIndex>>,
    /// The event store's feed read by slices, if the backend has one.
    pub slice_feed: Option<Arc<dyn SliceFeed>>,
    /// The event store's saves over several streams at once, if the backend has them.
    pub multi_stream: Option<Arc<dyn MultiStreamAppend>>,
    /// The event store's deletion and archiving of streams, if the backend has them (see
    /// [`crate::lifecycle`]).
    pub stream_lifecycle: Option<Arc<dyn StreamLifecycle>>,
    /// The snapshot store with statements that read and write its snapshots together with
    /// the events, if the backend has them.
    pub joint_snapshots: Option<JointSnapshots>,
    /// The keys of data subjects, with their cache, if the backend keeps them: what
    /// repositories and consumers built here seal and open personal fields with (see
    /// [`crate::personal`]).
    pub keys: Option<Keyring>,
    backend: Backend,
    /// Whether the warning of unsafe durability settings was logged (at open or at the first
    /// `migrate`), shared by clones: once a start.
    durability_told: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone)]
enum Backend {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(crate::backend::sqlite::SqliteSubscriptionStore),
    #[cfg(feature = "postgres")]
    Postgres(crate::backend::postgres::PostgresEventStore),
    /// A sharded store (see [`crate::backend::sharded`]): the stores of each shard.
    Sharded(Arc<crate::backend::sharded::ShardMap>, Arc<[Stores]>),
    Other,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("backend", &self.backend_name())
            .field("append_signal", &self.append_signal.is_some())
            .field("stream_listing", &self.stream_listing.is_some())
            .field("snapshot_listing", &self.snapshot_listing.is_some())
            .field("request_index", &self.request_index.is_some())
            .field("slice_feed", &self.slice_feed.is_some())
            .field("multi_stream", &self.multi_stream.is_some())
            .field("stream_lifecycle", &self.stream_lifecycle.is_some())
            .field("joint_snapshots", &self.joint_snapshots.is_some())
            .field("keys", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Three stores put together, with no ability: add those the stores have with the
    /// `with_` methods. Its backend is named `other`.
    pub fn new(
        events: impl EventStore + 'static,
        snapshots: impl SnapshotStore + 'static,
        subscriptions: impl SubscriptionStore + 'static,
    ) -> Self {
        Self::of(
            Arc::new(events),
            Arc::new(snapshots),
            Arc::new(subscriptions),
            Backend::Other,
        )
    }

    fn of(
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        subscriptions: Arc<dyn SubscriptionStore>,
        backend: Backend,
    ) -> Self {
        Stores {
            events,
            snapshots,
            subscriptions,
            append_signal: None,
            stream_listing: None,
            snapshot_listing: None,
            request_index: None,
            slice_feed: None,
            multi_stream: None,
            stream_lifecycle: None,
            joint_snapshots: None,
            keys: None,
            backend,
            durability_told: Arc::default(),
        }
    }

    /// The stores of a sharded store over `shards`, the subscription store of shard 0, with no
    /// ability yet: [`crate::backend::sharded::open`] adds them.
    pub(crate) fn of_shards(
        events: crate::backend::sharded::ShardedEventStore,
        snapshots: crate::backend::sharded::ShardedSnapshotStore,
        map: Arc<crate::backend::sharded::ShardMap>,
        shards: Arc<[Stores]>,
    ) -> Self {
        let subscriptions = shards[0].subscriptions.clone();
        let keys = shards[0].keys.clone();
        let stores = Self::of(
            Arc::new(events),
            Arc::new(snapshots),
            subscriptions,
            Backend::Sharded(map, shards),
        );
        match keys {
            Some(keys) => stores.with_keys(keys),
            None => stores,
        }
    }

    /// The stores of each shard, when these are the stores of a sharded store (see
    /// [`crate::backend::sharded`]), by the index the shard map gives them.
    pub fn shards(&self) -> Option<&[Stores]> {
        match &self.backend {
            Backend::Sharded(_, shards) => Some(shards),
            _ => None,
        }
    }

    /// The shard map, when these are the stores of a sharded store (see [`crate::backend::sharded`]).
    pub fn shard_map(&self) -> Option<&crate::backend::sharded::ShardMap> {
        match &self.backend {
            Backend::Sharded(map, _) => Some(map),
            _ => None,
        }
    }

    /// The stores of one of this crate's backends, with the abilities every one of them has:
    /// `events`' signal, listing and request index, `snapshots`' listing, and the keys.
    fn of_backend<E, S>(
        events: E,
        signal: AppendSignal,
        snapshots: S,
        subscriptions: Arc<dyn SubscriptionStore>,
        keys: Arc<dyn KeyStore>,
        backend: Backend,
    ) -> Self
    where
        E: EventStore
            + StreamListing
            + RequestIndex
            + SliceFeed
            + MultiStreamAppend
            + StreamLifecycle
            + Clone
            + 'static,
        S: SnapshotStore + SnapshotListing + Clone + 'static,
    {
        Self::of(
            Arc::new(events.clone()),
            Arc::new(snapshots.clone()),
            subscriptions,
            backend,
        )
        .with_append_signal(signal)
        .with_stream_listing(Arc::new(events.clone()))
        .with_request_index(Arc::new(events.clone()))
        .with_slice_feed(Arc::new(events.clone()))
        .with_multi_stream(Arc::new(events.clone()))
        .with_stream_lifecycle(Arc::new(events))
        .with_snapshot_listing(Arc::new(snapshots))
        .with_keys(Keyring::new(keys))
    }

    /// In-memory stores, new and empty, with every ability but the joint statements.
    pub fn in_memory() -> Self {
        Self::in_memory_with(InMemoryEventStore::new())
    }

    fn in_memory_with(events: InMemoryEventStore) -> Self {
        let signal = events.append_signal();
        let subscriptions = Arc::new(InMemorySubscriptionStore::new());
        Self::of_backend(
            events,
            signal,
            InMemorySnapshotStore::new(),
            subscriptions,
            Arc::new(InMemoryKeyStore::new()),
            Backend::Memory,
        )
    }

    /// SQLite stores: `events` and `subscriptions` on one database, `snapshots` on the same
    /// file or database, with every ability but the joint statements.
    #[cfg(feature = "sqlite")]
    pub fn from_sqlite(
        events: crate::backend::sqlite::SqliteEventStore,
        snapshots: crate::backend::sqlite::SqliteSnapshotStore,
        subscriptions: crate::backend::sqlite::SqliteSubscriptionStore,
    ) -> Self {
        let signal = events.append_signal();
        let shared = Arc::new(subscriptions.clone());
        let keys = Arc::new(crate::backend::sqlite::SqliteKeyStore::migrated(
            subscriptions.database().clone(),
        ));
        Self::of_backend(
            events,
            signal,
            snapshots,
            shared,
            keys,
            Backend::Sqlite(subscriptions),
        )
    }

    /// PostgreSQL stores on one database, with every ability, the joint statements when the
    /// two stores share a pool; the subscription store is the event store's.
    #[cfg(feature = "postgres")]
    pub fn from_postgres(
        events: crate::backend::postgres::PostgresEventStore,
        snapshots: crate::backend::postgres::PostgresSnapshotStore,
    ) -> Self {
        let joint = events.joint_snapshots(&snapshots);
        let (signal, subscriptions) = (events.append_signal(), Arc::new(events.subscription_store()));
        let backend = Backend::Postgres(events.clone());
        let keys = Arc::new(events.key_store());
        let stores = Self::of_backend(events, signal, snapshots, subscriptions, keys, backend);
        match joint {
            Some(joint) => stores.with_joint_snapshots(joint),
            None => stores,
        }
    }

    /// The same stores, with the event store's append signal.
    #[must_use]
    pub fn with_append_signal(mut self, signal: AppendSignal) -> Self {
        self.append_signal = Some(signal);
        self
    }

    /// The same stores, with the event store's listing of streams.
    #[must_use]
    pub fn with_stream_listing(mut self, listing: Arc<dyn StreamListing>) -> Self {
        self.stream_listing = Some(listing);
        self
    }

    /// The same stores, with the snapshot store's listing of snapshots.
    #[must_use]
    pub fn with_snapshot_listing(mut self, listing: Arc<dyn SnapshotListing>) -> Self {
        self.snapshot_listing = Some(listing);
        self
    }

    /// The same stores, sealing and opening personal fields with `keys` (see
    /// [`crate::personal`]).
    #[must_use]
    pub fn with_keys(mut self, keys: Keyring) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The same stores, with the event store's deletion and archiving of streams.
    #[must_use]
    pub fn with_stream_lifecycle(mut self, lifecycle: Arc<dyn StreamLifecycle>) -> Self {
        self.stream_lifecycle = Some(lifecycle);
        self
    }

    /// The same stores, with the event store's index of request ids.
    #[must_use]
    pub fn with_request_index(mut self, index: Arc<dyn RequestIndex>) -> Self {
        self.request_index = Some(index);
        self
    }

    /// The number of slices of the event store (see [`crate::slice`]): what its feed by
    /// slice says, or [`SliceCount::DEFAULT`] without one (a consumer group then splits the
    /// feed by that many).
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn slice_count(&self) -> Result<SliceCount> {
        match &self.slice_feed {
            Some(feed) => feed.slice_count().await,
            None => Ok(SliceCount::DEFAULT),
        }
    }

    /// The slices of the event store and the parts of them whose events one feed orders:
    /// what its feed by slice says, or [`SliceCount::DEFAULT`] slices in one part without one.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn slice_parts(&self) -> Result<SliceParts> {
        match &self.slice_feed {
            Some(feed) => feed.parts().await,
            None => Ok(SliceParts::default()),
        }
    }

    /// The same stores, with the event store's feed read by slices.
    #[must_use]
    pub fn with_slice_feed(mut self, feed: Arc<dyn SliceFeed>) -> Self {
        self.slice_feed = Some(feed);
        self
    }

    /// The same stores, with the event store's saves over several streams.
    #[must_use]
    pub fn with_multi_stream(mut self, multi_stream: Arc<dyn MultiStreamAppend>) -> Self {
        self.multi_stream = Some(multi_stream);
        self
    }

    /// The event store's saves over several streams at once (see [`crate::multi_stream`]);
    /// [`Error::InvalidConfiguration`] for stores without them.
    pub fn multi_stream(&self) -> Result<Arc<dyn MultiStreamAppend>> {
        self.multi_stream.clone().ok_or_else(|| {
            Error::InvalidConfiguration(format!(
                "the {} stores cannot save several streams in one transaction",
                self.backend_name()
            ))
        })
    }

    /// A runner of process manager `manager` on a subscription named `name` to these stores'
    /// feed (with their wake-ups and feed by slices), its records in their event store, its
    /// timeouts found through their listing of streams: see [`crate::process`]. `configure`
    /// sets the subscription up: `|s| s.for_aggregate::<Order>()`, or `|s| s` for every
    /// event.
    ///
    /// # Errors
    ///
    /// As [`Stores::subscription`] and [`ProcessRunner::new`].
    pub fn process<P: ProcessManager>(
        &self,
        name: &str,
        manager: P,
        configure: impl FnOnce(Subscription) -> Subscription,
    ) -> Result<ProcessRunner<P>> {
        let subscription = configure(self.subscription(name)?);
        ProcessRunner::new(
            self.events.clone(),
            self.stream_listing.clone(),
            subscription,
            manager,
        )
    }

    /// The same stores, with joint statements; their snapshot store becomes the snapshot store.
    #[must_use]
    pub fn with_joint_snapshots(mut self, joint: JointSnapshots) -> Self {
        self.snapshots = joint.store().clone();
        self.joint_snapshots = Some(joint);
        self
    }

    /// A repository of `A` on these stores, without snapshots, finding request ids in the
    /// request index if there is one.
    pub fn repository<A: Aggregate>(&self) -> Repository<A> {
        let repository = Repository::on(self.events.clone());
        let repository = match &self.keys {
            Some(keys) => repository.with_personal_data(keys.clone()),
            None => repository,
        };
        let repository = match &self.stream_lifecycle {
            Some(lifecycle) => repository.with_stream_lifecycle(lifecycle.clone(), self.snapshots.clone()),
            None => repository,
        };
        match &self.request_index {
            Some(index) => repository.with_request_index(index.clone()),
            None => repository,
        }
    }

    /// A repository of `A` on these stores, snapshotting as `policy` says, with the joint
    /// statements if there are.
    pub fn repository_with_snapshots<A: Aggregate>(&self, policy: SnapshotPolicy) -> Repository<A> {
        let repository = self.repository();
        match &self.joint_snapshots {
            Some(joint) => repository.with_joint_snapshots(joint.clone(), policy),
            None => repository.with_snapshots(self.snapshots.clone(), policy),
        }
    }

    /// A subscription named `name` to the event store's feed, keeping its state in the
    /// subscription store, woken by the append signal and reading the feed by slice (as a
    /// [consumer group](crate::group)) where the stores have them; see [`Subscription::new`].
    pub fn subscription(&self, name: &str) -> Result<Subscription> {
        let subscription = Subscription::new(name, self.events.clone(), self.subscriptions.clone())?;
        Ok(self.wire(subscription))
    }

    /// A projection named `name` of the event store's feed into `model`, woken by the append
    /// signal and reading the feed by slice (as a [consumer group](crate::group)) where the
    /// stores have them; see [`Projection::new`].
    pub fn projection(&self, name: &str, model: impl ReadModelStore + 'static) -> Result<Projection> {
        let projection = Projection::new(name, self.events.clone(), model)?;
        Ok(self.wire(projection))
    }

    /// The consumer, woken by the append signal, reading by slice and opening personal
    /// fields where the stores can.
    fn wire<C: Consumer>(&self, consumer: C) -> C {
        let consumer = match &self.append_signal {
            Some(signal) => consumer.wake_on(signal.clone()),
            None => consumer,
        };
        let consumer = match &self.keys {
            Some(keys) => consumer.personal_data(keys.clone()),
            None => consumer,
        };
        match &self.slice_feed {
            Some(feed) => consumer.slice_feed(feed.clone()),
            None => consumer,
        }
    }

    /// Every stream of one aggregate type with its version, from the stream listing;
    /// [`Error::InvalidConfiguration`] if the stores have none.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(uuid::Uuid, u64)>> {
        match &self.stream_listing {
            Some(listing) => listing.stream_versions(aggregate_type).await,
            None => Err(self.cannot("list the streams")),
        }
    }

    /// Every stored snapshot of one aggregate type, from the snapshot listing;
    /// [`Error::InvalidConfiguration`] if the stores have none.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn snapshot_versions(&self, aggregate_type: &str) -> Result<Vec<SnapshotVersion>> {
        match &self.snapshot_listing {
            Some(listing) => listing.snapshot_versions(aggregate_type).await,
            None => Err(self.cannot("list the snapshots")),
        }
    }

    fn cannot(&self, what: &str) -> Error {
        Error::InvalidConfiguration(format!(
            "the {} stores cannot {what}: they were given no listing",
            self.backend_name()
        ))
    }

    /// The backend's name: `memory`, `sqlite`, `postgres`, or `other` for stores put together
    /// with [`new`](Self::new).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory => "memory",
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
            Backend::Sharded(..) => "sharded",
            Backend::Other => "other",
        }
    }
    /// The SQLite subscription store, on the events' database, when the stores are SQLite:
    /// the home of a [`SqliteReadModel`](crate::backend::sqlite::SqliteReadModel).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&self) -> Option<&crate::backend::sqlite::SqliteSubscriptionStore> {
        match &self.backend {
            Backend::Sqlite(subscriptions) => Some(subscriptions),
            _ => None,
        }
    }

    /// The PostgreSQL event store, when the stores are PostgreSQL: its
    /// [`subscription_store`](crate::backend::postgres::PostgresEventStore::subscription_store)
    /// is the home of a [`PostgresReadModel`](crate::backend::postgres::PostgresReadModel),
    /// its [`pool`](crate::backend::postgres::PostgresEventStore::pool) reads it.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&crate::backend::postgres::PostgresEventStore> {
        match &self.backend {
            Backend::Postgres(events) => Some(events),
            _ => None,
        }
    }

    /// Creates the backend's tables if they are missing. SQLite and in-memory stores need no
    /// call (they create what they need on open); PostgreSQL does, once at start-up.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient));
    /// [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration) for tables of a
    /// newer layout or not this library's.
    ///
    /// # Cancel safety
    ///
    /// On PostgreSQL the steps run in one transaction under a lock: dropped, the transaction
    /// rolls back, and migrating again starts over. A SQLite file is brought up to date on its
    /// own thread, to the end.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(events) => events.migrate().await?,
            Backend::Sharded(map, shards) => {
                for shard in shards.iter() {
                    Box::pin(shard.migrate()).await?;
                }
                crate::backend::sharded::check_shards(map, shards).await?;
            }
            _ => {}
        }
        self.tell_durability().await;
        Ok(())
    }

    /// Logs a warning for each unsafe durability setting, once for these stores and their
    /// clones (stores in memory are not meant to last, and stores put together by hand have
    /// no backend to ask).
    async fn tell_durability(&self) {
        if matches!(
            self.backend,
            Backend::Memory | Backend::Other | Backend::Sharded(..)
        ) || self
            .durability_told
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        match self.durability().await {
            Ok(durability) => durability.warn(),
            Err(e) => tracing::warn!(error = %e, "cannot read the store's durability settings"),
        }
    }

    /// The layout the database's tables have and the one this version of the library writes,
    /// where the stores migrate on request (PostgreSQL); `None` where they are migrated when
    /// opened (SQLite) or need no tables.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn layout_version(&self) -> Result<Option<(i64, i64)>> {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(events) => events.layout_version().await.map(Some),
            _ => Ok(None),
        }
    }

    /// What [`migrate`](Self::migrate) would do now, where the stores migrate on request
    /// (PostgreSQL): the pending steps and their SQL script; `None` where they are migrated
    /// when opened (SQLite) or need no tables.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn migration_plan(&self) -> Result<Option<crate::backend::migration::MigrationPlan>> {
        match &self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(events) => events.migration_plan().await.map(Some),
            _ => Ok(None),
        }
    }

    /// The durability settings of the stores' database, each with what an unsafe value
    /// risks; see [`durability`](crate::backend::durability). Stores put together by hand
    /// ([`Stores::new`]) have no backend to ask: [`Error::InvalidConfiguration`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn durability(&self) -> Result<Durability> {
        match &self.backend {
            Backend::Memory => Ok(Durability::memory()),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(subscriptions) => subscriptions.database().durability().await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(events) => events.durability().await,
            Backend::Sharded(_, shards) => {
                let mut settings = Vec::new();
                for (index, shard) in shards.iter().enumerate() {
                    for mut setting in Box::pin(shard.durability()).await?.settings {
                        setting.value = format!("{} (shard {index})", setting.value);
                        settings.push(setting);
                    }
                }
                Ok(Durability {
                    backend: "sharded",
                    settings,
                })
            }
            Backend::Other => Err(Error::InvalidConfiguration(
                "stores put together by hand have no backend to ask for its durability settings".into(),
            )),
        }
    }
}

/// Opens the stores a URL names:
///
/// - `memory:`: new in-memory stores; `memory:?slices=N` gives them `N` slices (see
///   [`crate::slice`]);
/// - `sqlite::memory:`: a private in-memory SQLite database;
/// - `sqlite:PATH` or `sqlite://PATH`: a SQLite file, created if missing (feature `sqlite`);
///   `?prefix=NAME` puts the three stores' tables under a prefix of their own (see
///   [`sqlite::open_url`](crate::backend::sqlite::open_url));
/// - `postgres://...` or `postgresql://...`: a PostgreSQL database (feature `postgres`);
///   call [`Stores::migrate`] once before use;
/// - `shards:PATH`: a [sharded store](crate::backend::sharded) over the stores a shard map file names
///   ([`ShardMap::parse`](crate::backend::sharded::ShardMap::parse)), each opened by its own URL.
///
/// Any of them may end with `durability=strict`: the stores then open only if their
/// database keeps every write it acknowledged (see [`durability`](crate::backend::durability));
/// otherwise the open logs a warning for each setting that does not.
///
/// A malformed URL, one for a backend not compiled in, or a strict one whose database
/// acknowledges writes before they are durable is [`Error::InvalidConfiguration`].
///
/// # Errors
///
/// [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration) for a URL this library
/// does not read (each bad parameter named with its bounds), or a strict one whose database
/// does not keep what it acknowledges; [`Error::Store`](crate::Error::Store) if the database
/// cannot be reached or opened (transient for a lost connection or a timeout: see
/// [`Error::is_transient`](crate::Error::is_transient)).
///
/// # Cancel safety
///
/// Dropped, nothing is left open: the connections opened are closed. A SQLite file being
/// created or brought up to date is finished on its own thread.
pub async fn open(url: &str) -> Result<Stores> {
    let (url, demand) = durability::demand(url)?;
    let stores = open_stores(&url).await?;
    if demand == Demand::Strict {
        stores.durability().await?.require()?;
    }
    stores.tell_durability().await;
    Ok(stores)
}

/// The number of slices a `memory:` URL gives, if it gives one: `slices=N` is its one
/// parameter.
fn memory_slices(url: &str) -> Result<Option<SliceCount>> {
    let query = match url.strip_prefix("memory:") {
        Some("") => return Ok(None),
        Some(rest) => rest.strip_prefix('?'),
        None => None,
    };
    let Some(query) = query else {
        return Err(Error::InvalidConfiguration(format!(
            "the memory URL is `memory:`, with at most `?slices=N`, not {url:?}"
        )));
    };
    let param = Param::new("memory", "slices");
    let mut seen = Vec::new();
    let mut slices = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("slices", value)) => slices = Some(param.slice_count(param.value(value, &mut seen)?)?),
            _ => {
                return Err(Error::InvalidConfiguration(format!(
                    "the memory URL takes one parameter, `slices=N`, not {pair:?}"
                )))
            }
        }
    }
    Ok(slices)
}

async fn open_stores(url: &str) -> Result<Stores> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or_default();
    match scheme {
        "memory" => {
            let events = match memory_slices(url)? {
                Some(slices) => InMemoryEventStore::with_slices(slices),
                None => InMemoryEventStore::new(),
            };
            Ok(Stores::in_memory_with(events))
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let (events, snapshots) = crate::backend::sqlite::open_url(url).await?;
            let subscriptions = crate::backend::sqlite::SqliteSubscriptionStore::on(events.database().clone()).await?;
            Ok(Stores::from_sqlite(events, snapshots, subscriptions))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let (events, snapshots) = crate::backend::postgres::connect_url(url).await?;
            Ok(Stores::from_postgres(events, snapshots))
        }
        "shards" => crate::backend::sharded::open_file(&url["shards:".len()..]).await,
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(not_compiled_in("sqlite")),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(not_compiled_in("postgres")),
        _ => Err(Error::InvalidConfiguration(format!(
            "unsupported store URL scheme `{scheme}`: expected memory:, sqlite::memory:, sqlite:PATH or postgres://..."
        ))),
    }
}

#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
fn not_compiled_in(feature: &str) -> Error {
    Error::InvalidConfiguration(format!(
        "{feature} stores are not compiled in; enable the `{feature}` feature of eventsource"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn malformed_and_unsupported_urls_are_configuration_errors() {
        for url in [
            "",
            "memory",
            "memory:extra",
            "mysql://root@localhost/db",
            "postgres",
            "file.db",
        ] {
            let err = open(url).await.unwrap_err();
            assert!(matches!(err, Error::InvalidConfiguration(_)), "{url}: {err}");
        }
        let err = open("redis://user:secret@host").await.unwrap_err().to_string();
        assert!(!err.contains("secret"), "a URL's password is never echoed: {err}");
    }

    #[tokio::test]
    async fn memory_urls_open_fresh_stores() {
        let stores = open("memory:").await.unwrap();
        assert_eq!(stores.backend_name(), "memory");
        stores.migrate().await.unwrap();
    }
}
