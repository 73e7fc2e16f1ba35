//! A load with a snapshot in one statement (the snapshot row and the first page of the events
//! from its version on), and a save with its snapshot in one statement, when the event and
//! snapshot stores share a pool.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use sqlx::postgres::PgRow;
use sqlx::{Column, Row, ValueRef};
use uuid::Uuid;

use super::append::With;
use super::read::{self, at};
use super::sql::{append_sql, COLUMNS};
use super::{query_error, PostgresEventStore, PostgresSnapshotStore};
use crate::error::Result;
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch, EventStore};
use crate::snapshot::{
    validate_snapshot, JointSnapshotRead, JointSnapshotWrite, Snapshot, SnapshotAndEvents, SnapshotStore,
};

/// Reads a snapshot and the events from its version on, in one round trip.
pub(super) struct Reader {
    events: PostgresEventStore,
    snapshots: PostgresSnapshotStore,
    sql: String,
}

/// Whether the two stores share a pool, so that one statement sees both tables as each store
/// would. The tables may be in different schemas.
fn share_a_pool(events: &PostgresEventStore, snapshots: &PostgresSnapshotStore) -> bool {
    Arc::ptr_eq(&events.pool.connect_options(), &snapshots.pool.connect_options())
}

impl Reader {
    /// A joint reader of the two stores, if they share a pool.
    pub(super) fn new(events: &PostgresEventStore, snapshots: &PostgresSnapshotStore) -> Option<Self> {
        if !share_a_pool(events, snapshots) {
            return None;
        }
        let (snapshot_table, event_table) = (&snapshots.layout.snapshots, &events.layout.events);
        // One row per event of the first page (its columns first, where the event reader
        // expects them), or one row with no event when the stream has not reached the
        // snapshot's version; each with the snapshot's columns, and the state only on the row
        // of the snapshot's version (or the row with no event), so it crosses the wire once.
        // No ORDER BY: sorting wide rows would cost the server more than the rest of the
        // statement, and the join already yields the events in the order of the index scan;
        // `read` puts them in order should a plan ever not.
        let sql = format!(
            "SELECT e.*, s.version, s.schema_version, s.created_at, s.created_at_ns,
                s.event_id AS snapshot_event_id,
                CASE WHEN e.aggregate_version IS NULL OR e.aggregate_version = s.version
                    THEN s.state::text END AS state
             FROM (
                SELECT * FROM {snapshot_table}
                WHERE aggregate_id = $1 AND aggregate_type = $2 AND schema_version <= $4
                ORDER BY schema_version DESC LIMIT 1
             ) s
             LEFT JOIN LATERAL (
                SELECT {COLUMNS} FROM {event_table}
                WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version >= s.version
                ORDER BY aggregate_version LIMIT $3
             ) e ON true"
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
        schema_version: u32,
    ) -> Result<Option<SnapshotAndEvents<'a>>> {
        let mut rows = sqlx::query(&self.sql)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(self.events.page_size)
            .bind(i64::from(schema_version))
            .fetch_all(&self.events.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot read the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        if !rows.is_sorted_by_key(version) {
            rows.sort_by_cached_key(version);
        }
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        if has_event(first) && !has_state(first) {
            // The stream has events after the snapshot's version but not the event at it (a
            // gap, or a snapshot at version 0): read as two statements, as without a joint
            // reader, so that the repository sees and reports the same thing.
            let Some(snapshot) = self
                .snapshots
                .get_snapshot(aggregate_id, aggregate_type, schema_version)
                .await?
            else {
                return Ok(None);
            };
            let after = snapshot.version.saturating_sub(1);
            return Ok(Some(SnapshotAndEvents {
                snapshot,
                events: self.events.read_stream(aggregate_id, aggregate_type, after),
            }));
        }
        let snapshot = self.snapshots.decode(first, aggregate_id, aggregate_type)?;
        // In range: the version came from a BIGINT. The reader checks that the first event is
        // at the snapshot's version and that the rest follow it one by one.
        let after = snapshot.version as i64 - 1;
        let mut reader = read::Reader::of_stream(&self.events, aggregate_id, aggregate_type, after);
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

/// Appends a batch and stores its snapshot, in one statement.
pub(super) struct Writer {
    events: PostgresEventStore,
    sql: String,
}

impl Writer {
    /// A joint writer of the two stores, if they share a pool.
    pub(super) fn new(events: &PostgresEventStore, snapshots: &PostgresSnapshotStore) -> Option<Self> {
        share_a_pool(events, snapshots).then(|| Self {
            events: events.clone(),
            sql: append_sql(&events.layout.events, Some(&snapshots.layout.snapshots), None),
        })
    }
}

#[async_trait]
impl JointSnapshotWrite for Writer {
    async fn append_with_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
        snapshot: &Snapshot,
    ) -> Result<(Appended, bool)> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        validate_snapshot(snapshot)?;
        self.events
            .append_in(&self.sql, batch, With::Snapshot(snapshot))
            .await
    }
}

/// The version of the row's event, if it has one that decodes (for ordering only: the
/// reader checks the column's type when it decodes the page).
fn version(row: &PgRow) -> Option<i64> {
    row.try_get_unchecked(at::AGGREGATE_VERSION).ok().flatten()
}

/// Whether the row carries an event (the join found one), whatever the column's type.
fn has_event(row: &PgRow) -> bool {
    is_set(row, at::POSITION)
}

/// Whether the row carries the snapshot's state (it is the row of the snapshot's version).
fn has_state(row: &PgRow) -> bool {
    row.try_column("state")
        .is_ok_and(|column| is_set(row, column.ordinal()))
}

/// Whether the column is there and not NULL.
fn is_set(row: &PgRow, index: usize) -> bool {
    row.try_get_raw(index).is_ok_and(|value| !value.is_null())
}
