//! The tables, and the numbered migrations that create and upgrade them.
//!
//! The layout's version is recorded in the table `{p}eventsource_migrations`, one row per
//! step applied, for each prefix `{p}` of table names on its own. Each store runs [`migrate`]
//! when it opens: the usual case, every step applied, is one read and needs no lock;
//! otherwise the missing steps run in one `BEGIN IMMEDIATE` transaction, so two processes
//! opening one file at once apply each step once, and a failed step leaves the file as it
//! was.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::prefix::Prefix;
use super::{store_error, Database};
use crate::error::{Error, Result};
use crate::slice::SliceCount;

/// One upgrade of the layout, applied once, in order.
struct Step {
    version: i64,
    description: &'static str,
    sql: &'static str,
    /// What the step computes in Rust after its SQL, if anything.
    fill: Option<Fill>,
}

/// A step's work in Rust, given the number of slices the store has.
type Fill = fn(&Connection, &Prefix, SliceCount) -> Result<()>;

/// Every step of the layout. A database made before versions were recorded (the 0.1 layout)
/// has the tables of step 1: its `CREATE ... IF NOT EXISTS` finds them, and the later steps
/// upgrade them.
const STEPS: &[Step] = &[
    Step {
        version: 1,
        description: "events and snapshots",
        sql: "CREATE TABLE IF NOT EXISTS {p}events (
                position INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                event_version INTEGER NOT NULL,
                aggregate_id TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                aggregate_version INTEGER NOT NULL,
                occurred_at TEXT NOT NULL,
                correlation_id TEXT,
                causation_id TEXT,
                metadata TEXT,
                payload TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {p}snapshots (
                aggregate_id TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                version INTEGER NOT NULL,
                state TEXT NOT NULL,
                schema_version INTEGER NOT NULL,
                created_at TEXT NOT NULL
            );
            CREATE UNIQUE INDEX IF NOT EXISTS {p}events_stream
                ON {p}events (aggregate_id, aggregate_type, aggregate_version);
            CREATE UNIQUE INDEX IF NOT EXISTS {p}events_event_id ON {p}events (event_id);
            CREATE UNIQUE INDEX IF NOT EXISTS {p}snapshots_aggregate
                ON {p}snapshots (aggregate_id, aggregate_type);
            CREATE INDEX IF NOT EXISTS {p}snapshots_type_schema
                ON {p}snapshots (aggregate_type, schema_version);",
        fill: None,
    },
    Step {
        version: 2,
        description: "snapshots name the event they follow",
        sql: "ALTER TABLE {p}snapshots ADD COLUMN event_id TEXT",
        fill: None,
    },
    Step {
        version: 3,
        description: "subscriptions: checkpoints, leases and dead letters",
        sql: "CREATE TABLE IF NOT EXISTS {p}eventsource_subscriptions (
                name TEXT PRIMARY KEY,
                position INTEGER,
                owner TEXT,
                lease_until INTEGER
            );
            CREATE TABLE IF NOT EXISTS {p}eventsource_dead_letters (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                subscription TEXT NOT NULL,
                position INTEGER NOT NULL,
                event_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                error TEXT NOT NULL,
                failed_at TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {p}eventsource_dead_letters_subscription
                ON {p}eventsource_dead_letters (subscription, id);",
        fill: None,
    },
    Step {
        version: 4,
        description: "events carry the request id of their command",
        sql: "ALTER TABLE {p}events ADD COLUMN request_id TEXT;
            CREATE INDEX IF NOT EXISTS {p}events_request
                ON {p}events (aggregate_id, aggregate_type, request_id) WHERE request_id IS NOT NULL;",
        fill: None,
    },
    Step {
        version: 5,
        description: "one snapshot per aggregate and schema version",
        sql: "CREATE UNIQUE INDEX IF NOT EXISTS {p}snapshots_aggregate_schema
                ON {p}snapshots (aggregate_id, aggregate_type, schema_version);
            DROP INDEX IF EXISTS {p}snapshots_aggregate;",
        fill: None,
    },
    Step {
        version: 6,
        description: "the request index: the first outcome of every request id",
        sql: "CREATE TABLE IF NOT EXISTS {p}eventsource_requests (
                request_id TEXT PRIMARY KEY,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                fingerprint INTEGER,
                version INTEGER,
                position INTEGER,
                refusal TEXT,
                recorded_at TEXT NOT NULL
            );
            INSERT OR IGNORE INTO {p}eventsource_requests
                (request_id, aggregate_type, aggregate_id, version, position, recorded_at)
                SELECT request_id, aggregate_type, aggregate_id, max(aggregate_version),
                    max(position), max(occurred_at)
                FROM {p}events WHERE request_id IS NOT NULL GROUP BY request_id;
            DROP INDEX IF EXISTS {p}events_request;",
        fill: None,
    },
    Step {
        version: 7,
        description: "every event in its stream's slice",
        sql: "ALTER TABLE {p}events ADD COLUMN slice INTEGER;
            CREATE INDEX IF NOT EXISTS {p}events_slice ON {p}events (slice, position);
            CREATE TRIGGER IF NOT EXISTS {p}events_slice_required
                AFTER INSERT ON {p}events WHEN NEW.slice IS NULL
            BEGIN
                SELECT RAISE(ABORT, 'an event without its slice: the events table has the eventsource layout 7 or later, which older versions of the library cannot write; upgrade the program');
            END;",
        fill: Some(fill_slices),
    },
    Step {
        version: 8,
        description: "the store's settings: its number of slices",
        sql: "CREATE TABLE IF NOT EXISTS {p}eventsource_settings (
                name TEXT PRIMARY KEY,
                value TEXT NOT NULL
            );",
        fill: Some(record_slices),
    },
    Step {
        version: 9,
        description: "the keys of data subjects, and the streams that hold their personal data",
        sql: "CREATE TABLE IF NOT EXISTS {p}eventsource_subject_keys (
                subject TEXT PRIMARY KEY,
                key BLOB,
                created_at TEXT NOT NULL,
                forgetting_since TEXT,
                forgotten_at TEXT
            );
            CREATE TABLE IF NOT EXISTS {p}eventsource_subject_streams (
                subject TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                PRIMARY KEY (subject, aggregate_type, aggregate_id)
            ) WITHOUT ROWID;",
        fill: None,
    },
    Step {
        version: 10,
        description: "the archive: events moved out of the live table behind a snapshot",
        sql: "CREATE TABLE IF NOT EXISTS {p}eventsource_archived_events (
                position INTEGER NOT NULL,
                event_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                event_version INTEGER NOT NULL,
                aggregate_id TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                aggregate_version INTEGER NOT NULL,
                occurred_at TEXT NOT NULL,
                correlation_id TEXT,
                causation_id TEXT,
                metadata TEXT,
                payload TEXT NOT NULL,
                request_id TEXT,
                slice INTEGER NOT NULL,
                PRIMARY KEY (aggregate_id, aggregate_type, aggregate_version)
            ) WITHOUT ROWID;",
        fill: None,
    },
];

/// The version of the step that gave every event its slice: the number of slices is fixed
/// from then on.
const SLICED: i64 = 7;

/// Step 8: the number of slices step 7 computed the slices with.
fn record_slices(connection: &Connection, prefix: &Prefix, slices: SliceCount) -> Result<()> {
    connection
        .execute(
            &prefix.sql("INSERT OR IGNORE INTO {p}eventsource_settings (name, value) VALUES ('slices', ?1)"),
            [slices.get().to_string()],
        )
        .map(drop)
        .map_err(|e| store_error("cannot record the number of slices", e))
}

/// The number of slices the store was created with, as step 8 recorded it.
fn recorded_slices(connection: &Connection, prefix: &Prefix) -> Result<SliceCount> {
    let value: Option<String> = connection
        .query_row(
            &prefix.sql("SELECT value FROM {p}eventsource_settings WHERE name = 'slices'"),
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| store_error("cannot read the number of slices", e))?;
    SliceCount::recorded(value, &prefix.sql("the SQLite table {p}eventsource_settings"))
}

/// Step 7: each stored event gets the slice of its stream ([`SliceCount::slice_of`]), one
/// update per stream.
fn fill_slices(connection: &Connection, prefix: &Prefix, slices: SliceCount) -> Result<()> {
    let fail = |e| store_error("cannot fill in the slices of the stored events", e);
    let mut streams = connection
        .prepare(
            &prefix.sql("SELECT DISTINCT aggregate_type, aggregate_id FROM {p}events WHERE slice IS NULL"),
        )
        .map_err(fail)?;
    let mut update = connection
        .prepare(
            &prefix.sql("UPDATE {p}events SET slice = ?1 WHERE aggregate_id = ?2 AND aggregate_type = ?3"),
        )
        .map_err(fail)?;
    let mut rows = streams.query([]).map_err(fail)?;
    while let Some(row) = rows.next().map_err(fail)? {
        let (aggregate_type, id): (String, String) = (row.get(0).map_err(fail)?, row.get(1).map_err(fail)?);
        let aggregate_id = Uuid::try_parse(&id).map_err(|e| {
            Error::corrupt(
                format!("the SQLite stream of {aggregate_type} {id}"),
                format!("column `aggregate_id` holds {id:?}, not a uuid: {e}"),
            )
        })?;
        update
            .execute((
                slices.slice_of(&aggregate_type, aggregate_id),
                &id,
                &aggregate_type,
            ))
            .map_err(fail)?;
    }
    Ok(())
}

/// The layout version this library reads and writes.
pub(super) const LATEST: i64 = STEPS[STEPS.len() - 1].version;

/// Selects every column this library reads and writes: fails on a foreign table.
const PROBE: &str = "SELECT position, event_id, event_type, event_version, aggregate_id,
        aggregate_type, aggregate_version, occurred_at, correlation_id, causation_id, metadata,
        payload, request_id, slice FROM {p}events LIMIT 0;
    SELECT aggregate_id, aggregate_type, version, state, schema_version, created_at, event_id
        FROM {p}snapshots LIMIT 0;
    SELECT name, position, owner, lease_until FROM {p}eventsource_subscriptions LIMIT 0;
    SELECT request_id, aggregate_type, aggregate_id, fingerprint, version, position, refusal,
        recorded_at FROM {p}eventsource_requests LIMIT 0;
    SELECT name, value FROM {p}eventsource_settings LIMIT 0;";

/// The record of the steps applied, per prefix.
const MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS {p}eventsource_migrations (
        version INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        applied_at TEXT NOT NULL
    )";

const RECORD: &str = "INSERT INTO {p}eventsource_migrations (version, description, applied_at)
    VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";

const RECORDED: &str = "SELECT coalesce(max(version), 0) FROM {p}eventsource_migrations";

/// Brings the tables of the database's prefix to the [`LATEST`] layout, creating them with
/// the database's configured number of slices if they are new; returns the number of slices
/// the store has.
pub(super) async fn migrate(database: &Database) -> Result<SliceCount> {
    let prefix = database.table_prefix().clone();
    let configured = database.configured_slices();
    let store = format!("the SQLite store {}{}", database.name(), of_prefix(&prefix));
    let recorded = database
        .write(move |connection| migrate_on(connection, &prefix, configured))
        .await?;
    recorded.confirm(configured, &store)
}

fn migrate_on(
    connection: &mut Connection,
    prefix: &Prefix,
    configured: Option<SliceCount>,
) -> Result<SliceCount> {
    let fail = |e| store_error("cannot migrate the SQLite tables", e);
    if let Some(version) = recorded_version(connection, prefix).map_err(fail)? {
        check_not_newer(version, prefix)?;
        if version == LATEST {
            probe(connection, prefix)?;
            return recorded_slices(connection, prefix);
        }
    }
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    tx.execute_batch(&prefix.sql(MIGRATIONS)).map_err(fail)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let current = recorded_version(&tx, prefix).map_err(fail)?.unwrap_or(0);
    check_not_newer(current, prefix)?;
    // Slices stored before the number was recorded were computed with the default.
    let slices = match current >= SLICED {
        true => SliceCount::DEFAULT,
        false => configured.unwrap_or_default(),
    };
    let record = prefix.sql(RECORD);
    for step in STEPS.iter().filter(|step| step.version > current) {
        tx.execute_batch(&prefix.sql(step.sql))
            .map_err(|e| foreign_or(e, step, prefix))?;
        if let Some(fill) = step.fill {
            fill(&tx, prefix, slices)?;
        }
        tx.execute(&record, (step.version, step.description))
            .map_err(fail)?;
    }
    probe(&tx, prefix)?;
    let recorded = recorded_slices(&tx, prefix)?;
    tx.commit().map_err(fail)?;
    Ok(recorded)
}

/// The highest step recorded for the prefix, `None` if its migrations table is missing.
fn recorded_version(connection: &Connection, prefix: &Prefix) -> rusqlite::Result<Option<i64>> {
    // SQLite's names are case-insensitive: `App_` names the tables of `app_`.
    let exists = connection
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [prefix.sql("{p}eventsource_migrations")],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(None);
    }
    connection
        .query_row(&prefix.sql(RECORDED), [], |row| row.get(0))
        .map(Some)
}

fn check_not_newer(version: i64, prefix: &Prefix) -> Result<()> {
    if version > LATEST {
        return Err(Error::InvalidConfiguration(format!(
            "the SQLite database has the eventsource table layout {version}{}, newer than the \
             layout {LATEST} of this version of the library; upgrade the program",
            of_prefix(prefix)
        )));
    }
    Ok(())
}

fn probe(connection: &Connection, prefix: &Prefix) -> Result<()> {
    for statement in PROBE
        .split_terminator(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if let Err(e) = connection.prepare(&prefix.sql(statement)) {
            return Err(foreign_or(e, &STEPS[0], prefix));
        }
    }
    Ok(())
}

/// A statement that fails on a missing column means a table of that name that is not ours.
fn foreign_or(e: rusqlite::Error, step: &Step, prefix: &Prefix) -> Error {
    match &e {
        rusqlite::Error::SqlInputError { error, .. } | rusqlite::Error::SqliteFailure(error, _)
            if error.code == rusqlite::ErrorCode::Unknown =>
        {
            Error::InvalidConfiguration(format!(
                "the SQLite tables `{}` and `{}` are not eventsource tables ({e}); \
                 use another database file or another table prefix",
                prefix.sql("{p}events"),
                prefix.sql("{p}snapshots"),
            ))
        }
        _ => store_error(
            format!(
                "cannot apply the SQLite migration {} ({}){}",
                step.version,
                step.description,
                of_prefix(prefix)
            ),
            e,
        ),
    }
}

/// The prefix as error messages name it: nothing for the empty one.
fn of_prefix(prefix: &Prefix) -> String {
    match prefix.as_str() {
        "" => String::new(),
        name => format!(" of the tables prefixed `{name}`"),
    }
}
