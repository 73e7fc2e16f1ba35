//! The tables and indexes, created by each store when it opens.

use rusqlite::{Connection, TransactionBehavior};

use super::{Database, BACKEND};
use crate::error::{Error, Result};

/// One table with its indexes.
pub(super) struct Table {
    name: &'static str,
    create: &'static str,
    /// Selects every column this library reads and writes: fails on a foreign table.
    probe: &'static str,
    indexes: &'static [(&'static str, &'static str)],
}

pub(super) const EVENTS: Table = Table {
    name: "events",
    create: "CREATE TABLE IF NOT EXISTS events (
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
    )",
    probe: "SELECT position, event_id, event_type, event_version, aggregate_id, aggregate_type,
        aggregate_version, occurred_at, correlation_id, causation_id, metadata, payload
        FROM events LIMIT 0",
    indexes: &[
        (
            "events_stream",
            "CREATE UNIQUE INDEX IF NOT EXISTS events_stream
                ON events (aggregate_id, aggregate_type, aggregate_version)",
        ),
        (
            "events_event_id",
            "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (event_id)",
        ),
    ],
};

pub(super) const SNAPSHOTS: Table = Table {
    name: "snapshots",
    create: "CREATE TABLE IF NOT EXISTS snapshots (
        aggregate_id TEXT NOT NULL,
        aggregate_type TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )",
    probe: "SELECT aggregate_id, aggregate_type, version, state, schema_version, created_at
        FROM snapshots LIMIT 0",
    indexes: &[
        (
            "snapshots_aggregate",
            "CREATE UNIQUE INDEX IF NOT EXISTS snapshots_aggregate
                ON snapshots (aggregate_id, aggregate_type)",
        ),
        (
            "snapshots_type_schema",
            "CREATE INDEX IF NOT EXISTS snapshots_type_schema
                ON snapshots (aggregate_type, schema_version)",
        ),
    ],
};

impl Table {
    /// Creates the table and its indexes if any is missing, and checks that a table of that
    /// name that was already there is one of ours.
    pub(super) async fn create(&'static self, database: &Database) -> Result<()> {
        database.write(move |connection| self.create_on(connection)).await
    }

    fn create_on(&self, connection: &mut Connection) -> Result<()> {
        let fail = |e| Error::store(BACKEND, format!("cannot create the `{}` table", self.name), e);
        // The usual case, everything there, needs no write lock: count the objects first.
        let mut wanted = vec![self.name];
        wanted.extend(self.indexes.iter().map(|(name, _)| *name));
        let names = wanted
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let present: i64 = connection
            .query_row(
                &format!("SELECT count(*) FROM sqlite_master WHERE name IN ({names})"),
                [],
                |row| row.get(0),
            )
            .map_err(fail)?;
        if present == wanted.len() as i64 {
            return self.probe(connection);
        }
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute_batch(self.create).map_err(fail)?;
        self.probe(&tx)?;
        for (_, index) in self.indexes {
            tx.execute_batch(index).map_err(fail)?;
        }
        tx.commit().map_err(fail)
    }

    fn probe(&self, connection: &Connection) -> Result<()> {
        match connection.prepare(self.probe) {
            Ok(_) => Ok(()),
            // SQLITE_ERROR: a column this library needs is missing.
            Err(e @ rusqlite::Error::SqlInputError { error, .. })
                if error.code == rusqlite::ErrorCode::Unknown =>
            {
                Err(Error::InvalidConfiguration(format!(
                    "the SQLite table `{}` is not an eventsource table ({e}); use another database file",
                    self.name,
                )))
            }
            Err(e) => Err(Error::store(
                BACKEND,
                format!("cannot read the `{}` table", self.name),
                e,
            )),
        }
    }
}
