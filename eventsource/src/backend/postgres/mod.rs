//! PostgreSQL event and snapshot stores (feature `postgres`): the production backend, for
//! many application instances sharing one database.
//!
//! ```no_run
//! # async fn run(pool: eventsourcing_kit::backend::postgres::PgPool) -> eventsourcing_kit::Result<()> {
//! use eventsourcing_kit::backend::postgres::{connect_url, PostgresEventStore, PostgresSnapshotStore};
//!
//! // Both stores on one new pool...
//! let (events, snapshots) = connect_url("postgres://app@db.internal/app").await?;
//! // ...or on a pool the program already has.
//! let (events, snapshots) = (PostgresEventStore::new(pool.clone()), PostgresSnapshotStore::new(pool));
//!
//! events.migrate().await?; // once at start-up, before the first append
//! // Repository::<Account>::new(events).with_snapshots(snapshots, SnapshotPolicy::every(100)?)
//! # Ok(()) }
//! ```
//!
//! # Deployment
//!
//! **Migrate once at start-up.** [`PostgresEventStore::migrate`] (or
//! [`PostgresSnapshotStore::migrate`], or [`Stores::migrate`](crate::backend::Stores::migrate))
//! brings the tables to the layout of this version of the library through numbered steps,
//! each recorded in the table `eventsource_migrations` when it is applied: on an empty
//! database it creates everything, on an older layout it applies the missing steps, on the
//! current one it does nothing. It is safe when several instances start at once: it runs in
//! one transaction that first takes a transaction-scoped advisory lock, so concurrent runs
//! queue up, each step runs once, and a step that fails leaves the database as it was. A
//! database whose recorded layout is newer than the library's (an older instance started
//! after a newer one upgraded it) is [`Error::InvalidConfiguration`]. It needs the right to
//! create and alter tables (and the schema, with [`PostgresEventStore::with_schema`]); a
//! deployment that forbids DDL at run time can run it once from a release job instead.
//!
//! The steps: 1 creates the tables of the first layout (a database made by version 0.1 of the
//! library, which recorded no layout, has them already); 2 adds `event_id` to the snapshots
//! and turns the JSON columns from `jsonb` into `json`; 3 takes positions from the appending
//! transaction's id instead of an identity column (see [below](#the-global-feed-never-skips));
//! 4 adds the subscriptions' tables. Step 2 rewrites both tables under an exclusive lock, so on
//! a large database it takes a while and blocks the stores meanwhile: run it from a release
//! job before the new version serves traffic, with the instances of the earlier version
//! stopped (they would append with positions and JSON types of the old layout).
//!
//! **Tables.** In the connection's `search_path` (normally `public`) or in the schema given to
//! `with_schema`:
//!
//! - `eventsource_events`: `position BIGINT PRIMARY KEY` (see the feed, below), a
//!   unique `event_id UUID`, a unique `(aggregate_id, aggregate_type, aggregate_version)`,
//!   `payload JSON`, `metadata JSON`, `occurred_at TIMESTAMPTZ`, and the envelope's other
//!   fields. Because `timestamptz` keeps microseconds, the nanoseconds within the microsecond
//!   are kept beside it in `occurred_at_ns`, so an event reads back exactly as appended.
//! - `eventsource_snapshots`: primary key `(aggregate_id, aggregate_type, schema_version)`
//!   (one snapshot per schema version, so that two releases running side by side keep their
//!   own), `state JSON`,
//!   `version`, `event_id UUID` (the event the snapshot follows), `schema_version`,
//!   `created_at TIMESTAMPTZ` (and `created_at_ns`), with an index on
//!   `(aggregate_type, schema_version)` for invalidation by type.
//! - `eventsource_subscriptions`: a row per subscription, its checkpoint and its lease
//!   (owner, until when, on the server's clock); `eventsource_dead_letters`: the events a
//!   subscription gave up on.
//! - `eventsource_migrations`: the layout steps applied, with when;
//!   `eventsource_settings`: the store's settings, a name and a value each (its number of
//!   slices, step 10).
//! - `eventsource_subject_keys`: a key per data subject, deleted when the subject is
//!   forgotten (the row stays, its tombstone); `eventsource_subject_streams`: the streams that
//!   hold each subject's personal values (step 11, see [`crate::personal`]).
//! - `eventsource_archived_events`: the events of [archived](crate::lifecycle) streams,
//!   moved out of the events table with their positions (step 12).
//!
//! Payloads, metadata and states are `json`, which checks that the text is JSON and keeps it
//! as written, so it reads back byte for byte (`-0.0` stays `-0.0`, a `\u0000` escape is
//! kept, key order and spacing are untouched) and costs no conversion on each read (a
//! `jsonb` column would normalize the text and refuse `\u0000`, and turning it back into
//! text took about half of the server's time for a long replay). SQL can still query them
//! (`payload->>'amount'`); to index a field, add an expression index on
//! `((payload::jsonb)->>'field')` for payloads without NUL escapes.
//!
//! **Pools.** Every call takes one connection from the pool for one statement and gives it
//! back: an append is one statement (and one more to read the version after a lost race;
//! concurrent appends of up to 32 events, and saves over several streams of up to 32 events
//! without checks, share one statement, a group commit), a
//! snapshot read is one, and [`read_stream`](crate::EventStore::read_stream) and the feed are
//! read in pages of [`DEFAULT_PAGE_SIZE`] events, one statement each, so no connection is held
//! between statements. A load's replay
//! ([`load_stream`](crate::EventStore::load_stream)) is the exception: one statement of the
//! columns a replay uses, whose rows stream in as the repository applies them, holding its
//! connection until the last (a replay of 1,000,000 events takes well under a second). While the caller works
//! through a full page, the next page is fetched, so the database and the caller work at the
//! same time: a read has at most one statement in flight, and a caller that runs statements
//! of its own meanwhile uses a second connection. A read sees events appended while it runs
//! up to the moment it fetches its last page.
//!
//! **A load with a snapshot is one statement** when the repository is given the joint
//! statements ([`PostgresEventStore::joint_snapshots`], handed out by
//! [`backend::open`](crate::backend::open) and [`Stores::from_postgres`](crate::backend::Stores::from_postgres)),
//! which exist when the event store and the snapshot store share a pool (as those of
//! [`connect_url`] or [`PostgresEventStore::snapshot_store`] do, or two stores built on clones
//! of one pool, whatever their schemas): the snapshot row joined with the first page of the
//! events from its version on.
//! The repository checks the snapshot as it does any other, and reads the rest of a long tail
//! page by page. A stream that has events after the snapshot's version but not the event at
//! it (a gap, or a snapshot at version 0) is read again in two statements, so that it is
//! reported as without a shared pool. Stores on different pools, which may be different
//! databases, take two statements: the snapshot, then the events. A pool of a few connections
//! per core of the application serves many concurrent loads and saves; the sum of every
//! instance's `max_connections` must stay below the server's `max_connections`.
//!
//! [`connect_url`] builds its pool from [`pool_options`]: sqlx's defaults (at most 10
//! connections, 30 s to acquire one), except that a connection is checked with a ping only if
//! it sat idle for more than half a second, instead of before every use. That keeps each call
//! to one round trip under load, and still finds the connections that died while idle (after
//! a server restart, a failover, an idle timeout of a firewall). A connection that dies
//! within that half second fails one call with [`Error::Store`] and is dropped by the pool.
//! To size or tune the pool, start from [`pool_options`] and pass the pool to
//! [`PostgresEventStore::new`] and [`PostgresSnapshotStore::new`]; set a
//! `statement_timeout` there (`PgConnectOptions::options`) if statements must not wait long
//! on locks. Statements are prepared and cached per connection: a PgBouncer in transaction
//! mode needs its prepared-statement support enabled.
//!
//! # What is atomic, and why the rest is safe
//!
//! **An append is atomic.** It is one `INSERT` statement, so one transaction: the whole batch
//! is stored or none of it. The stream's version is checked in the same statement, and the
//! unique constraint on `(aggregate_id, aggregate_type, aggregate_version)` decides between
//! writers that race for the same version: the database makes the loser wait for the
//! winner's commit, then fails it, and the loser gets [`Error::Conflict`] with the version the
//! stream really is at. No lock is held between calls and nothing is coordinated in memory,
//! so any number of processes can append to one database.
//!
//! **A snapshot write is not part of the append.** The repository writes the snapshot after
//! the events are committed, in a separate statement, and it may fail or never happen (a
//! crash in between, a snapshot store that is down). That is safe because the events are the
//! truth and a snapshot is only a cache of them: a missing snapshot costs a longer replay; a
//! snapshot write never replaces a newer snapshot with an older one (`ON CONFLICT ... DO
//! UPDATE ... WHERE version <= EXCLUDED.version`); and a load uses a snapshot only after
//! checking that the stream has reached its version. A snapshot can be deleted at any time.
//!
//! **After a store error, an append may or may not have committed** (the connection may have
//! dropped after the commit, or the caller stopped waiting while the server went on).
//! Appending the same batch again at the same expected version is safe: if the first try was
//! stored, the store recognises the batch by its event ids and returns `Ok` with its version
//! (see the [`EventStore`](crate::EventStore) contract); if it was not, it is stored now.
//! Event ids are unique, so an event can never be stored twice.
//!
//! **A plain subscription's checkpoint is committed without waiting for the disk**
//! (`synchronous_commit` off for that one statement): a crash of the server can lose the last
//! checkpoints saved before it (a fraction of a second's worth), which hands those events
//! over again, as at least once allows. Nothing else is lost with them: the server writes its
//! log in order, so any commit that does wait (an append, a lease taken, a projection's batch)
//! makes every checkpoint before it durable too. This takes the wait for the disk off every
//! batch a subscription handles. A projection's checkpoint commits with its read model's
//! transaction, as durably as the server is set to.
//!
//! # The global feed never skips
//!
//! [`EventStore::read_all`](crate::EventStore::read_all) yields events in position order, and
//! a reader that asks again and again for the events after the last position it saw sees
//! every committed event once: no event can appear later below a position already returned.
//! A position is the appending transaction's id shifted left by 20 bits plus the event's
//! place in its batch (so a batch holds at most 1,048,575 events), and `read_all` returns only
//! positions below the oldest transaction that may still append: every statement that inserts
//! events announces its transaction first (a statement trigger takes a shared advisory lock
//! before the transaction has an id), and the bound is the oldest transaction of the reader's
//! snapshot that holds that lock, or that ended after the snapshot was taken and left events
//! the snapshot cannot see. Every appending
//! transaction below the bound has ended, so the events the feed shows are final, and one that
//! commits later has a higher id and so higher positions. An append that runs long holds the
//! feed back while it runs: the feed then lags, it never skips. Other transactions do not: a
//! session idle in a transaction, a long batch job or a migration, in this database or
//! another, leave the feed alone. A transaction that writes something else and then inserts
//! events must announce the append before its first write, with `SELECT
//! eventsource_begin_append()` (in the stores' schema); the trigger refuses it otherwise, and
//! the library's own appends never need it. A save in the application's own transaction
//! ([`PostgresEventStore::begin`], [`PostgresEventStore::announce`],
//! [`PostgresEventStore::save_in_transaction`]) does it for the application. Positions are unique
//! and increasing, not dense: they have large gaps. Events stored before the layout step 3
//! keep the positions they had, all below the new ones.
//!
//! # Errors
//!
//! A lost connection, a terminated backend, a statement timeout or a pool that cannot give a
//! connection in time is a transient [`Error::Store`] ([`Error::is_transient`]); the pool
//! replaces broken connections, so the next call works once the database is reachable again.
//! A failure that another try cannot cure (a missing table, a permission, a full disk, a
//! refused password) is a permanent [`Error::Store`]. A row this backend cannot decode is
//! [`Error::Corrupt`]. A value PostgreSQL refuses (text that is not JSON, a date out of its
//! range) is [`Error::InvalidInput`], and nothing is written.

mod append;
mod caller;
mod events;
mod group;
mod joint;
mod keys;
mod lifecycle;
mod multi;
mod notify;
mod projection;
mod read;
mod schema;
mod snapshots;
mod sql;
mod subscriptions;
mod url;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
pub use projection::{PgTransaction, PostgresProjection, PostgresReadModel};
pub use sqlx;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection;
pub use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::slice::SliceCount;

/// The backend name in [`Error::Store`].
const BACKEND: &str = "postgres";

/// How many events one statement of a read fetches, unless set with
/// [`PostgresEventStore::with_page_size`].
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// How long the statement of an append that can go in a group (alone or in a group) may take,
/// unless set with [`PostgresEventStore::with_append_timeout`].
pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// An event store in a PostgreSQL database. Cheap to clone: clones share the pool.
///
/// See the [module docs](self) for the schema, deployment and guarantees.
#[derive(Clone)]
pub struct PostgresEventStore {
    pool: PgPool,
    layout: Arc<Layout>,
    sql: Arc<sql::Sql>,
    page_size: i64,
    notifier: Arc<notify::Notifier>,
    /// Appends waiting to be written together.
    group: Arc<group::Group>,
    /// How long the statement of an append that can go in a group may take before its outcome
    /// is given up on.
    append_timeout: Duration,
    /// The number of slices the store has, once read.
    slice_count: Arc<tokio::sync::OnceCell<SliceCount>>,
}

/// A snapshot store in a PostgreSQL database. Cheap to clone: clones share the pool.
///
/// See the [module docs](self) for the schema, deployment and guarantees.
#[derive(Clone)]
pub struct PostgresSnapshotStore {
    pool: PgPool,
    layout: Arc<Layout>,
    sql: Arc<snapshots::Sql>,
}

/// A subscription store in a PostgreSQL database, from
/// [`PostgresEventStore::subscription_store`]. Cheap to clone: clones share the pool. Lease
/// times are the database server's clock, so consumers on many machines agree on them.
#[derive(Clone, Debug)]
pub struct PostgresSubscriptionStore {
    pool: PgPool,
    layout: Arc<Layout>,
}

/// The keys of data subjects (see [`crate::personal`]) in PostgreSQL, beside the events: the
/// tables `eventsource_subject_keys` and `eventsource_subject_streams`. Made by
/// [`PostgresEventStore::key_store`]; cheap to clone, clones share the pool.
#[derive(Clone, Debug)]
pub struct PostgresKeyStore {
    pool: PgPool,
    layout: Arc<Layout>,
}

/// A connection that sat idle longer than this is pinged before use (HikariCP's default).
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The pool settings this backend recommends, to build a pool of your own from.
///
/// sqlx's defaults, except that a connection is checked with a ping before use only if it
/// sat idle for more than half a second, rather than every time: one round trip per call
/// under load, and connections that died while idle are still found and replaced (see the
/// [module docs](self#deployment)).
///
/// ```no_run
/// # async fn run() -> eventsourcing_kit::Result<()> {
/// use eventsourcing_kit::backend::postgres::{pool_options, PostgresEventStore};
///
/// let pool = pool_options().max_connections(32).connect_lazy("postgres://app@db.internal/app").unwrap();
/// let events = PostgresEventStore::new(pool);
/// # Ok(()) }
/// ```
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > IDLE_CHECK {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Connects to the database a `postgres://` URL names and returns both stores on one pool.
///
/// The URL takes every parameter sqlx's [`PgConnectOptions`] accepts (`sslmode`,
/// `sslrootcert`, `application_name`, ...), and these of the library's own:
///
/// - `schema=NAME`: the PostgreSQL schema of the stores' tables (see
///   [`PostgresEventStore::with_schema`]), so that several independent stores can share one
///   database: a plain identifier, not `information_schema` nor a name starting with `pg_`;
/// - `max_connections=N`: the pool's size, from 1 to 10000 (10 otherwise);
/// - `min_connections=N`: connections kept open when idle, from 0 to `max_connections`
///   (0 otherwise);
/// - `acquire_timeout=5s`: how long a call waits for a pooled connection (30 s otherwise);
/// - `statement_timeout=5s`: the server's bound on each statement (none otherwise);
/// - `slices=N`: the number of slices of a store that [`PostgresEventStore::migrate`] creates
///   (see [`PostgresEventStore::with_slices`]), a power of two from 1 to 65536 (1024
///   otherwise).
///
/// A duration is a number with a unit, `ms`, `s`, `m` (or `min`), `h` or `d` (`500ms`, `5s`,
/// `2m`), or a number of seconds without one (`5`, `1.5`), from 1 ms to 24 h in whole
/// milliseconds; parameters are percent-decoded as the rest of the URL is;
/// `statement_timeout` reaches the server in milliseconds, so `5` is five seconds there too.
///
/// The pool is built from [`pool_options`], so one code path serves a URL and a pool built by
/// hand. Call [`PostgresEventStore::migrate`] once before the first append.
///
/// A malformed URL, or a value of these parameters out of its bounds, is
/// [`Error::InvalidConfiguration`] naming the parameter and its bounds, before anything is
/// allocated or connected. A database that cannot be reached is [`Error::Store`], after sqlx
/// has retried for the pool's acquire timeout (30 s), as for a database that is still
/// starting.
///
/// # Errors
///
/// [`Error::InvalidConfiguration`] for a URL this library
/// or the driver does not read; [`Error::Store`] if the server cannot be
/// reached.
///
/// # Cancel safety
///
/// Dropped, nothing is left open.
pub async fn connect_url(url: &str) -> Result<(PostgresEventStore, PostgresSnapshotStore)> {
    let (url, settings) = url::split(url)?;
    let layout = Arc::new(Layout {
        slices: settings.slices,
        ..match &settings.schema {
            Some(schema) => Layout::in_schema(schema)?,
            None => Layout::default(),
        }
    });
    let mut options = PgConnectOptions::from_str(&url)
        .map_err(|e| Error::InvalidConfiguration(format!("invalid PostgreSQL URL: {e}")))?;
    if let Some(timeout) = settings.statement_timeout {
        options = options.options([("statement_timeout", url::statement_timeout(timeout))]);
    }
    let mut pool = pool_options();
    if let Some(max) = settings.max_connections {
        pool = pool.max_connections(max);
    }
    if let Some(min) = settings.min_connections {
        pool = pool.min_connections(min);
    }
    if let Some(timeout) = settings.acquire_timeout {
        pool = pool.acquire_timeout(timeout);
    }
    let pool = pool
        .connect_with(options)
        .await
        .map_err(|e| Error::store(BACKEND, format!("cannot connect: {e}"), e))?;
    Ok((
        PostgresEventStore::on(pool.clone(), layout.clone()),
        PostgresSnapshotStore::on(pool, layout),
    ))
}

impl PostgresEventStore {
    /// An event store on the pool, with its table in the connection's `search_path`.
    pub fn new(pool: PgPool) -> Self {
        Self::on(pool, Arc::new(Layout::default()))
    }

    /// An event store on the pool, with its table in the given schema.
    ///
    /// The name must be a plain SQL identifier (ASCII letters, digits and `_`, not starting
    /// with a digit, at most 63 bytes) and not one of the server's own schemas
    /// (`information_schema`, or a name starting with `pg_`, whatever its case); anything else is
    /// [`Error::InvalidConfiguration`].
    /// [`migrate`](Self::migrate) creates the schema if it is missing.
    pub fn with_schema(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self::on(pool, Arc::new(Layout::in_schema(schema)?)))
    }

    fn on(pool: PgPool, layout: Arc<Layout>) -> Self {
        Self {
            pool,
            sql: Arc::new(sql::Sql::new(&layout)),
            notifier: Arc::new(notify::Notifier::new(layout.schema.as_deref())),
            group: Arc::default(),
            layout,
            page_size: DEFAULT_PAGE_SIZE as i64,
            append_timeout: DEFAULT_APPEND_TIMEOUT,
            slice_count: Arc::default(),
        }
    }

    /// The same store, created by [`migrate`](Self::migrate) with `slices` slices if its
    /// tables are new (see [`crate::slice`]); [`SliceCount::DEFAULT`] otherwise. A store
    /// created already keeps its number: once it is given another, `migrate` and
    /// [`slice_count`](crate::SliceFeed::slice_count) are
    /// [`Error::InvalidConfiguration`]. The URL parameter `slices=N` does the same.
    #[must_use]
    pub fn with_slices(self, slices: SliceCount) -> Self {
        let layout = Layout {
            slices: Some(slices),
            ..(*self.layout).clone()
        };
        Self::on(self.pool, Arc::new(layout))
            .with_append_timeout(self.append_timeout)
            .expect("the store's own append timeout")
            .with_page_size(self.page_size as usize)
            .expect("the store's own page size")
    }

    /// The number of slices the store has, read once from its settings.
    async fn read_slice_count(&self) -> Result<SliceCount> {
        self.slice_count
            .get_or_try_init(|| schema::slice_count(&self.pool, &self.layout))
            .await
            .copied()
    }

    /// Bounds the statement of an append that can go in a group (default
    /// [`DEFAULT_APPEND_TIMEOUT`]).
    ///
    /// Appends of up to 32 events, and saves over several streams of up to 32 events without
    /// checks ([`MultiStreamAppend`](crate::multi_stream::MultiStreamAppend)), that arrive
    /// while another is being written wait and go together in the next statement (group
    /// commit), each still all or nothing. One-event appends group with one-event appends,
    /// the others with each other. A group of the others fails whole when a writer outside
    /// it took one of its versions first; its members then go alone, each within this bound. A statement that hangs (its server process paused,
    /// a peer that vanished without closing the connection) would hold every later append of
    /// the process behind it; past this bound it is given up on instead, so it costs its own
    /// appends alone a bounded delay. Each of them is then made again on its own, on another
    /// connection, and acknowledged if the first statement did store it; one that cannot be
    /// decided within the bound either fails with a transient [`Error::Store`], after which
    /// the outcome is unknown and making the same append again is safe (see the
    /// [module docs](self#errors)). Between 10 ms and an hour; anything else is
    /// [`Error::InvalidConfiguration`].
    pub fn with_append_timeout(mut self, timeout: Duration) -> Result<Self> {
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&timeout) {
            return Err(Error::InvalidConfiguration(format!(
                "the append timeout of a PostgreSQL store must be between 10 ms and an hour, not {timeout:?}"
            )));
        }
        self.append_timeout = timeout;
        Ok(self)
    }

    /// Reads streams and the feed in pages of `events` events, one statement each (default
    /// [`DEFAULT_PAGE_SIZE`]); a load's replay is one statement whatever the page size. Zero
    /// is [`Error::InvalidConfiguration`].
    pub fn with_page_size(mut self, events: usize) -> Result<Self> {
        match i64::try_from(events) {
            Ok(n) if n > 0 => {
                self.page_size = n;
                Ok(self)
            }
            _ => Err(Error::InvalidConfiguration(format!(
                "the page size of a PostgreSQL read must be between 1 and {}, not {events}",
                i64::MAX
            ))),
        }
    }

    /// Creates the event and snapshot tables and their indexes if they are missing.
    ///
    /// Idempotent, and safe to run from several instances at once (see the
    /// [module docs](self#deployment)).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient));
    /// [`Error::InvalidConfiguration`] for tables of a
    /// newer layout or not this library's.
    ///
    /// # Cancel safety
    ///
    /// The steps run in one transaction under a lock: dropped, it rolls back, and migrating
    /// again starts over.
    pub async fn migrate(&self) -> Result<()> {
        let slices = schema::migrate(&self.pool, &self.layout).await?;
        let _ = self.slice_count.set(slices);
        Ok(())
    }

    /// The layout the tables have (the last migration step applied, 0 for none) and the one
    /// this version of the library reads and writes: [`migrate`](Self::migrate) brings the
    /// first to the second.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn layout_version(&self) -> Result<(i64, i64)> {
        let fail = |e| query_error("cannot read the layout version", e);
        let migrations = &self.layout.migrations;
        let recorded: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(migrations)
            .fetch_one(&self.pool)
            .await
            .map_err(fail)?;
        let applied = if recorded {
            sqlx::query_scalar(&format!("SELECT coalesce(max(version), 0) FROM {migrations}"))
                .fetch_one(&self.pool)
                .await
                .map_err(fail)?
        } else {
            0
        };
        Ok((applied, schema::LATEST))
    }

    /// What [`migrate`](Self::migrate) would do now: the pending steps and the SQL script
    /// that applies them (see [`MigrationPlan`](crate::backend::migration::MigrationPlan)).
    /// Nothing is changed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] for tables of a newer layout than this library's; a
    /// store error if the database cannot be read.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn migration_plan(&self) -> Result<crate::backend::migration::MigrationPlan> {
        use crate::backend::migration::{MigrationPlan, PendingStep};
        let (applied, latest) = self.layout_version().await?;
        let script = schema::script(&self.layout, applied)?;
        let pending = schema::pending(applied)
            .map(|(version, description)| PendingStep::new(version, description))
            .collect();
        Ok(MigrationPlan::new(applied, latest, pending, script))
    }

    /// The server's durability settings as this store's connections see them: `fsync`,
    /// `synchronous_commit` (which a database or role may set) and `full_page_writes`, each
    /// with what an unsafe value risks (see [`crate::backend::durability`]).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn durability(&self) -> Result<crate::backend::durability::Durability> {
        use crate::backend::durability::{Durability, Setting};
        let (fsync, commit, pages): (String, String, String) = sqlx::query_as(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit'),
                current_setting('full_page_writes')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| query_error("cannot read the durability settings", e))?;
        let settings = vec![
            Setting::new(
                "fsync",
                fsync.clone(),
                fsync == "on",
                "a crash of the server's machine or a loss of power can lose committed events and corrupt the database",
            ),
            Setting::new(
                "synchronous_commit",
                commit.clone(),
                commit != "off",
                "a crash of the server or a loss of power loses the last acknowledged appends (up to three times wal_writer_delay)",
            ),
            Setting::new(
                "full_page_writes",
                pages.clone(),
                pages == "on",
                "a loss of power in the middle of a write can leave pages torn, the database corrupt",
            ),
        ];
        Ok(Durability {
            backend: BACKEND,
            settings,
        })
    }

    /// A snapshot store on the same pool and schema.
    pub fn snapshot_store(&self) -> PostgresSnapshotStore {
        PostgresSnapshotStore::on(self.pool.clone(), self.layout.clone())
    }

    /// A key store on the same pool and schema: the keys of data subjects beside the events
    /// (see [`crate::personal`]).
    pub fn key_store(&self) -> PostgresKeyStore {
        PostgresKeyStore {
            pool: self.pool.clone(),
            layout: self.layout.clone(),
        }
    }

    /// A subscription store on the same pool and schema: checkpoints beside the events.
    pub fn subscription_store(&self) -> PostgresSubscriptionStore {
        PostgresSubscriptionStore {
            pool: self.pool.clone(),
            layout: self.layout.clone(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema given to [`with_schema`](Self::with_schema), if any.
    pub fn schema(&self) -> Option<&str> {
        self.layout.schema.as_deref()
    }
}

impl PostgresSnapshotStore {
    /// A snapshot store on the pool, with its table in the connection's `search_path`.
    pub fn new(pool: PgPool) -> Self {
        Self::on(pool, Arc::new(Layout::default()))
    }

    /// A snapshot store on the pool, with its table in the given schema; see
    /// [`PostgresEventStore::with_schema`].
    pub fn with_schema(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self::on(pool, Arc::new(Layout::in_schema(schema)?)))
    }

    fn on(pool: PgPool, layout: Arc<Layout>) -> Self {
        Self {
            pool,
            sql: Arc::new(snapshots::Sql::new(&layout)),
            layout,
        }
    }

    /// Creates the event and snapshot tables and their indexes if they are missing; the same
    /// as [`PostgresEventStore::migrate`].
    ///
    /// # Errors
    ///
    /// As [`PostgresEventStore::migrate`].
    ///
    /// # Cancel safety
    ///
    /// As [`PostgresEventStore::migrate`].
    pub async fn migrate(&self) -> Result<()> {
        schema::migrate(&self.pool, &self.layout).await.map(drop)
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema given to [`with_schema`](Self::with_schema), if any.
    pub fn schema(&self) -> Option<&str> {
        self.layout.schema.as_deref()
    }
}

impl fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("table", &self.layout.events)
            .field("page_size", &self.page_size)
            .field("append_timeout", &self.append_timeout)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PostgresSnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSnapshotStore")
            .field("table", &self.layout.snapshots)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// Where the tables are: their qualified, quoted names; and the number of slices a store
/// created on them gets, if configured.
#[derive(Clone, Debug)]
struct Layout {
    schema: Option<String>,
    events: String,
    snapshots: String,
    /// The record of the migrations applied.
    migrations: String,
    subscriptions: String,
    dead_letters: String,
    /// The function that tells up to which position the feed is final (layout step 7).
    feed_bound: String,
    /// The trigger function by which a transaction that appends announces itself.
    announce_append: String,
    /// The function a transaction calls to announce an append before its first write.
    begin_append: String,
    /// The request index (layout step 8).
    requests: String,
    /// The store's settings (layout step 10).
    settings: String,
    /// The keys of data subjects (layout step 11).
    subject_keys: String,
    /// The streams that hold each subject's personal values (layout step 11).
    subject_streams: String,
    /// The events of archived streams (layout step 12).
    archived_events: String,
    /// The number of slices of a store created on this layout, if configured.
    slices: Option<SliceCount>,
}

const EVENTS_TABLE: &str = "eventsource_events";
const SNAPSHOTS_TABLE: &str = "eventsource_snapshots";
const MIGRATIONS_TABLE: &str = "eventsource_migrations";
const SUBSCRIPTIONS_TABLE: &str = "eventsource_subscriptions";
const DEAD_LETTERS_TABLE: &str = "eventsource_dead_letters";
const FEED_BOUND_FUNCTION: &str = "eventsource_feed_bound";
const ANNOUNCE_APPEND_FUNCTION: &str = "eventsource_announce_append";
const BEGIN_APPEND_FUNCTION: &str = "eventsource_begin_append";
const REQUESTS_TABLE: &str = "eventsource_requests";
const SETTINGS_TABLE: &str = "eventsource_settings";
const SUBJECT_KEYS_TABLE: &str = "eventsource_subject_keys";
const SUBJECT_STREAMS_TABLE: &str = "eventsource_subject_streams";
const ARCHIVED_EVENTS_TABLE: &str = "eventsource_archived_events";

impl Default for Layout {
    fn default() -> Self {
        Self {
            schema: None,
            events: EVENTS_TABLE.to_owned(),
            snapshots: SNAPSHOTS_TABLE.to_owned(),
            migrations: MIGRATIONS_TABLE.to_owned(),
            subscriptions: SUBSCRIPTIONS_TABLE.to_owned(),
            dead_letters: DEAD_LETTERS_TABLE.to_owned(),
            feed_bound: FEED_BOUND_FUNCTION.to_owned(),
            announce_append: ANNOUNCE_APPEND_FUNCTION.to_owned(),
            begin_append: BEGIN_APPEND_FUNCTION.to_owned(),
            requests: REQUESTS_TABLE.to_owned(),
            settings: SETTINGS_TABLE.to_owned(),
            subject_keys: SUBJECT_KEYS_TABLE.to_owned(),
            subject_streams: SUBJECT_STREAMS_TABLE.to_owned(),
            archived_events: ARCHIVED_EVENTS_TABLE.to_owned(),
            slices: None,
        }
    }
}

/// Why a schema name cannot hold the stores' tables, if it cannot: it must be a plain
/// identifier, and not one of the server's own schemas (`information_schema`, `pg_catalog`,
/// `pg_toast`, and every name starting with `pg_`, which the server keeps for itself),
/// whatever their case.
fn schema_refusal(schema: &str) -> Option<&'static str> {
    let plain = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        return Some(
            "must be a plain identifier (ASCII letters, digits and `_`, not starting with a digit, \
             at most 63 bytes)",
        );
    }
    let system = schema.eq_ignore_ascii_case("information_schema")
        || schema
            .get(..3)
            .is_some_and(|start| start.eq_ignore_ascii_case("pg_"));
    system.then_some(
        "must not be one of PostgreSQL's system schemas (`information_schema`, or a name \
         starting with `pg_`)",
    )
}

impl Layout {
    fn in_schema(schema: &str) -> Result<Self> {
        if let Some(rule) = schema_refusal(schema) {
            return Err(Error::InvalidConfiguration(format!(
                "PostgreSQL schema name {:?} {rule}",
                schema.chars().take(80).collect::<String>()
            )));
        }
        Ok(Self {
            schema: Some(schema.to_owned()),
            events: format!("\"{schema}\".{EVENTS_TABLE}"),
            snapshots: format!("\"{schema}\".{SNAPSHOTS_TABLE}"),
            migrations: format!("\"{schema}\".{MIGRATIONS_TABLE}"),
            subscriptions: format!("\"{schema}\".{SUBSCRIPTIONS_TABLE}"),
            dead_letters: format!("\"{schema}\".{DEAD_LETTERS_TABLE}"),
            feed_bound: format!("\"{schema}\".{FEED_BOUND_FUNCTION}"),
            announce_append: format!("\"{schema}\".{ANNOUNCE_APPEND_FUNCTION}"),
            begin_append: format!("\"{schema}\".{BEGIN_APPEND_FUNCTION}"),
            requests: format!("\"{schema}\".{REQUESTS_TABLE}"),
            settings: format!("\"{schema}\".{SETTINGS_TABLE}"),
            subject_keys: format!("\"{schema}\".{SUBJECT_KEYS_TABLE}"),
            subject_streams: format!("\"{schema}\".{SUBJECT_STREAMS_TABLE}"),
            archived_events: format!("\"{schema}\".{ARCHIVED_EVENTS_TABLE}"),
            slices: None,
        })
    }
}

/// Maps a failed statement to the library's error: a value PostgreSQL refuses is
/// [`Error::InvalidInput`] (nothing was written), anything else [`Error::Store`], transient
/// unless the server says the statement cannot succeed as the database is.
fn query_error(what: &str, e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().unwrap_or_default();
        // Class 22, data exception: a bound value is invalid (text that is not JSON, a NUL
        // character, a timestamp out of range); the call can never succeed as it is.
        if code.starts_with("22") {
            return Error::InvalidInput(format!("{what}: PostgreSQL refused a value: {}", db.message()));
        }
        if is_permanent(&code) {
            return Error::store_permanent(BACKEND, format!("{what}: {e}"), e);
        }
    }
    Error::store(BACKEND, format!("{what}: {e}"), e)
}

/// Whether an SQLSTATE says the statement will fail again however often it is retried: a
/// missing table or column, a permission, a feature or object the server lacks, a full disk,
/// an internal error. Connection failures (class 08), rolled-back transactions (40), lack of
/// resources (53, but for a full disk), an operator's intervention (57: shutdown, cancel,
/// timeout) and the rest are transient.
fn is_permanent(code: &str) -> bool {
    code.starts_with("42") // syntax error or access rule violation: undefined table, permission
        || code.starts_with("0A") // feature not supported
        || code.starts_with("XX") // internal error
        || code.starts_with("F0") // configuration file error
        || code == "53100" // disk full
        || code == "28000" // invalid authorization
        || code == "28P01" // invalid password
}

/// A `u64` as PostgreSQL's `BIGINT`, refusing values it cannot hold.
fn to_bigint(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidInput(format!("{what} {value} is beyond PostgreSQL's BIGINT range")))
}

/// Splits a timestamp into the microseconds `timestamptz` keeps and the nanoseconds it drops.
fn split_timestamp(at: DateTime<Utc>) -> (DateTime<Utc>, i32) {
    let micros = at.trunc_subsecs(6);
    let nanos = (at.timestamp_subsec_nanos() % 1000) as i32;
    (micros, nanos)
}

/// Joins what [`split_timestamp`] split; `None` if the nanoseconds are out of range.
fn join_timestamp(micros: DateTime<Utc>, nanos: i32) -> Option<DateTime<Utc>> {
    (0..1000)
        .contains(&nanos)
        .then(|| micros + TimeDelta::nanoseconds(nanos.into()))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn timestamps_split_and_join_exactly() {
        for at in [
            Utc::now(),
            DateTime::from_timestamp(-1_234_567, 999_999_999).unwrap(),
            DateTime::from_timestamp(946_684_800, 1).unwrap(),
            DateTime::from_timestamp(0, 0).unwrap(),
        ] {
            let (micros, nanos) = split_timestamp(at);
            assert_eq!(micros.timestamp_subsec_nanos() % 1000, 0);
            assert_eq!(join_timestamp(micros, nanos), Some(at));
        }
        assert_eq!(join_timestamp(Utc::now(), 1000), None);
    }

    #[test]
    fn schema_names_must_be_plain_identifiers() {
        assert_eq!(
            Layout::in_schema("tenant_1").unwrap().events,
            "\"tenant_1\".eventsource_events"
        );
        for bad in [
            "",
            "1abc",
            "a-b",
            "a\"b",
            "a.b",
            "é",
            &"x".repeat(64),
            "information_schema",
            "INFORMATION_SCHEMA",
            "pg_catalog",
            "pg_toast",
            "pg_temp_3",
            "Pg_mine",
        ] {
            let err = Layout::in_schema(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidConfiguration(_)), "{bad:?}: {err}");
        }
    }
}
