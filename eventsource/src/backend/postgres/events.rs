//! The event store: appends checked by the database, reads in keyset-paginated pages.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::{stream, StreamExt};
use sqlx::error::ErrorKind;
use sqlx::postgres::{PgDatabaseError, PgRow};
use sqlx::{Column, Row};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::group::{Group, Outcome, Row as OneRow, Turn};
use super::{
    join_timestamp, joint, query_error, split_timestamp, to_bigint, Layout, PostgresEventStore,
    PostgresSnapshotStore, BACKEND,
};
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::{
    acknowledge_stored_append, validate_batch, AppendSignal, Appended, EventStore, EventStream, FeedHead,
    FeedHolder,
};
use crate::snapshot::{JointSnapshotRead, JointSnapshotWrite, Snapshot};

/// The name of the unique constraint on event ids, as created by the migration.
const EVENT_ID_KEY: &str = "eventsource_events_event_id_key";

/// A position is the appending transaction's id shifted left by this many bits, plus the
/// event's place in its batch (from 1): positions of one append are consecutive, and those of
/// transactions are ordered by transaction id. A batch holds fewer than 2^20 events; a 64-bit
/// position leaves 43 bits of transaction ids, which lasts 27 years at 10,000 writing
/// transactions a second on the whole server.
pub(super) const POSITION_SHIFT: u32 = 20;

/// The largest batch one append can store.
const MAX_BATCH: usize = (1 << POSITION_SHIFT) - 1;

/// The columns a read selects, as [`Reader`] decodes them.
pub(super) const COLUMNS: &str = "position, event_id, event_type, event_version, \
    aggregate_version, occurred_at, occurred_at_ns, correlation_id, causation_id, \
    metadata::text AS metadata, payload::text AS payload, request_id";

/// The columns a load reads: what a replay uses, in the order [`Loader`] decodes them.
const LOAD_COLUMNS: &str = "aggregate_version, event_id, event_type, event_version, payload::text AS payload";

/// The statements of the event store, built once for its table.
#[derive(Debug)]
pub(super) struct Sql {
    table: String,
    append: String,
    append_one: String,
    pub(super) group: String,
    stream_version: String,
    position_of: String,
    read_stream: String,
    load_stream: String,
    read_all: String,
    head: String,
    holder: String,
    request: String,
}

/// The append statement on `events`; with `snapshots`, it also stores a snapshot ($15 to
/// $20) in the same statement, only when the batch goes in.
pub(super) fn append_sql(events: &str, snapshots: Option<&str>) -> String {
    // One statement, so one transaction: the batch goes in only if the stream is at the
    // expected version ($3) when the statement starts, and the unique constraint on
    // (aggregate_id, aggregate_type, aggregate_version) fails it if a concurrent writer
    // commits the same version first. Arrays carry the batch, so any number of events is
    // one statement with fourteen parameters.
    let mut sql = format!(
        "WITH head AS (
                    SELECT coalesce(max(aggregate_version), 0) AS version FROM {events}
                    WHERE aggregate_id = $1 AND aggregate_type = $2
                ), inserted AS (
                    INSERT INTO {events} (position, event_id, event_type, event_version,
                        aggregate_id, aggregate_type, aggregate_version, occurred_at,
                        occurred_at_ns, correlation_id, causation_id, metadata, payload, request_id)
                    SELECT (pg_current_xact_id()::text::bigint << {POSITION_SHIFT}) + e.n,
                        e.event_id, e.event_type, e.event_version, $1, $2, e.aggregate_version,
                        e.occurred_at, e.occurred_at_ns, e.correlation_id, e.causation_id,
                        e.metadata::json, e.payload::json, e.request_id
                    FROM unnest($4::uuid[], $5::text[], $6::bigint[], $7::bigint[],
                                $8::timestamptz[], $9::integer[], $10::uuid[], $11::uuid[],
                                $12::text[], $13::text[], $14::uuid[])
                        WITH ORDINALITY AS e(event_id, event_type, event_version,
                            aggregate_version, occurred_at, occurred_at_ns, correlation_id,
                            causation_id, metadata, payload, request_id, n)
                    WHERE (SELECT version FROM head) = $3
                    ORDER BY e.n
                    RETURNING position
                )"
    );
    if let Some(snapshots) = snapshots {
        // The snapshot store's upsert (never replacing a newer snapshot), on the same
        // condition as the batch.
        sql.push_str(&format!(
            ", snapshot AS (
                INSERT INTO {snapshots} AS s (aggregate_id, aggregate_type, version, state,
                    schema_version, created_at, created_at_ns, event_id)
                SELECT $1, $2, $15, $16::json, $17, $18, $19, $20
                WHERE (SELECT version FROM head) = $3
                ON CONFLICT (aggregate_id, aggregate_type, schema_version) DO UPDATE
                SET version = EXCLUDED.version, state = EXCLUDED.state,
                    event_id = EXCLUDED.event_id, created_at = EXCLUDED.created_at,
                    created_at_ns = EXCLUDED.created_at_ns
                WHERE s.version <= EXCLUDED.version
            )"
        ));
    }
    sql.push_str(
        "
                SELECT (SELECT version FROM head), (SELECT count(*) FROM inserted),
                    (SELECT max(position) FROM inserted)",
    );
    sql
}

impl Sql {
    pub(super) fn new(layout: &Layout) -> Self {
        let events = &layout.events;
        let feed_bound = &layout.feed_bound;
        Self {
            table: events.clone(),
            append: append_sql(events, None),
            group: super::group::group_sql(events),
            // One event (the most common batch) without arrays: it goes in only if the stream
            // is at the expected version ($3) when the statement starts, and a concurrent
            // writer that commits version $3 + 1 first leaves it out (no row: a conflict,
            // without an error).
            append_one: format!(
                "INSERT INTO {events} (position, event_id, event_type, event_version,
                    aggregate_id, aggregate_type, aggregate_version, occurred_at,
                    occurred_at_ns, correlation_id, causation_id, metadata, payload, request_id)
                 SELECT (pg_current_xact_id()::text::bigint << {POSITION_SHIFT}) + 1,
                    $4, $5, $6, $1, $2, $3 + 1, $7, $8, $9, $10, $11::json, $12::json, $13
                 WHERE (SELECT coalesce(max(aggregate_version), 0) FROM {events}
                    WHERE aggregate_id = $1 AND aggregate_type = $2) = $3
                 ON CONFLICT (aggregate_id, aggregate_type, aggregate_version) DO NOTHING
                 RETURNING position"
            ),
            stream_version: format!(
                "SELECT coalesce(max(aggregate_version), 0) FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2"
            ),
            position_of: format!(
                "SELECT position FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version = $3"
            ),
            // The whole stream in one statement, rows streamed as the caller takes them.
            load_stream: format!(
                "SELECT {LOAD_COLUMNS} FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 ORDER BY aggregate_version"
            ),
            read_stream: format!(
                "SELECT {COLUMNS} FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 ORDER BY aggregate_version LIMIT $4"
            ),
            // Only positions below every appending transaction still running are final: one
            // with a lower id than an event already read would otherwise commit later, below
            // it (see the schema's step 7).
            read_all: format!(
                "SELECT {COLUMNS}, aggregate_id, aggregate_type FROM {events}
                 WHERE position > $1 AND position < (SELECT {feed_bound}(pg_current_snapshot()))
                 ORDER BY position LIMIT $2"
            ),
            request: format!(
                "SELECT max(aggregate_version) FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND request_id = $3"
            ),
            // What the feed shows after $1, and what is stored there but held back.
            head: format!(
                "WITH bound AS MATERIALIZED (SELECT {feed_bound}(pg_current_snapshot()) AS position)
                 SELECT max(e.position) FILTER (WHERE e.position < b.position),
                     count(*) FILTER (WHERE e.position < b.position),
                     count(*) FILTER (WHERE e.position >= b.position)
                 FROM {events} e, bound b WHERE e.position > $1"
            ),
            // The oldest transaction that announced an append and still runs.
            holder: {
                let (class, key) = layout.append_lock();
                format!(
                    "SELECT a.pid, a.datname::text,
                         extract(epoch FROM clock_timestamp() - a.xact_start)::float8
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE l.locktype = 'advisory' AND l.classid = {class} AND l.objid = {key}
                       AND l.objsubid = 2
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                     ORDER BY a.xact_start LIMIT 1"
                )
            },
        }
    }
}

/// A batch as the columns of the append statement.
#[derive(Default)]
struct Columns<'a> {
    event_id: Vec<Uuid>,
    event_type: Vec<&'a str>,
    event_version: Vec<i64>,
    aggregate_version: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
    occurred_at_ns: Vec<i32>,
    correlation_id: Vec<Option<Uuid>>,
    causation_id: Vec<Option<Uuid>>,
    metadata: Vec<Option<String>>,
    payload: Vec<&'a str>,
    request_id: Vec<Option<Uuid>>,
}

/// The event's metadata as the JSON text a statement binds.
fn metadata_text(event: &EventEnvelope) -> Result<Option<String>> {
    event
        .metadata
        .as_ref()
        .map(|value| {
            serde_json::to_string(value).map_err(|e| Error::Serialization {
                action: "serialize",
                what: format!("metadata of event {}", event.event_id),
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// A one-event append checked and encoded once, for the group or for a statement of its own.
fn one_row(
    aggregate_id: Uuid,
    aggregate_type: &str,
    expected_version: u64,
    event: &EventEnvelope,
) -> Result<OneRow> {
    validate_batch(
        aggregate_id,
        aggregate_type,
        expected_version,
        std::slice::from_ref(event),
    )?;
    let expected = to_bigint(expected_version, "expected version")?;
    Ok(OneRow::of(
        event,
        expected,
        metadata_text(event)?,
        split_timestamp(event.occurred_at),
    ))
}

impl<'a> Columns<'a> {
    fn of(events: &'a [EventEnvelope]) -> Result<Self> {
        let mut columns = Columns::default();
        for event in events {
            let (micros, nanos) = split_timestamp(event.occurred_at);
            let metadata = metadata_text(event)?;
            columns.event_id.push(event.event_id);
            columns.event_type.push(&event.event_type);
            columns.event_version.push(event.event_version.into());
            columns
                .aggregate_version
                .push(to_bigint(event.aggregate_version, "aggregate version")?);
            columns.occurred_at.push(micros);
            columns.occurred_at_ns.push(nanos);
            columns.correlation_id.push(event.correlation_id);
            columns.causation_id.push(event.causation_id);
            columns.metadata.push(metadata);
            columns.payload.push(&event.payload);
            columns.request_id.push(event.request_id);
        }
        Ok(columns)
    }
}

impl PostgresEventStore {
    /// Appends the batch with the append statement `sql`, and with a snapshot when `sql` is
    /// the statement that stores one too ([`append_sql`] with a snapshot table); whether this
    /// statement stored the batch (and so the snapshot), not an earlier try of it.
    pub(super) async fn append_in(
        &self,
        sql: &str,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
        snapshot: Option<&Snapshot>,
    ) -> Result<(Appended, bool)> {
        validate_batch(aggregate_id, aggregate_type, expected_version, events)?;

        if events.len() > MAX_BATCH {
            return Err(Error::InvalidInput(format!(
                "a PostgreSQL append stores at most {MAX_BATCH} events, not {}; append them in several batches",
                events.len()
            )));
        }
        let expected = to_bigint(expected_version, "expected version")?;
        let c = Columns::of(events)?;
        let query = sqlx::query_as::<_, (i64, i64, Option<i64>)>(sql)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(expected)
            .bind(&c.event_id)
            .bind(&c.event_type)
            .bind(&c.event_version)
            .bind(&c.aggregate_version)
            .bind(&c.occurred_at)
            .bind(&c.occurred_at_ns)
            .bind(&c.correlation_id)
            .bind(&c.causation_id)
            .bind(&c.metadata)
            .bind(&c.payload)
            .bind(&c.request_id);
        let result = match snapshot {
            None => query.fetch_one(&self.pool).await,
            Some(snapshot) => {
                let (created_at, created_at_ns) = split_timestamp(snapshot.created_at);
                query
                    .bind(to_bigint(snapshot.version, "snapshot version")?)
                    .bind(&snapshot.state)
                    .bind(i64::from(snapshot.schema_version))
                    .bind(created_at)
                    .bind(created_at_ns)
                    .bind(snapshot.event_id)
                    .fetch_one(&self.pool)
                    .await
            }
        };
        let conflict = |actual: u64| Error::Conflict {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            expected: expected_version,
            actual,
        };
        match result {
            Ok((_, inserted, last)) if inserted == events.len() as i64 => {
                self.notifier.appended(&self.pool);
                let appended = Appended {
                    version: expected_version + events.len() as u64,
                    position: last.and_then(|p| u64::try_from(p).ok()),
                };
                Ok((appended, true))
            }
            Ok((head, 0, _)) if head != expected => {
                let refusal = conflict(version_of(head, &self.sql.table)?);
                acknowledge_stored_append(
                    self,
                    aggregate_id,
                    aggregate_type,
                    expected_version,
                    events,
                    refusal,
                )
                .await
                .map(|appended| (appended, false))
            }
            Ok((head, inserted, _)) => Err(Error::corrupt(
                self.sql.table.clone(),
                format!(
                    "an append of {} events at version {head} inserted {inserted}",
                    events.len()
                ),
            )),
            Err(e) => self
                .refused(e, aggregate_id, aggregate_type, expected_version, events)
                .await
                .map(|appended| (appended, false)),
        }
    }

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

    /// Appends one event with the others that arrive meanwhile (group commit, see
    /// [`super::group`]); alone when the group's statement failed or no runtime runs one.
    async fn append_one(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        event: &EventEnvelope,
    ) -> Result<Appended> {
        let events = std::slice::from_ref(event);
        let row = one_row(aggregate_id, aggregate_type, expected_version, event)?;
        let outcome = match Group::append(self, row).await {
            // While it runs, the appends that arrive queue for the next group: bounded, so that a
            // hanging statement does not hold them.
            Turn::Alone(_leading, row) => return self.append_alone_bounded(&row, event).await,
            Turn::Grouped(outcome) => outcome,
        };
        match outcome {
            Outcome::Stored(position) => Ok(Appended {
                version: expected_version + 1,
                position: u64::try_from(position).ok(),
            }),
            Outcome::LeftOut => {
                self.not_stored(aggregate_id, aggregate_type, expected_version, events)
                    .await
            }
            // Rare: the group's statement failed; the row went with it, so it is made again.
            Outcome::Failed => {
                let row = one_row(aggregate_id, aggregate_type, expected_version, event)?;
                self.append_alone_bounded(&row, event).await
            }
        }
    }

    /// [`append_alone`](Self::append_alone) within the store's append timeout; past it, a
    /// transient error that leaves the outcome unknown (the statement may still commit).
    async fn append_alone_bounded(&self, row: &OneRow, event: &EventEnvelope) -> Result<Appended> {
        match tokio::time::timeout(self.append_timeout, self.append_alone(row, event)).await {
            Ok(appended) => appended,
            Err(elapsed) => Err(Error::store(
                BACKEND,
                format!(
                    "the append of event {} to {} {} did not finish within {:?}: it may or may \
                     not be stored, and making it again is safe",
                    event.event_id, row.aggregate_type, row.aggregate_id, self.append_timeout
                ),
                elapsed,
            )),
        }
    }

    /// The refusal of an append that was not stored: its stream is not at its expected
    /// version (a conflict, with the stream's version now), unless the batch was stored by an
    /// earlier try of the same append.
    async fn not_stored(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        let refusal = Error::Conflict {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            expected: expected_version,
            actual: self.stream_version(aggregate_id, aggregate_type).await?,
        };
        acknowledge_stored_append(
            self,
            aggregate_id,
            aggregate_type,
            expected_version,
            events,
            refusal,
        )
        .await
    }

    /// Appends one event on its own, in a statement without arrays, from its checked row.
    async fn append_alone(&self, row: &OneRow, event: &EventEnvelope) -> Result<Appended> {
        let (aggregate_id, aggregate_type) = (row.aggregate_id, &*row.aggregate_type);
        // In range: `one_row` converted it from a u64.
        let expected_version = row.expected as u64;
        let events = std::slice::from_ref(event);
        let stored = sqlx::query_scalar::<_, i64>(&self.sql.append_one)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(row.expected)
            .bind(row.event_id)
            .bind(&*row.event_type)
            .bind(row.event_version)
            .bind(row.occurred_at)
            .bind(row.occurred_at_ns)
            .bind(row.correlation_id)
            .bind(row.causation_id)
            .bind(&row.metadata)
            .bind(&*row.payload)
            .bind(row.request_id)
            .fetch_optional(&self.pool)
            .await;
        match stored {
            Ok(Some(position)) => {
                self.notifier.appended(&self.pool);
                Ok(Appended {
                    version: expected_version + 1,
                    position: u64::try_from(position).ok(),
                })
            }
            // The stream is not at the expected version, or a concurrent writer came first.
            Ok(None) => {
                self.not_stored(aggregate_id, aggregate_type, expected_version, events)
                    .await
            }
            Err(e) => {
                self.refused(e, aggregate_id, aggregate_type, expected_version, events)
                    .await
            }
        }
    }

    /// The outcome of an append whose statement failed: a unique key taken by a transaction
    /// that committed while it ran is an event id (possibly this very batch's, sent before
    /// and cancelled or not answered) or one of its versions (a concurrent writer), and the
    /// batch may be stored already; anything else is a store error.
    async fn refused(
        &self,
        error: sqlx::Error,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        let what = || format!("cannot append to {aggregate_type} {aggregate_id}");
        let db = match error {
            sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => db,
            e => return Err(query_error(&what(), e)),
        };
        let refusal = if db.constraint() == Some(EVENT_ID_KEY) {
            let detail = db
                .try_downcast_ref::<PgDatabaseError>()
                .and_then(|pg| pg.detail());
            Error::InvalidInput(format!(
                "{}: an event id of the batch is already stored ({})",
                what(),
                detail.unwrap_or("duplicate event_id")
            ))
        } else {
            return self
                .not_stored(aggregate_id, aggregate_type, expected_version, events)
                .await;
        };
        acknowledge_stored_append(
            self,
            aggregate_id,
            aggregate_type,
            expected_version,
            events,
            refusal,
        )
        .await
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
    ) -> Result<u64> {
        self.append_with_position(aggregate_id, aggregate_type, expected_version, events)
            .await
            .map(|appended| appended.version)
    }

    async fn append_with_position(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        if let [event] = events {
            return self
                .append_one(aggregate_id, aggregate_type, expected_version, event)
                .await;
        }
        self.append_in(
            &self.sql.append,
            aggregate_id,
            aggregate_type,
            expected_version,
            events,
            None,
        )
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
        let rows = sqlx::query(&self.sql.load_stream)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(after)
            .fetch(&self.pool);
        let mut loader = Loader::new(&self.sql.table, aggregate_id, aggregate_type, after);
        Box::pin(rows.map(move |row| match row {
            Ok(row) => loader.decode(&row),
            Err(e) => Err(query_error(
                &format!("cannot read stream {aggregate_type} {aggregate_id}"),
                e,
            )),
        }))
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

    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT aggregate_id, max(aggregate_version) FROM {}
             WHERE aggregate_type = $1 GROUP BY aggregate_id",
            self.sql.table
        ))
        .bind(aggregate_type)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot list the streams of {aggregate_type}"), e))?;
        rows.into_iter()
            .map(|(id, version)| Ok((id, version_of(version, &self.sql.table)?)))
            .collect()
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

    async fn request_version(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        request_id: Uuid,
    ) -> Result<Option<u64>> {
        let found: Option<i64> = sqlx::query_scalar(&self.sql.request)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(request_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot look up a request of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        found.map(|v| version_of(v, &self.sql.table)).transpose()
    }

    fn append_signal(&self) -> Option<AppendSignal> {
        Some(self.notifier.signal(&self.pool))
    }

    fn joint_snapshot_reader(&self, snapshots: &dyn Any) -> Option<Arc<dyn JointSnapshotRead>> {
        let snapshots = snapshots.downcast_ref::<PostgresSnapshotStore>()?;
        joint::Reader::new(self, snapshots).map(|reader| Arc::new(reader) as _)
    }

    fn joint_snapshot_writer(&self, snapshots: &dyn Any) -> Option<Arc<dyn JointSnapshotWrite>> {
        let snapshots = snapshots.downcast_ref::<PostgresSnapshotStore>()?;
        joint::Writer::new(self, snapshots).map(|writer| Arc::new(writer) as _)
    }
}

fn version_of(version: i64, table: &str) -> Result<u64> {
    u64::try_from(version).map_err(|_| Error::corrupt(table, format!("negative stream version {version}")))
}

/// Reads one stream by version, or every stream by position, a page per statement.
///
/// Each page is a keyset query (`> last seen ORDER BY ... LIMIT`) on its own pooled
/// connection, so no connection is held while the caller works through the events, and a
/// page costs the same however deep into the history it is. While the caller works through
/// a full page, the next one is already being fetched, so the database and the caller work
/// at the same time; a read dropped part way lets that fetch finish and drops its rows.
pub(super) struct Reader {
    store: PostgresEventStore,
    /// The stream read by version; `None` reads every stream by position.
    stream: Option<(Uuid, Arc<str>)>,
    /// The last version (or position) read.
    after: i64,
    names: Names,
    done: bool,
    /// The fetch of the next page, started when the last page was decoded.
    next: Option<JoinHandle<Result<Vec<PgRow>>>>,
}

impl Reader {
    /// A reader of one stream's events after version `after`.
    pub(super) fn of_stream(store: &PostgresEventStore, id: Uuid, aggregate_type: &str, after: i64) -> Self {
        Self::new(store, Some((id, Arc::from(aggregate_type))), after)
    }

    fn new(store: &PostgresEventStore, stream: Option<(Uuid, Arc<str>)>, after: i64) -> Self {
        Self {
            store: store.clone(),
            stream,
            after,
            names: Names::default(),
            done: false,
            next: None,
        }
    }

    /// Ends the read: the stream has no events left to read.
    pub(super) fn end(&mut self) {
        self.done = true;
    }

    /// The events still to read, page by page; none if the last page read was the end.
    pub(super) fn into_stream(self) -> EventStream<'static> {
        let pages = stream::unfold(self, |mut reader| async move {
            if reader.done {
                return None;
            }
            let page = reader.next_page().await;
            Some((stream::iter(page), reader))
        });
        Box::pin(pages.flatten())
    }

    async fn next_page(&mut self) -> Vec<Result<StoredEvent>> {
        let rows = match self.next.take() {
            Some(fetch) => fetch.await.unwrap_or_else(|e| {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                Err(Error::store(BACKEND, "the fetch of a page was lost", e))
            }),
            None => self.fetch().await,
        };
        match rows {
            Ok(rows) => self.decode_page(&rows),
            Err(e) => {
                self.done = true;
                vec![Err(e)]
            }
        }
    }

    /// Fetches the page after the last version (or position) read.
    fn fetch(&self) -> impl Future<Output = Result<Vec<PgRow>>> + Send + 'static {
        let (store, stream, after) = (self.store.clone(), self.stream.clone(), self.after);
        async move {
            let sql = &store.sql;
            match &stream {
                Some((id, aggregate_type)) => sqlx::query(&sql.read_stream)
                    .bind(id)
                    .bind(&**aggregate_type)
                    .bind(after)
                    .bind(store.page_size)
                    .fetch_all(&store.pool)
                    .await
                    .map_err(|e| query_error(&format!("cannot read stream {aggregate_type} {id}"), e)),
                None => sqlx::query(&sql.read_all)
                    .bind(after)
                    .bind(store.page_size)
                    .fetch_all(&store.pool)
                    .await
                    .map_err(|e| query_error("cannot read all events", e)),
            }
        }
    }

    /// Decodes a page of rows that start with [`COLUMNS`], in order; a page shorter than the
    /// page size, or a row that cannot be decoded, ends the read. Otherwise the fetch of the
    /// next page starts.
    pub(super) fn decode_page(&mut self, rows: &[PgRow]) -> Vec<Result<StoredEvent>> {
        self.done = (rows.len() as i64) < self.store.page_size;
        if let Some(Err(reason)) = rows.first().map(|row| self.check_types(row)) {
            self.done = true;
            return vec![Err(Error::corrupt(self.store.sql.table.clone(), reason))];
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match self.decode(row) {
                Ok(event) => events.push(Ok(event)),
                Err(e) => {
                    self.done = true;
                    events.push(Err(e));
                    break;
                }
            }
        }
        if !self.done {
            self.next = Some(tokio::spawn(self.fetch()));
        }
        events
    }

    /// Checks that each column the reader decodes has a type it can decode, once a page: the
    /// rows of a statement share their types, so each value is then decoded unchecked.
    fn check_types(&self, row: &PgRow) -> std::result::Result<(), String> {
        has_type::<i64>(row, at::POSITION)?;
        has_type::<Uuid>(row, at::EVENT_ID)?;
        has_type::<&str>(row, at::EVENT_TYPE)?;
        has_type::<i64>(row, at::EVENT_VERSION)?;
        has_type::<i64>(row, at::AGGREGATE_VERSION)?;
        has_type::<DateTime<Utc>>(row, at::OCCURRED_AT)?;
        has_type::<i32>(row, at::OCCURRED_AT_NS)?;
        has_type::<Uuid>(row, at::CORRELATION_ID)?;
        has_type::<Uuid>(row, at::CAUSATION_ID)?;
        has_type::<&str>(row, at::METADATA)?;
        has_type::<&str>(row, at::PAYLOAD)?;
        has_type::<Uuid>(row, at::REQUEST_ID)?;
        if self.stream.is_none() {
            has_type::<Uuid>(row, at::AGGREGATE_ID)?;
            has_type::<&str>(row, at::AGGREGATE_TYPE)?;
        }
        Ok(())
    }

    /// Decodes one row of a page whose types [`check_types`](Self::check_types) accepted.
    fn decode(&mut self, row: &PgRow) -> Result<StoredEvent> {
        let table = &self.store.sql.table;
        let position: i64 = column(row, at::POSITION).map_err(|e| Error::corrupt(table.clone(), e))?;
        let fail =
            |reason: String| Error::corrupt(format!("event at position {position} in {table}"), reason);
        let aggregate_version: i64 = column(row, at::AGGREGATE_VERSION).map_err(fail)?;
        let (aggregate_id, aggregate_type) = match &self.stream {
            Some((id, aggregate_type)) => {
                if aggregate_version != self.after + 1 {
                    let reason = format!(
                        "the stream {aggregate_type} {id} jumps from version {} to {aggregate_version}",
                        self.after
                    );
                    return Err(fail(reason));
                }
                self.after = aggregate_version;
                (*id, aggregate_type.clone())
            }
            None => {
                self.after = position;
                let aggregate_type: &str = column(row, at::AGGREGATE_TYPE).map_err(fail)?;
                (
                    column(row, at::AGGREGATE_ID).map_err(fail)?,
                    self.names.get(aggregate_type),
                )
            }
        };
        let event_version: i64 = column(row, at::EVENT_VERSION).map_err(fail)?;
        let occurred_at: DateTime<Utc> = column(row, at::OCCURRED_AT).map_err(fail)?;
        let occurred_at_ns: i32 = column(row, at::OCCURRED_AT_NS).map_err(fail)?;
        let metadata: Option<&str> = column(row, at::METADATA).map_err(fail)?;
        let metadata = match metadata {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| fail(format!("metadata: {e}")))?),
            None => None,
        };
        let envelope = EventEnvelope {
            event_id: column(row, at::EVENT_ID).map_err(fail)?,
            event_type: self.names.get(column(row, at::EVENT_TYPE).map_err(fail)?),
            event_version: u32::try_from(event_version)
                .map_err(|_| fail(format!("event version {event_version} is out of range")))?,
            aggregate_id,
            aggregate_type,
            aggregate_version: u64::try_from(aggregate_version)
                .map_err(|_| fail(format!("aggregate version {aggregate_version} is out of range")))?,
            occurred_at: join_timestamp(occurred_at, occurred_at_ns)
                .ok_or_else(|| fail(format!("occurred_at_ns {occurred_at_ns} is out of range")))?,
            correlation_id: column(row, at::CORRELATION_ID).map_err(fail)?,
            causation_id: column(row, at::CAUSATION_ID).map_err(fail)?,
            request_id: column(row, at::REQUEST_ID).map_err(fail)?,
            metadata,
            payload: Arc::from(column::<&str>(row, at::PAYLOAD).map_err(fail)?),
        };
        Ok(StoredEvent {
            position: u64::try_from(position).map_err(|_| fail("negative position".into()))?,
            envelope,
        })
    }
}

/// Decodes the rows of [`LOAD_COLUMNS`] of one stream into events, checking that versions
/// follow on one by one.
struct Loader<'a> {
    table: &'a str,
    aggregate_id: Uuid,
    aggregate_type: Arc<str>,
    after: i64,
    names: Names,
    types_checked: bool,
}

impl<'a> Loader<'a> {
    fn new(table: &'a str, aggregate_id: Uuid, aggregate_type: &str, after: i64) -> Self {
        Loader {
            table,
            aggregate_id,
            aggregate_type: Arc::from(aggregate_type),
            after,
            names: Names::default(),
            types_checked: false,
        }
    }

    fn decode(&mut self, row: &PgRow) -> Result<StoredEvent> {
        let (id, ty) = (self.aggregate_id, &self.aggregate_type);
        let fail = |reason: String| Error::corrupt(format!("stream {ty} {id} in {}", self.table), reason);
        if !self.types_checked {
            // The rows of one statement share their types: checked once, then decoded unchecked.
            has_type::<i64>(row, 0)
                .and(has_type::<Uuid>(row, 1))
                .and(has_type::<&str>(row, 2))
                .and(has_type::<i64>(row, 3))
                .and(has_type::<&str>(row, 4))
                .map_err(fail)?;
            self.types_checked = true;
        }
        let aggregate_version: i64 = column(row, 0).map_err(fail)?;
        if aggregate_version != self.after + 1 {
            return Err(fail(format!(
                "the stream jumps from version {} to {aggregate_version}",
                self.after
            )));
        }
        self.after = aggregate_version;
        let event_version: i64 = column(row, 3).map_err(fail)?;
        let envelope = EventEnvelope {
            event_id: column(row, 1).map_err(fail)?,
            event_type: self.names.get(column(row, 2).map_err(fail)?),
            event_version: u32::try_from(event_version)
                .map_err(|_| fail(format!("event version {event_version} is out of range")))?,
            aggregate_id: id,
            aggregate_type: ty.clone(),
            // Positive: it follows the one before it, from a non-negative start.
            aggregate_version: aggregate_version as u64,
            occurred_at: DateTime::<Utc>::UNIX_EPOCH,
            correlation_id: None,
            causation_id: None,
            request_id: None,
            metadata: None,
            payload: Arc::from(column::<&str>(row, 4).map_err(fail)?),
        };
        Ok(StoredEvent {
            position: 0,
            envelope,
        })
    }
}

/// Where each of [`COLUMNS`] is in a row (by index: a lookup by name costs a hash per
/// column and row), then the two columns `read_all` adds.
pub(super) mod at {
    pub(crate) const POSITION: usize = 0;
    pub(crate) const EVENT_ID: usize = 1;
    pub(crate) const EVENT_TYPE: usize = 2;
    pub(crate) const EVENT_VERSION: usize = 3;
    pub(crate) const AGGREGATE_VERSION: usize = 4;
    pub(crate) const OCCURRED_AT: usize = 5;
    pub(crate) const OCCURRED_AT_NS: usize = 6;
    pub(crate) const CORRELATION_ID: usize = 7;
    pub(crate) const CAUSATION_ID: usize = 8;
    pub(crate) const METADATA: usize = 9;
    pub(crate) const PAYLOAD: usize = 10;
    pub(crate) const REQUEST_ID: usize = 11;
    pub(crate) const AGGREGATE_ID: usize = 12;
    pub(crate) const AGGREGATE_TYPE: usize = 13;
}

/// Whether the column holds values of a type that decodes as `T`, or why not.
fn has_type<T: sqlx::Type<sqlx::Postgres>>(row: &PgRow, index: usize) -> std::result::Result<(), String> {
    let column = row.try_column(index).map_err(|e| e.to_string())?;
    let found = column.type_info();
    if T::compatible(found) {
        return Ok(());
    }
    Err(format!(
        "column {} is of type {found}, not {}",
        column.name(),
        T::type_info()
    ))
}

/// A column's value, or why it cannot be read. Its type is checked once a page, by
/// [`has_type`]; decoding still fails on a NULL, a value of the wrong size or bad UTF-8.
fn column<'r, T>(row: &'r PgRow, index: usize) -> std::result::Result<T, String>
where
    T: sqlx::Decode<'r, sqlx::Postgres>,
{
    row.try_get_unchecked(index).map_err(|e| e.to_string())
}

/// The type names met in a read, shared so that a long read allocates each name once.
#[derive(Default)]
struct Names(Vec<Arc<str>>);

impl Names {
    /// More distinct names than this in one read are allocated per event instead.
    const MAX: usize = 64;

    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|known| ***known == *name) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(name);
        if self.0.len() < Self::MAX {
            self.0.push(name.clone());
        }
        name
    }
}
