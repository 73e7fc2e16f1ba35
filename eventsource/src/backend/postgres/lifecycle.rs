//! Deleting and archiving streams (see [`crate::lifecycle`]): rows moved between the events
//! table and the archive, in one transaction each.

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{query_error, to_bigint, Layout, PostgresEventStore};
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch, EventStore};
use crate::lifecycle::StreamLifecycle;

/// The columns an event row has in the events table and in the archive alike.
/// (The events table computes each row's slice.)
const COLUMNS: &str = "position, event_id, event_type, event_version, aggregate_id, aggregate_type, \
    aggregate_version, occurred_at, occurred_at_ns, correlation_id, causation_id, metadata, payload, \
    request_id";

/// What a deletion removes after its tombstone is in, in order: `$1` the aggregate id, `$2`
/// the type, and `$3` the version before the tombstone where a statement takes it. The
/// request ids go first, found by the events that recorded them.
fn deletions(layout: &Layout) -> [(String, bool); 4] {
    let Layout {
        events,
        archived_events,
        requests,
        snapshots,
        ..
    } = layout;
    let stream = "aggregate_id = $1 AND aggregate_type = $2";
    [
        (
            format!(
                "DELETE FROM {requests} WHERE {stream} AND request_id IN (
                    SELECT request_id FROM {events} WHERE {stream} AND request_id IS NOT NULL
                    UNION ALL
                    SELECT request_id FROM {archived_events} WHERE {stream} AND request_id IS NOT NULL)"
            ),
            false,
        ),
        (
            format!("DELETE FROM {events} WHERE {stream} AND aggregate_version <= $3"),
            true,
        ),
        (format!("DELETE FROM {archived_events} WHERE {stream}"), false),
        (format!("DELETE FROM {snapshots} WHERE {stream}"), false),
    ]
}

/// The first key of the lock a deletion, an archive or a restore holds on its stream, so
/// that two of them on one stream run one after the other: "LIFE". The second key is a hash
/// of the stream.
const STREAM_LOCK_CLASS: i32 = 0x4c49_4645;

/// Takes the stream's lifecycle lock in the transaction of `connection`, until it ends.
async fn lock_stream(connection: &mut PgConnection, aggregate_id: Uuid, aggregate_type: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3::text))")
        .bind(STREAM_LOCK_CLASS)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .execute(&mut *connection)
        .await
        .map(drop)
        .map_err(|e| query_error(&format!("cannot lock {aggregate_type} {aggregate_id}"), e))
}

/// Moves a stream's rows with a version below `$3` from table `from` to table `to`; gives
/// how many moved.
fn move_rows(from: &str, to: &str) -> String {
    format!(
        "WITH moved AS (
            DELETE FROM {from} WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version < $3
            RETURNING {COLUMNS}
        ), copied AS (
            INSERT INTO {to} ({COLUMNS}) SELECT {COLUMNS} FROM moved RETURNING 1
        )
        SELECT count(*) FROM copied"
    )
}

impl PostgresEventStore {
    /// Moves the stream's rows below `before` from `from` to `to` in one transaction,
    /// announced as one that appends (the rows going into the events table are inserted).
    async fn move_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        before: u64,
        (from, to): (&str, &str),
    ) -> Result<u64> {
        let what = format!("cannot move the events of {aggregate_type} {aggregate_id}");
        let mut tx = self.begin().await?;
        lock_stream(&mut tx, aggregate_id, aggregate_type).await?;
        let moved: i64 = sqlx::query_scalar(&move_rows(from, to))
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(to_bigint(before, "version")?)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(db)
                    if db.kind() == ErrorKind::UniqueViolation
                        && db.constraint() == Some(super::sql::EVENT_ID_KEY) =>
                {
                    Error::InvalidInput(format!(
                        "cannot restore {aggregate_type} {aggregate_id}: an event id of its archive \
                         was stored again since it was archived"
                    ))
                }
                e => query_error(&what, e),
            })?;
        tx.commit().await.map_err(|e| query_error(&what, e))?;
        Ok(u64::try_from(moved).unwrap_or_default())
    }
}

#[async_trait]
impl StreamLifecycle for PostgresEventStore {
    async fn delete_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        tombstone: &EventEnvelope,
    ) -> Result<Appended> {
        let tombstone = std::slice::from_ref(tombstone);
        let checked = Batch::checked(aggregate_id, aggregate_type, expected_version, tombstone)?;
        let expected = to_bigint(expected_version, "expected version")?;
        let what = format!("cannot delete {aggregate_type} {aggregate_id}");
        let mut tx = self.begin().await?;
        lock_stream(&mut tx, aggregate_id, aggregate_type).await?;
        let appended = match self
            .append_in_transaction(&mut tx, aggregate_id, aggregate_type, expected_version, tombstone)
            .await
        {
            Ok(appended) => appended,
            Err(refusal @ (Error::Conflict { .. } | Error::InvalidInput(_))) => {
                drop(tx);
                return checked.acknowledge_stored(self, refusal).await;
            }
            Err(e) => return Err(e),
        };
        for (statement, takes_version) in deletions(&self.layout) {
            let query = sqlx::query(&statement).bind(aggregate_id).bind(aggregate_type);
            let query = match takes_version {
                true => query.bind(expected),
                false => query,
            };
            query.execute(&mut *tx).await.map_err(|e| query_error(&what, e))?;
        }
        tx.commit().await.map_err(|e| query_error(&what, e))?;
        Ok(appended)
    }

    async fn archive_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        before_version: u64,
    ) -> Result<u64> {
        // A stream's version only grows (a deletion too appends), so the bound checked now
        // still holds when the rows move.
        let version = self.stream_version(aggregate_id, aggregate_type).await?;
        crate::lifecycle::check_archive_bound(aggregate_id, aggregate_type, before_version, version)?;
        let layout = &self.layout;
        self.move_stream(
            aggregate_id,
            aggregate_type,
            before_version,
            (&layout.events, &layout.archived_events),
        )
        .await
    }

    async fn restore_stream(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let layout = &self.layout;
        self.move_stream(
            aggregate_id,
            aggregate_type,
            i64::MAX as u64,
            (&layout.archived_events, &layout.events),
        )
        .await
    }

    async fn archived(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE aggregate_id = $1 AND aggregate_type = $2",
            self.layout.archived_events
        ))
        .bind(aggregate_id)
        .bind(aggregate_type)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            query_error(
                &format!("cannot count the archived events of {aggregate_type} {aggregate_id}"),
                e,
            )
        })?;
        Ok(u64::try_from(count).unwrap_or_default())
    }
}
