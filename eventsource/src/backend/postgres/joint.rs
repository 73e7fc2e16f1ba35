//! A load with a snapshot in one statement: the snapshot row and the first page of the events
//! from its version on, when the event and snapshot stores share a pool.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::events::{self, COLUMNS};
use super::{query_error, PostgresEventStore, PostgresSnapshotStore};
use crate::error::Result;
use crate::snapshot::{JointSnapshotRead, SnapshotAndEvents};

/// Reads a snapshot and the events from its version on, in one round trip.
pub(super) struct Reader {
    events: PostgresEventStore,
    snapshots: PostgresSnapshotStore,
    sql: String,
}

impl Reader {
    /// A joint reader of the two stores, if they share a pool, so that one statement sees
    /// both tables as each store would. The tables may be in different schemas.
    pub(super) fn new(events: &PostgresEventStore, snapshots: &PostgresSnapshotStore) -> Option<Self> {
        if !Arc::ptr_eq(&events.pool.connect_options(), &snapshots.pool.connect_options()) {
            return None;
        }
        let (snapshot_table, event_table) = (&snapshots.layout.snapshots, &events.layout.events);
        // One row per event of the first page (its columns first, where the event reader
        // expects them), or one row with no event when the stream has not reached the
        // snapshot's version; each with the snapshot's columns, the state only on the first
        // row, so it crosses the wire once.
        let sql = format!(
            "SELECT e.*, s.version, s.schema_version, s.created_at, s.created_at_ns,
                CASE WHEN row_number() OVER (ORDER BY e.aggregate_version) = 1
                    THEN s.state::text END AS state
             FROM {snapshot_table} s
             LEFT JOIN LATERAL (
                SELECT {COLUMNS} FROM {event_table}
                WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version >= s.version
                ORDER BY aggregate_version LIMIT $3
             ) e ON true
             WHERE s.aggregate_id = $1 AND s.aggregate_type = $2
             ORDER BY e.aggregate_version"
        );
        Some(Self {
            events: events.clone(),
            snapshots: snapshots.clone(),
            sql,
        })
    }
}

#[async_trait]
impl JointSnapshotRead for Reader {
    async fn read<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
    ) -> Result<Option<SnapshotAndEvents<'a>>> {
        let rows = sqlx::query(&self.sql)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(self.events.page_size)
            .fetch_all(&self.events.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot read the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let snapshot = self.snapshots.decode(first, aggregate_id, aggregate_type)?;
        // In range: the version came from a BIGINT. The reader checks that the first event is
        // at the snapshot's version, as a read of the stream from there would.
        let after = snapshot.version as i64 - 1;
        let mut reader = events::Reader::of_stream(&self.events, aggregate_id, aggregate_type, after);
        let page = if has_event(first) {
            reader.decode_page(&rows)
        } else {
            reader.end();
            Vec::new()
        };
        Ok(Some(SnapshotAndEvents {
            snapshot,
            events: Box::pin(stream::iter(page).chain(reader.into_stream())),
        }))
    }
}

/// Whether the row carries an event (the join found one).
fn has_event(row: &PgRow) -> bool {
    matches!(row.try_get::<Option<i64>, _>("position"), Ok(Some(_)))
}
