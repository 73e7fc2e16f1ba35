//! SQLite event and snapshot stores (feature `sqlite`, on by default), through rusqlite.
//!
//! SQLite is the store that needs nothing installed: a database file next to the program, or
//! `:memory:` for tests. Both stores create their tables and indexes when they open (again and
//! again without harm), put a file in WAL mode so readers never wait for the writer, and wait
//! up to five seconds for a lock held by another connection before giving up.
//!
//! ```no_run
//! # async fn demo() -> eventsourcing_kit::Result<()> {
//! use eventsourcing_kit::backend::sqlite;
//!
//! // Both stores on one file, created if missing.
//! let (events, snapshots) = sqlite::open("bank.db").await?;
//! // Or on a private database in memory, for tests.
//! let (events, snapshots) = sqlite::open(":memory:").await?;
//! // Or both on one set of connections, every commit synced.
//! let database = sqlite::Database::open("bank.db").await?;
//! let events = sqlite::SqliteEventStore::on(database.clone()).await?;
//! let snapshots = sqlite::SqliteSnapshotStore::on(database).await?;
//! // Or with tables of their own in a shared file: `bank_events`, `bank_snapshots`, ...
//! let options = sqlite::SqliteOptions::default().prefix("bank_");
//! let (events, snapshots) = sqlite::open_with("shared.db", options).await?;
//! # Ok(()) }
//! ```
//!
//! # When to pick SQLite
//!
//! Pick it for a program that runs on one machine: a service with one instance, a desktop or
//! command-line tool, tests. Appends are serialized by the database (each one is a
//! `BEGIN IMMEDIATE` transaction), so several tasks and even several processes on one file are
//! safe: for every version exactly one writer wins and the others get
//! [`Error::Conflict`]. But SQLite has one writer at a time per file:
//! concurrent appends queue behind each other (and fail with [`Error::Store`]
//! after the busy timeout if the queue is longer than that), and a file on a network file
//! system is not safe to share between machines. For many instances or a high rate of writes
//! from many writers, use the PostgreSQL backend.
//!
//! # Storage
//!
//! Table `events`: `position INTEGER PRIMARY KEY AUTOINCREMENT`, a unique `(aggregate_id,
//! aggregate_type, aggregate_version)` and a unique `event_id`. Table `snapshots`: unique per
//! `(aggregate_id, aggregate_type, schema_version)`, with the `event_id` each snapshot
//! follows, indexed by `(aggregate_type, schema_version)` for invalidation. Tables
//! `eventsource_subscriptions` and `eventsource_dead_letters`: the checkpoints, leases and
//! dead letters of a [`SqliteSubscriptionStore`]. Table `eventsource_archived_events`: the events of
//! [archived](crate::lifecycle) streams, moved out of `events` with their positions. Table `eventsource_migrations`: the numbered
//! layout steps applied. Every store brings the file to the layout of this version of the
//! library when it opens: the usual case is one read; a file of an older layout (one made by
//! version 0.1, which recorded none, included) gets the missing steps in one `BEGIN IMMEDIATE`
//! transaction, so processes opening one file at once apply each step once; a file of a newer
//! layout is [`Error::InvalidConfiguration`].
//!
//! **A table prefix** ([`SqliteOptions::prefix`], [`Database::with_prefix`], or `?prefix=NAME`
//! on a URL) goes before every one of these table and index names: with `app_` they are
//! `app_events`, `app_snapshots`, `app_eventsource_subscriptions`,
//! `app_eventsource_dead_letters`, `app_eventsource_migrations`, `app_events_stream` and so on.
//! Each prefix is a store of its own: its own events, positions, snapshots and subscriptions,
//! and its own record of migrations, applied when a store of that prefix opens, so several
//! independent stores share one file. All of them share the file's one writer at a time. A
//! prefix is ASCII letters, digits and `_`, not starting with a digit or with `sqlite_`
//! (SQLite's own names); anything else is [`Error::InvalidConfiguration`]. SQLite's names are
//! case-insensitive, so `App_` and `app_` name the same tables. No prefix, the default, gives
//! the names above, so a file made by an earlier version of the library opens as it is.
//!
//! Uuids are stored as hyphenated TEXT, timestamps as RFC 3339 TEXT in UTC with nanoseconds
//! (so they round-trip exactly), versions as INTEGER, payloads, metadata and snapshot state as
//! JSON TEXT, untouched. A row that does not decode (a negative version, a malformed uuid or
//! timestamp, metadata that is not JSON) is [`Error::Corrupt`].
//!
//! Long streams are read in pages of 256 rows, each page a short query of its own, so a
//! reader never holds a connection, a lock or a read transaction between pages, and gives
//! the runtime a turn between pages.
//!
//! # Where statements run
//!
//! A SQLite statement takes a few microseconds, less than handing it to another thread and
//! back. So reads (a snapshot, a page of events, a stream's version) run on the calling
//! task's thread, on connections that wait for no lock: in WAL mode readers never wait for
//! the writer, and in the rare case one would, the read is run again on a blocking thread
//! that waits up to [`BUSY_TIMEOUT`]. Writes wait for the disk and for other writers, so each
//! one runs whole, from `BEGIN IMMEDIATE` to `COMMIT`, on tokio's blocking threads: a write
//! that was started finishes (commits or rolls back) even if its caller is dropped.
//!
//! # Durability
//!
//! An append returns once its events are synced to disk (`synchronous = FULL`). Snapshots
//! written by a store from [`open`], [`open_with`], [`open_url`] or
//! [`SqliteSnapshotStore::open`] are not synced one by one (`synchronous = NORMAL`, on
//! connections of their own): a power cut can lose the last of them, which only makes the
//! next loads replay more events. Neither setting lets a crash corrupt the file. Stores put
//! on a [`Database::open`] sync every commit.

mod caller;
mod database;
mod events;
mod keys;
mod lifecycle;
mod prefix;
mod projection;
mod read;
mod schema;
mod snapshots;
mod subscriptions;
mod url;

use std::path::Path;

pub use caller::SqliteTransaction;
pub use database::{Database, BUSY_TIMEOUT};
pub use events::SqliteEventStore;
pub use keys::SqliteKeyStore;
/// The SQLite driver the stores run on, re-exported for [`Database::call`].
pub use projection::{SqliteProjection, SqliteReadModel};
pub use rusqlite;
pub use snapshots::SqliteSnapshotStore;
pub use subscriptions::SqliteSubscriptionStore;

use crate::error::{Error, Result};
use crate::slice::SliceCount;
use database::{Synchronous, Target};
use prefix::Prefix;

const BACKEND: &str = "sqlite";

/// Opens an event store and a snapshot store on one database, creating the tables they need.
///
/// On `:memory:` both share the one connection of the database. On a file each has
/// connections of its own: the event store's commits are synced to disk before they return,
/// the snapshot store's are not. A power cut can lose the last snapshots written, never
/// events, and corrupts nothing; a lost snapshot only makes the next load replay more events.
///
/// # Errors
///
/// [`Error::Store`] if the file cannot be opened or is no SQLite database;
/// [`Error::InvalidConfiguration`] for tables that are not
/// this library's or of a newer layout.
///
/// # Cancel safety
///
/// Dropped, nothing is left open. Creating the tables, or bringing them up to date, runs on the
/// database's thread to its end.
pub async fn open(path: impl AsRef<Path>) -> Result<(SqliteEventStore, SqliteSnapshotStore)> {
    open_with(path, SqliteOptions::default()).await
}

/// Opens both stores as [`open`] does, with `options`.
///
/// ```no_run
/// # async fn demo() -> eventsourcing_kit::Result<()> {
/// use eventsourcing_kit::backend::sqlite::{self, SqliteOptions};
///
/// // Tables `billing_events`, `billing_snapshots`, ... beside any other store in the file.
/// let (events, snapshots) = sqlite::open_with("app.db", SqliteOptions::default().prefix("billing_")).await?;
/// # Ok(()) }
/// ```
///
/// A prefix [`Database::with_prefix`] refuses is [`Error::InvalidConfiguration`], before the
/// file is opened.
///
/// # Errors
///
/// [`Error::Store`] if the file cannot be opened or is no SQLite database;
/// [`Error::InvalidConfiguration`] for tables that are not
/// this library's or of a newer layout.
///
/// # Cancel safety
///
/// Dropped, nothing is left open. Creating the tables, or bringing them up to date, runs on the
/// database's thread to its end.
pub async fn open_with(
    path: impl AsRef<Path>,
    options: SqliteOptions,
) -> Result<(SqliteEventStore, SqliteSnapshotStore)> {
    stores(Target::path(path.as_ref()), options).await
}

/// Opens the stores a `sqlite:` URL names, as [`open`] does: `sqlite::memory:` for a private
/// in-memory database, `sqlite:PATH` or `sqlite://PATH` for a file, created if missing.
///
/// Query parameters are `prefix=NAME`, the prefix of the table names (see
/// [`SqliteOptions::prefix`]), `slices=N`, the number of slices of stores created now (see
/// [`SqliteOptions::slices`]), and SQLite's URI parameters, passed on to SQLite: `mode` (`ro`,
/// `rw`, `rwc` or `memory`), `cache` (`shared` or `private`), the flags `immutable`, `psow`
/// and `nolock` (`1`, `yes`, `true`, `on`, or `0`, `no`, `false`, `off`) and `vfs=NAME`. Any
/// other parameter, one given twice or without a value, and any other value is
/// [`Error::InvalidConfiguration`] naming the parameter, before the file is opened.
///
/// Called by [`crate::backend::open`].
///
/// # Errors
///
/// [`Error::InvalidConfiguration`] for a URL parameter this
/// library does not read; as [`open`](Database::open) otherwise.
///
/// # Cancel safety
///
/// Dropped, nothing is left open. Creating the tables, or bringing them up to date, runs on the
/// database's thread to its end.
pub async fn open_url(url: &str) -> Result<(SqliteEventStore, SqliteSnapshotStore)> {
    let (url, options) = url::split(url)?;
    stores(Target::url(&url)?, options).await
}

/// How [`open_with`] opens the stores. The default is what [`open`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqliteOptions {
    prefix: String,
    slices: Option<SliceCount>,
}

impl SqliteOptions {
    /// The prefix of the stores' table and index names (`app_` gives `app_events`,
    /// `app_snapshots`, ...), empty by default; see [`Database::with_prefix`]. It is checked
    /// when the stores open.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The number of slices the stores have if they are created now (see
    /// [`Database::with_slices`]); [`SliceCount::DEFAULT`] otherwise.
    #[must_use]
    pub fn slices(mut self, slices: SliceCount) -> Self {
        self.slices = Some(slices);
        self
    }
}

async fn stores(target: Target, options: SqliteOptions) -> Result<(SqliteEventStore, SqliteSnapshotStore)> {
    let prefix = Prefix::new(&options.prefix)?;
    let configured = |database: Database| match options.slices {
        Some(slices) => database.with_slices(slices),
        None => database,
    };
    let events = configured(target.open(Synchronous::Full).await?.prefixed(prefix.clone()));
    let snapshots = if target.in_memory() {
        events.clone()
    } else {
        configured(target.open(Synchronous::Normal).await?.prefixed(prefix))
    };
    Ok((
        SqliteEventStore::on(events).await?,
        SqliteSnapshotStore::on(snapshots).await?,
    ))
}

/// The database a snapshot store opens on its own: its commits are not synced one by one.
async fn snapshot_database(path: &Path) -> Result<Database> {
    Target::path(path).open(Synchronous::Normal).await
}

/// A failure of the database as [`Error::Store`], transient when another try may succeed (a
/// busy or locked database, an I/O error) and permanent otherwise (a missing table, a full
/// disk, a read-only file, a file that is not a database).
fn store_error<E>(message: impl Into<String>, e: E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    use rusqlite::ErrorCode::*;
    let permanent = (&e as &dyn std::any::Any)
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| {
            matches!(
                code,
                DiskFull
                    | ReadOnly
                    | CannotOpen
                    | NotADatabase
                    | DatabaseCorrupt
                    | PermissionDenied
                    | ApiMisuse
                    | TooBig
                    | Unknown
            )
        });
    if permanent {
        Error::store_permanent(BACKEND, message, e)
    } else {
        Error::store(BACKEND, message, e)
    }
}

/// Converts a stored integer to the unsigned type of the model; out of range is corrupt.
fn unsigned<T: TryFrom<i64>>(value: i64, column: &str, what: impl FnOnce() -> String) -> Result<T> {
    T::try_from(value)
        .map_err(|_| Error::corrupt(what(), format!("column `{column}` holds {value}, out of range")))
}

/// Converts a version to the database's signed integer; beyond `i64::MAX` is refused.
fn signed(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidInput(format!("{what} {value} is beyond what SQLite can store")))
}

/// Formats a timestamp the way both tables store it: RFC 3339, UTC, nanoseconds.
fn timestamp_text(at: &chrono::DateTime<chrono::Utc>, what: impl FnOnce() -> String) -> Result<String> {
    use chrono::Datelike;
    // RFC 3339 has four-digit years; anything else would be stored but never read back.
    if !(0..=9999).contains(&at.year()) {
        return Err(Error::InvalidInput(format!(
            "{} has the timestamp {at}, outside the years 0 to 9999",
            what()
        )));
    }
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

fn parse_timestamp(
    text: &str,
    column: &str,
    what: impl FnOnce() -> String,
) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&chrono::Utc))
        .map_err(|e| {
            Error::corrupt(
                what(),
                format!("column `{column}` holds {text:?}, not an RFC 3339 timestamp: {e}"),
            )
        })
}
