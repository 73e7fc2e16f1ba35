//! Deleting and archiving streams (see [`crate::lifecycle`]): rows moved between the events
//! table and the archive, in one write transaction each.

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use uuid::Uuid;

use super::events::{Encoded, Stream};
use super::prefix::Prefix;
use super::{signed, store_error, unsigned, SqliteEventStore};
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch};
use crate::lifecycle::StreamLifecycle;

/// The columns an event row has in the events table and in the archive alike.
const COLUMNS: &str = "position, event_id, event_type, event_version, aggregate_id, aggregate_type, \
    aggregate_version, occurred_at, correlation_id, causation_id, metadata, payload, request_id, slice";

/// What a deletion removes after its tombstone is in, in order: `?1` the aggregate id, `?2`
/// the type, and `?3` the version before the tombstone where a statement takes it. The
/// request ids go first, found by the events that recorded them.
const DELETIONS: &[(&str, bool)] = &[
    (
        "DELETE FROM {p}eventsource_requests WHERE aggregate_id = ?1 AND aggregate_type = ?2
            AND request_id IN (
                SELECT request_id FROM {p}events
                WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND request_id IS NOT NULL
                UNION ALL
                SELECT request_id FROM {p}eventsource_archived_events
                WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND request_id IS NOT NULL)",
        false,
    ),
    (
        "DELETE FROM {p}events WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND aggregate_version <= ?3",
        true,
    ),
    (
        "DELETE FROM {p}eventsource_archived_events WHERE aggregate_id = ?1 AND aggregate_type = ?2",
        false,
    ),
    (
        "DELETE FROM {p}snapshots WHERE aggregate_id = ?1 AND aggregate_type = ?2",
        false,
    ),
];

const VERSION: &str =
    "SELECT coalesce(max(aggregate_version), 0) FROM {p}events WHERE aggregate_id = ?1 AND aggregate_type = ?2";

const ARCHIVED: &str =
    "SELECT count(*) FROM {p}eventsource_archived_events WHERE aggregate_id = ?1 AND aggregate_type = ?2";

/// Copies rows of a stream from one table to the other: `?3` bounds the versions moved.
fn copy(prefix: &Prefix, from: &str, to: &str) -> String {
    prefix.sql(&format!(
        "INSERT INTO {{p}}{to} ({COLUMNS}) SELECT {COLUMNS} FROM {{p}}{from}
         WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND aggregate_version < ?3"
    ))
}

fn remove(prefix: &Prefix, from: &str) -> String {
    prefix.sql(&format!(
        "DELETE FROM {{p}}{from} WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND aggregate_version < ?3"
    ))
}

const LIVE: &str = "events";
const ARCHIVE: &str = "eventsource_archived_events";

impl SqliteEventStore {
    /// Moves the stream's rows with a version below `before` from table `from` to table
    /// `to`, in one write transaction after `check` passed on it; how many moved.
    async fn move_rows(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        before: u64,
        (from, to): (&'static str, &'static str),
        check: impl FnOnce(&Connection, &Prefix) -> Result<()> + Send + 'static,
    ) -> Result<u64> {
        let prefix = self.database.table_prefix().clone();
        let (key, ty) = (aggregate_id.hyphenated().to_string(), aggregate_type.to_owned());
        let before = signed(before, "version")?;
        let what = format!("move the events of {aggregate_type} {aggregate_id}");
        self.database
            .write(move |connection| {
                let fail = |e| store_error(format!("cannot {what}"), e);
                let tx = connection
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(fail)?;
                check(&tx, &prefix)?;
                tx.execute(&copy(&prefix, from, to), (&key, &ty, before))
                    .map_err(|e| match e.sqlite_error_code() {
                        Some(ErrorCode::ConstraintViolation) if to == LIVE => Error::InvalidInput(format!(
                            "cannot restore {ty} {key}: an event id of its archive was stored again \
                             since it was archived"
                        )),
                        _ => fail(e),
                    })?;
                let moved = tx
                    .execute(&remove(&prefix, from), (&key, &ty, before))
                    .map_err(fail)?;
                tx.commit().map_err(fail)?;
                Ok(moved as u64)
            })
            .await
    }

    async fn count(&self, sql: &str, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let sql = self.database.table_prefix().sql(sql);
        let (key, ty) = (aggregate_id.hyphenated().to_string(), aggregate_type.to_owned());
        let what = || format!("the SQLite stream of {aggregate_type} {aggregate_id}");
        let count: i64 = self
            .database
            .read(move |connection| connection.query_row(&sql, (&key, &ty), |row| row.get(0)))
            .await
            .map_err(|e| store_error(format!("cannot read {}", what()), e))?;
        unsigned(count, "count", what)
    }
}

#[async_trait]
impl StreamLifecycle for SqliteEventStore {
    async fn delete_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        tombstone: &EventEnvelope,
    ) -> Result<Appended> {
        let tombstone = std::slice::from_ref(tombstone);
        let checked = Batch::checked(aggregate_id, aggregate_type, expected_version, tombstone)?;
        let batch = vec![Encoded::new(&tombstone[0])?];
        let stream = Stream::new(aggregate_id, aggregate_type);
        let (sql, prefix) = (self.sql.clone(), self.database.table_prefix().clone());
        let (key, ty) = (aggregate_id.hyphenated().to_string(), aggregate_type.to_owned());
        let expected = signed(expected_version, "expected version")?;
        let what = format!("delete {aggregate_type} {aggregate_id}");
        let deleted = self
            .database
            .write(move |connection| {
                let fail = |e| store_error(format!("cannot {what}"), e);
                let tx = connection
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(fail)?;
                let appended = stream.append_in(&tx, &sql, expected_version, &batch, None)?;
                for (statement, takes_version) in DELETIONS {
                    let statement = prefix.sql(statement);
                    match takes_version {
                        true => tx.execute(&statement, (&key, &ty, expected)),
                        false => tx.execute(&statement, (&key, &ty)),
                    }
                    .map_err(fail)?;
                }
                tx.commit().map_err(fail)?;
                Ok(appended)
            })
            .await;
        match deleted {
            Ok((version, position)) => {
                self.database
                    .appended()
                    .raise_streams([(aggregate_type, aggregate_id)]);
                Ok(Appended { version, position })
            }
            Err(refusal @ (Error::Conflict { .. } | Error::InvalidInput(_))) => {
                checked.acknowledge_stored(self, refusal).await
            }
            Err(e) => Err(e),
        }
    }

    async fn archive_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        before_version: u64,
    ) -> Result<u64> {
        let (key, ty) = (aggregate_id.hyphenated().to_string(), aggregate_type.to_owned());
        let check = move |tx: &Connection, prefix: &Prefix| {
            let version: i64 = tx
                .query_row(&prefix.sql(VERSION), (&key, &ty), |row| row.get(0))
                .map_err(|e| store_error(format!("cannot read the version of {ty} {key}"), e))?;
            let version = unsigned(version, "aggregate_version", || {
                format!("the SQLite stream of {ty} {key}")
            })?;
            crate::lifecycle::check_archive_bound(aggregate_id, &ty, before_version, version)
        };
        self.move_rows(
            aggregate_id,
            aggregate_type,
            before_version,
            (LIVE, ARCHIVE),
            check,
        )
        .await
    }

    async fn restore_stream(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let no_check = |_: &Connection, _: &Prefix| Ok(());
        self.move_rows(
            aggregate_id,
            aggregate_type,
            i64::MAX as u64,
            (ARCHIVE, LIVE),
            no_check,
        )
        .await
    }

    async fn archived(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        self.count(ARCHIVED, aggregate_id, aggregate_type).await
    }
}
