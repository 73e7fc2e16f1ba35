//! SQLite event and snapshot stores (feature `sqlite`, on by default), through sqlx.
//!
//! SQLite is the store that needs nothing installed: a database file next to the program, or
//! `:memory:` for tests. Both stores create their tables and indexes when they open (again and
//! again without harm), put a file in WAL mode so readers never wait for the writer, and wait
//! up to five seconds for a lock held by another connection before giving up.
//!
//! ```no_run
//! # async fn demo() -> eventsource::Result<()> {
//! use eventsource::backend::sqlite;
//!
//! // Both stores on one file, created if missing.
//! let (events, snapshots) = sqlite::open("bank.db").await?;
//! // Or on a private database in memory, for tests.
//! let (events, snapshots) = sqlite::open(":memory:").await?;
//! // Or on a pool of the program's own.
//! let pool = sqlite::connect("bank.db").await?;
//! let events = sqlite::SqliteEventStore::from_pool(pool.clone()).await?;
//! let snapshots = sqlite::SqliteSnapshotStore::from_pool(pool).await?;
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
//! Table `events`: `position INTEGER PRIMARY KEY AUTOINCREMENT`, a unique
//! `(aggregate_id, aggregate_type, aggregate_version)` and a unique `event_id`. Table
//! `snapshots`: unique per `(aggregate_id, aggregate_type)`, indexed by
//! `(aggregate_type, schema_version)` for invalidation. Uuids are stored as hyphenated TEXT,
//! timestamps as RFC 3339 TEXT in UTC with nanoseconds (so they round-trip exactly), versions as
//! INTEGER, payloads, metadata and snapshot state as JSON TEXT, untouched. A row that does not
//! decode (a negative version, a malformed uuid or timestamp, metadata that is not JSON) is
//! [`Error::Corrupt`].
//!
//! Long streams are read in pages of 1,000 rows, each page a short query of its own, so a
//! reader never holds a connection, a lock or a read transaction between pages.
//!
//! # Durability
//!
//! An append returns once its events are synced to disk (`synchronous = FULL`). Snapshots
//! written by a store from [`open`], [`open_url`] or [`SqliteSnapshotStore::open`] are not
//! synced one by one (`synchronous = NORMAL`, on a pool of their own): a power cut can lose
//! the last of them, which only makes the next loads replay more events. Neither setting lets
//! a crash corrupt the file. Stores built with `from_pool` use the pool as it is.

mod events;
mod read;
mod schema;
mod snapshots;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Sqlite};

pub use events::SqliteEventStore;
pub use snapshots::SqliteSnapshotStore;
/// The sqlx connection pool the stores run on, re-exported so a program can build its own.
pub use sqlx::sqlite::SqlitePool;

use crate::error::{Error, Result};

const BACKEND: &str = "sqlite";

/// How long a statement waits for a lock held by another connection before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a pool on a SQLite file, created if missing, or on a private in-memory database
/// when `path` is `:memory:`: the pool [`SqliteEventStore::open`] and [`open`] use.
///
/// A file is put in WAL mode, and every commit is synced to disk before it returns; every
/// connection waits up to [`BUSY_TIMEOUT`] for a lock. An in-memory database lives in the
/// pool's one connection, which is never closed: every call sees the same database, and it is
/// gone when the pool is dropped. The tables are not created here but by the stores'
/// constructors.
pub async fn connect(path: impl AsRef<Path>) -> Result<SqlitePool> {
    Target::path(path.as_ref()).pool(Role::Events).await
}

/// Opens an event store and a snapshot store on one database, creating the tables they need.
///
/// On `:memory:` both share the one connection of the database. On a file each has a pool of
/// its own: the event store's commits are synced to disk before they return, the snapshot
/// store's are not. A power cut can lose the last snapshots written, never events, and
/// corrupts nothing; a lost snapshot only makes the next load replay more events.
pub async fn open(path: impl AsRef<Path>) -> Result<(SqliteEventStore, SqliteSnapshotStore)> {
    Target::path(path.as_ref()).stores().await
}

/// Opens the stores a `sqlite:` URL names, as [`open`] does: `sqlite::memory:` for a private
/// in-memory database, `sqlite:PATH` or `sqlite://PATH` for a file, created if missing. Query
/// parameters that sqlx understands (`mode`, `cache`, `immutable`, `vfs`) are passed on.
///
/// Called by [`crate::backend::open`].
pub async fn open_url(url: &str) -> Result<(SqliteEventStore, SqliteSnapshotStore)> {
    Target::url(url)?.stores().await
}

async fn snapshot_pool(path: &Path) -> Result<SqlitePool> {
    Target::path(path).pool(Role::Snapshots).await
}

/// A database to open: a file or an in-memory database.
struct Target {
    options: SqliteConnectOptions,
    name: String,
    in_memory: bool,
    writable: bool,
}

/// What a pool on a file is for.
#[derive(Clone, Copy)]
enum Role {
    /// Commits synced to disk before they return; readers side by side, writers queue.
    Events,
    /// Commits left to the next sync: snapshots are an optimisation and can be lost.
    Snapshots,
}

impl Target {
    fn path(path: &Path) -> Self {
        if path == Path::new(":memory:") {
            return Target {
                options: SqliteConnectOptions::new().in_memory(true),
                name: ":memory:".into(),
                in_memory: true,
                writable: true,
            };
        }
        Target {
            options: SqliteConnectOptions::new().filename(path).create_if_missing(true),
            name: path.display().to_string(),
            in_memory: false,
            writable: true,
        }
    }

    fn url(url: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidConfiguration(format!("bad SQLite URL `{url}`: {reason}"));
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| bad("expected sqlite::memory:, sqlite:PATH or sqlite://PATH".into()))?;
        let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
        if database.is_empty() && params.is_empty() {
            return Err(bad("no file name".into()));
        }
        let options = SqliteConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?;
        let param = |key: &str, value: &str| {
            params
                .split('&')
                .any(|pair| pair.split_once('=') == Some((key, value)))
        };
        let in_memory = database == ":memory:" || param("mode", "memory");
        let writable = !(param("mode", "ro") || param("immutable", "true") || param("immutable", "1"));
        Ok(Target {
            options: options.create_if_missing(writable && !in_memory),
            name: database.to_owned(),
            in_memory,
            writable,
        })
    }

    async fn stores(self) -> Result<(SqliteEventStore, SqliteSnapshotStore)> {
        let events = self.pool(Role::Events).await?;
        let snapshots = if self.in_memory {
            events.clone()
        } else {
            self.pool(Role::Snapshots).await?
        };
        Ok((
            SqliteEventStore::from_pool(events).await?,
            SqliteSnapshotStore::from_pool(snapshots).await?,
        ))
    }

    async fn pool(&self, role: Role) -> Result<SqlitePool> {
        let fail = |e| {
            Error::store(
                BACKEND,
                format!("cannot open the SQLite database {}", self.name),
                e,
            )
        };
        let options = self.options.clone().busy_timeout(BUSY_TIMEOUT);
        // No test of a connection before handing it out: it costs a round trip to the
        // connection's thread on every call, SQLite connections do not go stale, and an
        // acquire dropped during the test (by a timeout around a store call) closes the
        // connection, which for `:memory:` is the database.
        let pool = SqlitePoolOptions::new().test_before_acquire(false);
        if self.in_memory {
            // Each connection to `:memory:` is a database of its own, so the pool keeps one
            // and never lets it go; the stores page their reads, so one is enough.
            let pool = pool.max_connections(1).idle_timeout(None).max_lifetime(None);
            return pool.connect_with(options).await.map_err(fail);
        }
        if self.writable {
            enable_wal(&options, &self.name).await?;
        }
        let (connections, synchronous) = match role {
            Role::Events => (4, SqliteSynchronous::Full),
            Role::Snapshots => (2, SqliteSynchronous::Normal),
        };
        pool.max_connections(connections)
            .connect_with(options.synchronous(synchronous))
            .await
            .map_err(fail)
    }
}

/// Puts the file in WAL mode, creating it if the options say so.
///
/// WAL is a property of the file, kept once set. Switching to it takes an exclusive lock that
/// SQLite does not wait for, so it is done once here, retried while another connection holds
/// a lock, rather than by every connection of the pool.
async fn enable_wal(options: &SqliteConnectOptions, name: &str) -> Result<()> {
    const RETRY: Duration = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    loop {
        match options
            .clone()
            .journal_mode(SqliteJournalMode::Wal)
            .connect()
            .await
        {
            Ok(connection) => {
                return sqlx::Connection::close(connection)
                    .await
                    .map_err(|e| Error::store(BACKEND, format!("cannot open {name}"), e));
            }
            Err(e) if is_busy(&e) && waited < BUSY_TIMEOUT => {
                tokio::time::sleep(RETRY).await;
                waited += RETRY;
            }
            Err(e) => return Err(Error::store(BACKEND, format!("cannot open {name}"), e)),
        }
    }
}

/// A write transaction, begun with `BEGIN IMMEDIATE` so that it holds the write lock from its
/// start: concurrent writers wait for it (up to the busy timeout) instead of failing part way.
///
/// sqlx's own transaction with a custom `BEGIN` can be left open on its connection when its
/// future is dropped at the wrong moment, and the next user of the connection then fails (or,
/// worse, writes into it). This one, dropped before [`commit`](Self::commit) for any reason,
/// rolls back in a task of its own and only then lets the connection go back to the pool. A
/// `ROLLBACK` with no transaction open (the `BEGIN` never ran, or the `COMMIT` did) fails
/// harmlessly.
struct WriteTransaction {
    connection: Option<PoolConnection<Sqlite>>,
}

impl WriteTransaction {
    async fn begin(pool: &SqlitePool) -> std::result::Result<Self, sqlx::Error> {
        let mut tx = Self {
            connection: Some(pool.acquire().await?),
        };
        sqlx::query("BEGIN IMMEDIATE").execute(tx.connection()).await?;
        Ok(tx)
    }

    fn connection(&mut self) -> &mut SqliteConnection {
        self.connection
            .as_mut()
            .expect("a transaction has its connection until it ends")
    }

    async fn commit(mut self) -> std::result::Result<(), sqlx::Error> {
        sqlx::query("COMMIT").execute(self.connection()).await?;
        self.connection = None;
        Ok(())
    }

    async fn rollback(mut self) -> std::result::Result<(), sqlx::Error> {
        sqlx::query("ROLLBACK").execute(self.connection()).await?;
        self.connection = None;
        Ok(())
    }
}

impl Drop for WriteTransaction {
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *connection).await;
                });
            }
            // With no runtime left to roll back on, closing the connection rolls back.
            Err(_) => drop(connection.detach()),
        }
    }
}

/// Whether SQLite reported that another connection holds the lock (`SQLITE_BUSY`).
fn is_busy(e: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == SQLITE_BUSY),
        _ => false,
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
