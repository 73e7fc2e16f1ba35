//! The event store: the contract's methods, each handed to the module that does its job
//! (statements in `sql`, appends in `append`, reads in `read`, group commit in `group`, joint
//! statements in `joint`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream;
use uuid::Uuid;

use super::append::With;
use super::read::{version_of, Loader, Reader};
use super::{group, joint, query_error, PostgresEventStore, PostgresSnapshotStore};
use crate::abilities::{AppendSignal, RequestIndex, SliceFeed, StreamListing};
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch, EventStore, EventStream, FeedHead, FeedHolder};
use crate::request::{
    recorded, request_of, validate_refusal, Fingerprint, RequestId, RequestOutcome, RequestRecord,
};
use crate::slice::{SliceCount, SliceParts, SliceRange};
use crate::snapshot::JointSnapshots;

impl PostgresEventStore {
    /// The oldest running transaction that announced an append, which holds the feed back;
    /// `None` if none runs now.
    async fn feed_holder(&self) -> Result<Option<FeedHolder>> {
        let holder: Option<(Option<i32>, Option<String>, Option<f64>)> = sqlx::query_as(&self.sql.holder)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| query_error("cannot find what holds the feed back", e))?;
        Ok(holder.map(|(pid, database, age)| {
            FeedHolder::new(
                pid.and_then(|pid| u32::try_from(pid).ok()),
                database,
                age.filter(|age| age.is_finite() && *age >= 0.0)
                    .map(std::time::Duration::from_secs_f64),
            )
        }))
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        if events.len() == 1 {
            return self.append_one(batch).await;
        }
        if events.len() <= group::MAX_GROUPED_SAVE {
            return self.append_batch(batch).await;
        }
        self.append_in(&self.sql.append, batch, With::Nothing)
            .await
            .map(|(appended, _)| appended)
    }

    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        let Ok(after) = i64::try_from(after_version) else {
            return Box::pin(stream::empty());
        };
        Reader::of_stream(self, aggregate_id, aggregate_type, after).into_stream()
    }

    fn load_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        let Ok(after) = i64::try_from(after_version) else {
            return Box::pin(stream::empty());
        };
        Loader::stream(self, aggregate_id, aggregate_type, after)
    }

    async fn position_of(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        version: u64,
    ) -> Result<Option<u64>> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        let position: Option<i64> = sqlx::query_scalar(&self.sql.position_of)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!(
                        "cannot read the position of {aggregate_type} {aggregate_id} at version {version}"
                    ),
                    e,
                )
            })?;
        position
            .map(|p| {
                u64::try_from(p)
                    .map_err(|_| Error::corrupt(self.sql.table.clone(), format!("position {p} is negative")))
            })
            .transpose()
    }

    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let version: i64 = sqlx::query_scalar(&self.sql.stream_version)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot read the version of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        version_of(version, &self.sql.table)
    }

    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        let Ok(after) = i64::try_from(after_position) else {
            return Box::pin(stream::empty());
        };
        Reader::new(self, None, after).into_stream()
    }

    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        let after = i64::try_from(after_position).unwrap_or(i64::MAX);
        let (last, count, held): (Option<i64>, i64, i64) = sqlx::query_as(&self.sql.head)
            .bind(after)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| query_error("cannot read the head of the event log", e))?;
        let position = match last {
            Some(last) => version_of(last, &self.sql.table)?,
            None => after_position,
        };
        let head = FeedHead::new(position, version_of(count, &self.sql.table)?);
        if held == 0 {
            return Ok(head);
        }
        Ok(head.with_held_back(version_of(held, &self.sql.table)?, self.feed_holder().await?))
    }
}

#[async_trait]
impl SliceFeed for PostgresEventStore {
    async fn slice_count(&self) -> Result<SliceCount> {
        self.read_slice_count().await
    }

    async fn feed_head(&self, range: SliceRange, after_position: u64) -> Result<FeedHead> {
        self.slice_count().await?.check(range)?;
        self.head(after_position).await
    }

    async fn parts(&self) -> Result<SliceParts> {
        Ok(SliceParts::whole(self.slice_count().await?))
    }

    fn read_slices(&self, range: SliceRange, after_position: u64) -> EventStream<'_> {
        super::read::slices(self, range, after_position)
    }
}

#[async_trait]
impl StreamListing for PostgresEventStore {
    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            // A deleted stream holds its tombstone alone: left out.
            "SELECT aggregate_id, max(aggregate_version) FROM {}
             WHERE aggregate_type = $1 AND event_type <> '{}' GROUP BY aggregate_id",
            self.sql.table,
            crate::lifecycle::DELETED
        ))
        .bind(aggregate_type)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot list the streams of {aggregate_type}"), e))?;
        rows.into_iter()
            .map(|(id, version)| Ok((id, version_of(version, &self.sql.table)?)))
            .collect()
    }
}

#[async_trait]
impl RequestIndex for PostgresEventStore {
    async fn find_request(&self, request_id: &RequestId) -> Result<Option<RequestRecord>> {
        type Row = (
            String,
            Uuid,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            DateTime<Utc>,
        );
        let row: Option<Row> = sqlx::query_as(&self.sql.request)
            .bind(request_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| query_error(&format!("cannot look up request {request_id}"), e))?;
        let Some((aggregate_type, aggregate_id, fingerprint, version, position, refusal, recorded_at)) = row
        else {
            return Ok(None);
        };
        let fingerprint = fingerprint.map(Fingerprint::from_stored);
        let record = match (version, position, refusal) {
            (Some(version), Some(position), None) => RequestRecord::executed(
                request_id.clone(),
                &aggregate_type,
                aggregate_id,
                fingerprint,
                version_of(version, &self.sql.table)?,
                version_of(position, &self.sql.table)?,
                recorded_at,
            ),
            (None, None, Some(reason)) => RequestRecord::refused(
                request_id.clone(),
                &aggregate_type,
                aggregate_id,
                fingerprint,
                reason,
            )
            .recorded_at(recorded_at),
            _ => {
                return Err(Error::corrupt(
                    format!("the record of request {request_id}"),
                    "it holds neither an executed outcome (version and position) nor a refusal",
                ))
            }
        };
        Ok(Some(record))
    }

    async fn append_with_request(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
        fingerprint: Option<Fingerprint>,
    ) -> Result<Appended> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        request_of(events)?;
        self.append_in(&self.sql.append_request, batch, With::Request(fingerprint))
            .await
            .map(|(appended, _)| appended)
    }

    async fn record_refusal(&self, refusal: &RequestRecord) -> Result<RequestRecord> {
        validate_refusal(refusal)?;
        let RequestOutcome::Refused { reason } = &refusal.outcome else {
            unreachable!("validate_refusal accepts refusals only");
        };
        sqlx::query(&self.sql.record_refusal)
            .bind(refusal.request_id.as_str())
            .bind(&refusal.aggregate_type)
            .bind(refusal.aggregate_id)
            .bind(refusal.fingerprint.map(Fingerprint::to_stored))
            .bind(reason)
            .bind(refusal.recorded_at)
            .execute(&self.pool)
            .await
            .map_err(|e| query_error(&format!("cannot record the refusal of {}", refusal.request_id), e))?;
        recorded(refusal, self.find_request(&refusal.request_id).await?)
    }

    async fn forget_refusals(
        &self,
        request_id: Option<&RequestId>,
        recorded_before: DateTime<Utc>,
    ) -> Result<u64> {
        let deleted = sqlx::query(&self.sql.forget_refusals)
            .bind(recorded_before)
            .bind(request_id.map(RequestId::as_str))
            .execute(&self.pool)
            .await
            .map_err(|e| query_error("cannot forget refusals", e))?;
        Ok(deleted.rows_affected())
    }
}

impl PostgresEventStore {
    /// The signal raised after each append to this database, by this process or another
    /// (through `LISTEN`); the first call starts listening.
    pub fn append_signal(&self) -> AppendSignal {
        self.notifier.signal(&self.pool)
    }

    /// `snapshots` with the statements that read and write its snapshots together with this
    /// store's events, if the two share a database and a schema layout that allows it
    /// (`None` otherwise): for
    /// [`Repository::with_joint_snapshots`](crate::Repository::with_joint_snapshots).
    pub fn joint_snapshots(&self, snapshots: &PostgresSnapshotStore) -> Option<JointSnapshots> {
        let reader = joint::Reader::new(self, snapshots)?;
        let writer = joint::Writer::new(self, snapshots)?;
        Some(JointSnapshots::new(
            Arc::new(snapshots.clone()),
            Arc::new(reader),
            Arc::new(writer),
        ))
    }
}
