//! The database the stores run on, and where each statement runs.
//!
//! A SQLite statement costs microseconds, so handing it to another thread and back costs
//! more than running it. Reads therefore run on the calling task's thread, each on a
//! connection of a small idle set that waits for no lock: in WAL mode a reader never waits for
//! a writer, and in the rare moment it would (another connection recovering the WAL, or a
//! file not in WAL mode), the read runs again on a blocking thread that waits up to
//! [`BUSY_TIMEOUT`]. Writes wait for the disk (and for other writers), so each runs whole
//! on a blocking thread: one hand-off per append, and a write started is finished (committed
//! or rolled back) even if its caller stops waiting.
//!
//! SQLite lets one connection write at a time. Writers of one process take turns first come,
//! first served, one turn per file shared by every [`Database`] of the process open on it,
//! before they take the write lock; so they never wait in SQLite's busy handler for each
//! other, in no fixed order, nor fail at its timeout. Other processes on the file still wait
//! there, up to [`BUSY_TIMEOUT`].
//!
//! An in-memory database is one connection, which every call uses in turn on its own thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::prefix::Prefix;
use super::store_error;
use crate::error::{Error, Result};
use crate::slice::SliceCount;

/// How long a statement waits for a lock held by another connection before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept per kind (readers, writers); more are opened when calls overlap.
const MAX_IDLE: usize = 4;

/// A SQLite database: a file, or a private database in memory. Cheap to clone: clones share
/// the connections.
///
/// [`open`](super::open) gives each store its own [`Database`] on one file (the snapshot
/// store's commits skip the per-commit sync); [`Database::open`] and
/// [`SqliteEventStore::on`](super::SqliteEventStore::on) put stores on one of the
/// program's choosing.
///
/// A database handle carries the prefix of the table names of the stores put on it (none
/// unless given with [`Database::with_prefix`]).
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
    prefix: Prefix,
    /// The number of slices its stores are created with, if configured.
    slices: Option<SliceCount>,
}

struct Inner {
    name: String,
    place: Place,
    /// Raised after each append through this database.
    appended: crate::abilities::AppendSignal,
}

enum Place {
    /// The one connection that is the database.
    Memory(Mutex<Connection>),
    File {
        path: PathBuf,
        /// The URI with the query parameters given, if any (opened with `SQLITE_OPEN_URI`).
        uri: Option<String>,
        writable: bool,
        synchronous: Synchronous,
        readers: Mutex<Vec<Connection>>,
        writers: Mutex<Vec<Connection>>,
        /// The file's writers' turn, shared by the process's databases on the file.
        turn: Arc<tokio::sync::Mutex<()>>,
    },
}

/// The writers' turn of each file the process has open, by canonical path.
fn turn_of(path: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static TURNS: OnceLock<Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut turns = TURNS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    turns.retain(|_, turn| turn.strong_count() > 0);
    if let Some(turn) = turns.get(&key).and_then(Weak::upgrade) {
        return turn;
    }
    let turn = Arc::new(tokio::sync::Mutex::new(()));
    turns.insert(key, Arc::downgrade(&turn));
    turn
}

/// When a commit reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Synchronous {
    /// Synced before the commit returns.
    Full,
    /// Left to the next sync: a power cut can lose the last commits, never corrupt the file.
    Normal,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.inner.name)
            .field("prefix", &self.prefix.as_str())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Opens a file, created if missing, in WAL mode with every commit synced to disk, or a
    /// private in-memory database when `path` is `:memory:`. The tables are created by the
    /// stores put on it.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the file cannot be opened or is no SQLite
    /// database; [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration) for tables
    /// that are not this library's or of a newer layout.
    ///
    /// # Cancel safety
    ///
    /// Dropped, nothing is left open. Creating the tables, or bringing them up to date, runs on
    /// the database's thread to its end.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Target::path(path.as_ref()).open(Synchronous::Full).await
    }

    /// Runs `call` on one of the database's connections, on a blocking thread (on the calling
    /// thread for an in-memory database): for a program's own statements, such as a
    /// `PRAGMA` or a read of the tables for a report. The connection waits up to
    /// [`BUSY_TIMEOUT`] for locks; a transaction `call` leaves open is rolled back.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if `call` fails, with its error.
    ///
    /// # Cancel safety
    ///
    /// `call` runs to its end on the database's thread even if the future is dropped; a
    /// transaction it leaves open is rolled back.
    pub async fn call<T, F>(&self, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let name = self.inner.name.clone();
        self.write(move |connection| {
            let result = call(connection);
            if !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            result.map_err(|e| store_error(format!("a statement on {name} failed"), e))
        })
        .await
    }

    /// The database on the same connections, whose stores put `prefix` before each of their
    /// table and index names: `app_events`, `app_snapshots`, `app_eventsource_subscriptions`,
    /// ... for `app_` (see the [module docs](super#storage)). Stores of different prefixes in
    /// one file are independent, each with its own record of migrations; the empty prefix
    /// gives the names of a database made without one.
    ///
    /// A prefix of other characters than ASCII letters, digits and `_`, or starting with a
    /// digit or with `sqlite_`, is [`Error::InvalidConfiguration`].
    pub fn with_prefix(&self, prefix: &str) -> Result<Self> {
        Ok(self.prefixed(Prefix::new(prefix)?))
    }

    /// The prefix of the table names of the stores put on this database, empty if none.
    pub fn prefix(&self) -> &str {
        self.prefix.as_str()
    }

    /// The file name, or `:memory:`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The database on the same connections, with a prefix already checked.
    pub(super) fn prefixed(&self, prefix: Prefix) -> Self {
        Self {
            inner: self.inner.clone(),
            prefix,
            slices: self.slices,
        }
    }

    /// The database on the same connections, whose stores, created on it, have `slices`
    /// slices (see [`crate::slice`]); [`SliceCount::DEFAULT`] otherwise. Stores that were
    /// created already keep theirs: opening one with another number is
    /// [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration).
    #[must_use]
    pub fn with_slices(&self, slices: SliceCount) -> Self {
        Self {
            slices: Some(slices),
            ..self.clone()
        }
    }

    /// The number of slices configured with [`with_slices`](Self::with_slices), if any.
    pub(super) fn configured_slices(&self) -> Option<SliceCount> {
        self.slices
    }

    /// The prefix, to name the tables in statements.
    pub(super) fn table_prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// The signal raised after each append through this database (appends of other
    /// connections to the file are seen by polling).
    pub(super) fn appended(&self) -> &crate::abilities::AppendSignal {
        &self.inner.appended
    }

    /// Runs a read on the calling thread, or, if it finds the database locked, again on a
    /// blocking thread that waits for the lock. `read` may run twice; it must not write.
    pub(super) async fn read<T, F>(&self, mut read: F) -> rusqlite::Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let Place::File { readers, .. } = &self.inner.place else {
            return read(&self.memory());
        };
        let connection = match take(readers) {
            Some(connection) => connection,
            None => self.connect(Role::Reader)?,
        };
        match read(&connection) {
            Err(e) if is_locked(&e) => {
                // Back in the idle set first: this connection waits for nothing.
                give_back(readers, connection);
            }
            outcome => {
                give_back(readers, connection);
                return outcome;
            }
        }
        let this = self.clone();
        let waited = blocking(move || {
            let connection = this.connect(Role::Writer)?;
            read(&connection)
        })
        .await;
        waited.unwrap_or_else(|e| Err(lost(e)))
    }

    /// Runs a write whole on a blocking thread (on the calling thread for an in-memory
    /// database), on a connection that waits up to [`BUSY_TIMEOUT`] for the write lock.
    pub(super) async fn write<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let turn = match &self.inner.place {
            Place::Memory(_) => return write(&mut self.memory()),
            Place::File { turn, .. } => turn.clone(),
        };
        // Held until the write has finished on its thread, even if this caller stops waiting.
        let turn = turn.lock_owned().await;
        let this = self.clone();
        let name = self.inner.name.clone();
        blocking(move || {
            let _turn = turn;
            let Place::File { writers, .. } = &this.inner.place else {
                unreachable!("checked above")
            };
            let mut connection = match take(writers) {
                Some(connection) => connection,
                None => this
                    .connect(Role::Writer)
                    .map_err(|e| store_error(format!("cannot open {name}"), e))?,
            };
            let outcome = write(&mut connection);
            // A connection left inside a transaction (a failed ROLLBACK) is not reused.
            if connection.is_autocommit() {
                give_back(writers, connection);
            }
            outcome
        })
        .await
        .unwrap_or_else(|e| Err(store_error("a SQLite write was lost", lost(e))))
    }

    fn memory(&self) -> MutexGuard<'_, Connection> {
        match &self.inner.place {
            Place::Memory(connection) => connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            Place::File { .. } => unreachable!("only called on an in-memory database"),
        }
    }

    fn connect(&self, role: Role) -> rusqlite::Result<Connection> {
        let Place::File {
            path,
            uri,
            writable,
            synchronous,
            ..
        } = &self.inner.place
        else {
            unreachable!("an in-memory database has its one connection")
        };
        let connection = open_file(path, uri.as_deref(), *writable)?;
        let busy = match role {
            Role::Reader => Duration::ZERO,
            Role::Writer => BUSY_TIMEOUT,
        };
        connection.busy_timeout(busy)?;
        connection.set_prepared_statement_cache_capacity(32);
        if *writable {
            let pragma = match synchronous {
                Synchronous::Full => "PRAGMA synchronous = FULL",
                Synchronous::Normal => "PRAGMA synchronous = NORMAL",
            };
            connection.execute_batch(pragma)?;
        }
        Ok(connection)
    }
}

#[derive(Clone, Copy)]
enum Role {
    /// Waits for no lock: runs on the calling thread.
    Reader,
    /// Waits up to the busy timeout: runs on a blocking thread.
    Writer,
}

fn take(idle: &Mutex<Vec<Connection>>) -> Option<Connection> {
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop()
}

fn give_back(idle: &Mutex<Vec<Connection>>, connection: Connection) {
    let mut idle = idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if idle.len() < MAX_IDLE {
        idle.push(connection);
    }
}

/// A blocking task that did not finish: its panic goes on in the caller; a runtime shutting
/// down is a failure of the call.
fn lost(e: tokio::task::JoinError) -> rusqlite::Error {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    let aborted = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT);
    rusqlite::Error::SqliteFailure(aborted, Some(format!("the blocking task did not finish: {e}")))
}

/// Runs `work` on tokio's blocking threads and waits for it; it runs to its end even if the
/// caller stops waiting.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(work).await
}

fn open_file(path: &Path, uri: Option<&str>, writable: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
    flags |= if writable {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    match uri {
        Some(uri) => Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI),
        None => Connection::open_with_flags(path, flags),
    }
}

/// Whether SQLite reported a lock held by another connection.
pub(super) fn is_locked(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A database to open: a file or an in-memory database, as a path or a `sqlite:` URL names it.
pub(super) struct Target {
    name: String,
    path: Option<PathBuf>,
    uri: Option<String>,
    writable: bool,
}

impl Target {
    pub(super) fn path(path: &Path) -> Self {
        let in_memory = path == Path::new(":memory:");
        Target {
            name: path.display().to_string(),
            path: (!in_memory).then(|| path.to_owned()),
            uri: None,
            writable: true,
        }
    }

    pub(super) fn url(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidConfiguration(format!("bad SQLite URL `{url}`: {reason}"));
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| bad("expected sqlite::memory:, sqlite:PATH or sqlite://PATH"))?;
        let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
        if database.is_empty() {
            return Err(bad("no file name"));
        }
        let param = |key: &str, value: &str| {
            params
                .split('&')
                .any(|pair| pair.split_once('=') == Some((key, value)))
        };
        let in_memory = database == ":memory:" || param("mode", "memory");
        let writable = !(param("mode", "ro") || param("immutable", "true") || param("immutable", "1"));
        Ok(Target {
            name: database.to_owned(),
            path: (!in_memory).then(|| PathBuf::from(database)),
            uri: (!in_memory && !params.is_empty()).then(|| format!("file:{database}?{params}")),
            writable,
        })
    }

    pub(super) fn in_memory(&self) -> bool {
        self.path.is_none()
    }

    /// Opens the database: creates the file if missing and puts it in WAL mode.
    pub(super) async fn open(&self, synchronous: Synchronous) -> Result<Database> {
        let name = self.name.clone();
        let fail =
            move |e: rusqlite::Error| store_error(format!("cannot open the SQLite database {name}"), e);
        let Some(path) = self.path.clone() else {
            let connection = Connection::open_in_memory().map_err(&fail)?;
            return Ok(Database {
                inner: Arc::new(Inner {
                    name: self.name.clone(),
                    place: Place::Memory(Mutex::new(connection)),
                    appended: Default::default(),
                }),
                prefix: Prefix::default(),
                slices: None,
            });
        };
        let (uri, writable) = (self.uri.clone(), self.writable);
        let created = path.clone();
        blocking(move || {
            if writable {
                let connection = Connection::open_with_flags(
                    &created,
                    OpenFlags::SQLITE_OPEN_READ_WRITE
                        | OpenFlags::SQLITE_OPEN_CREATE
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                enable_wal(&connection)?;
            }
            open_file(&created, uri.as_deref(), writable).map(drop)
        })
        .await
        .map_err(|e| store_error(format!("cannot open the SQLite database {}", self.name), e))?
        .map_err(fail)?;
        Ok(Database {
            inner: Arc::new(Inner {
                name: self.name.clone(),
                appended: Default::default(),
                place: Place::File {
                    turn: turn_of(&path),
                    path,
                    uri: self.uri.clone(),
                    writable: self.writable,
                    synchronous,
                    readers: Mutex::new(Vec::new()),
                    writers: Mutex::new(Vec::new()),
                },
            }),
            prefix: Prefix::default(),
            slices: None,
        })
    }
}

impl Database {
    /// The journal mode and the `synchronous` setting of the connection that writes, each
    /// with what an unsafe value risks (see [`crate::backend::durability`]).
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn durability(&self) -> Result<crate::backend::durability::Durability> {
        use crate::backend::durability::{Durability, Setting};
        let (journal, synchronous) = self
            .write(|connection| {
                let read = |pragma: &str| {
                    connection.query_row(pragma, [], |row| row.get::<_, rusqlite::types::Value>(0))
                };
                let journal = match read("PRAGMA journal_mode") {
                    Ok(rusqlite::types::Value::Text(mode)) => mode.to_lowercase(),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => return Err(super::store_error("cannot read the journal mode", e)),
                };
                let synchronous = match read("PRAGMA synchronous") {
                    Ok(rusqlite::types::Value::Integer(level)) => level,
                    Ok(_) => -1,
                    Err(e) => return Err(super::store_error("cannot read the synchronous setting", e)),
                };
                Ok((journal, synchronous))
            })
            .await?;
        let level = match synchronous {
            0 => "off",
            1 => "normal",
            2 => "full",
            3 => "extra",
            _ => "unknown",
        };
        let settings = vec![
            Setting::new(
                "journal_mode",
                journal.clone(),
                matches!(journal.as_str(), "wal" | "delete" | "truncate" | "persist"),
                "the database lives in memory, or a crash in the middle of a write can corrupt it",
            ),
            Setting::new(
                "synchronous",
                level,
                synchronous >= 2,
                "a crash of the machine or a loss of power can lose the last acknowledged appends",
            ),
        ];
        Ok(Durability {
            backend: "sqlite",
            settings,
        })
    }
}

/// Puts the file in WAL mode, a property of the file kept once set. Switching takes an
/// exclusive lock that SQLite does not wait for, so it is retried while another connection
/// holds a lock, up to the busy timeout.
fn enable_wal(connection: &Connection) -> rusqlite::Result<()> {
    const RETRY: Duration = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    loop {
        match connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get::<_, String>(0)) {
            Err(e) if is_locked(&e) && waited < BUSY_TIMEOUT => {
                std::thread::sleep(RETRY);
                waited += RETRY;
            }
            outcome => return outcome.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_databases_of_one_file_share_one_writers_turn() {
        let dir = tempfile::tempdir().unwrap();
        let turn = |db: &Database| match &db.inner.place {
            Place::File { turn, .. } => turn.clone(),
            Place::Memory(_) => unreachable!(),
        };
        let a = Database::open(dir.path().join("one.db")).await.unwrap();
        // The same file by another spelling of its path.
        let b = Database::open(dir.path().join(".").join("one.db")).await.unwrap();
        let other = Database::open(dir.path().join("two.db")).await.unwrap();
        assert!(Arc::ptr_eq(&turn(&a), &turn(&b)));
        assert!(!Arc::ptr_eq(&turn(&a), &turn(&other)));
        // While one writer has the turn, a second waits for it rather than for SQLite's lock.
        let held = turn(&a).lock_owned().await;
        let waiting = tokio::spawn(async move { b.call(|c| c.execute_batch("CREATE TABLE t (x)")).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the second writer did not wait its turn");
        drop(held);
        waiting.await.unwrap().unwrap();
    }
}
