//! The append paths: a batch in one statement (with a snapshot, for the joint save), a lone
//! event in a statement of its own, and one event with others in a group; and the one refusal
//! path they share, which recognises a batch already stored.

use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;
use sqlx::postgres::PgDatabaseError;
use uuid::Uuid;

use super::group::{Group, Member, Outcome, Row as OneRow, Turn, MAX_GROUPED_SAVE};
use super::read::version_of;
use super::sql::{EVENT_ID_KEY, MAX_BATCH, REQUEST_KEY};
use super::{query_error, split_timestamp, to_bigint, PostgresEventStore, BACKEND};
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch, EventStore};
use crate::request::{request_of, Fingerprint, RequestId};
use crate::slice::mask::SliceMask;
use crate::snapshot::Snapshot;

/// A batch as the columns of the append statement.
#[derive(Default)]
pub(super) struct Columns<'a> {
    pub(super) event_id: Vec<Uuid>,
    pub(super) event_type: Vec<&'a str>,
    pub(super) event_version: Vec<i64>,
    pub(super) aggregate_version: Vec<i64>,
    pub(super) occurred_at: Vec<DateTime<Utc>>,
    pub(super) occurred_at_ns: Vec<i32>,
    pub(super) correlation_id: Vec<Option<Uuid>>,
    pub(super) causation_id: Vec<Option<Uuid>>,
    pub(super) metadata: Vec<Option<String>>,
    pub(super) payload: Vec<&'a str>,
    pub(super) request_id: Vec<Option<&'a str>>,
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
fn one_row(batch: &Batch<'_>) -> Result<OneRow> {
    let [event] = batch.events else {
        return Err(Error::InvalidInput(format!(
            "a one-event append was given {} events",
            batch.events.len()
        )));
    };
    group_row(event, batch.expected_version)
}

/// One event of a batch whose stream must be at `expected`, checked and encoded for a group.
pub(super) fn group_row(event: &EventEnvelope, expected: u64) -> Result<OneRow> {
    Ok(OneRow::of(
        event,
        (
            to_bigint(expected, "expected version")?,
            to_bigint(event.aggregate_version, "aggregate version")?,
        ),
        metadata_text(event)?,
        split_timestamp(event.occurred_at),
    ))
}

impl<'a> Columns<'a> {
    /// Adds the columns of `more`, after these.
    pub(super) fn extend(&mut self, more: Columns<'a>) {
        self.event_id.extend(more.event_id);
        self.event_type.extend(more.event_type);
        self.event_version.extend(more.event_version);
        self.aggregate_version.extend(more.aggregate_version);
        self.occurred_at.extend(more.occurred_at);
        self.occurred_at_ns.extend(more.occurred_at_ns);
        self.correlation_id.extend(more.correlation_id);
        self.causation_id.extend(more.causation_id);
        self.metadata.extend(more.metadata);
        self.payload.extend(more.payload);
        self.request_id.extend(more.request_id);
    }

    /// Binds the batch to `query` as the append statements take it, `$4` to `$14`: event
    /// ids, types and versions, aggregate versions, times, correlations, causations,
    /// metadata, payloads and request ids.
    pub(super) fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(&self.event_id)
            .bind(&self.event_type)
            .bind(&self.event_version)
            .bind(&self.aggregate_version)
            .bind(&self.occurred_at)
            .bind(&self.occurred_at_ns)
            .bind(&self.correlation_id)
            .bind(&self.causation_id)
            .bind(&self.metadata)
            .bind(&self.payload)
            .bind(&self.request_id)
    }

    pub(super) fn of(events: &'a [EventEnvelope]) -> Result<Self> {
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
            columns
                .request_id
                .push(event.request_id.as_ref().map(RequestId::as_str));
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
        batch: Batch<'_>,
        with: With<'_>,
    ) -> Result<(Appended, bool)> {
        let events = batch.events;
        if events.len() > MAX_BATCH {
            return Err(Error::InvalidInput(format!(
                "a PostgreSQL append stores at most {MAX_BATCH} events, not {}; append them in several batches",
                events.len()
            )));
        }
        let expected = to_bigint(batch.expected_version, "expected version")?;
        let c = Columns::of(events)?;
        let query = c.bind(
            sqlx::query_as::<_, (i64, i64, Option<i64>)>(sql)
                .bind(batch.aggregate_id)
                .bind(batch.aggregate_type)
                .bind(expected),
        );
        let result = match with {
            With::Nothing => query.fetch_one(&self.pool).await,
            With::Request(fingerprint) => {
                query
                    .bind(fingerprint.map(Fingerprint::to_stored))
                    .fetch_one(&self.pool)
                    .await
            }
            With::Snapshot(snapshot) => {
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
        match result {
            Ok((_, inserted, Some(last))) if inserted == events.len() as i64 => {
                let slices = SliceMask::of_stream(batch.aggregate_type, batch.aggregate_id);
                self.notifier.appended(&self.pool, &slices);
                Ok((self.stored(&batch, last)?, true))
            }
            Ok((head, 0, _)) if head != expected => {
                let refusal = batch_conflict(&batch, version_of(head, &self.sql.table)?);
                batch
                    .acknowledge_stored(self, refusal)
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
            Err(e) => self.refused(e, batch).await.map(|appended| (appended, false)),
        }
    }

    /// Appends one event with the others that arrive meanwhile (group commit, see
    /// [`super::group`]); alone when the group's statement failed or no runtime runs one.
    pub(super) async fn append_one(&self, batch: Batch<'_>) -> Result<Appended> {
        let row = one_row(&batch)?;
        let outcome = match Group::join(self, row).await {
            // While it runs, the appends that arrive queue for the next group: bounded, so that a
            // hanging statement does not hold them.
            Turn::Alone(_leading, row) => return self.append_alone_bounded(&row, batch).await,
            Turn::Grouped(outcome) => outcome,
        };
        match outcome {
            Outcome::Stored(positions) => match positions.last() {
                Some(&position) => self.stored(&batch, position),
                None => self.not_stored(batch).await,
            },
            Outcome::LeftOut => self.not_stored(batch).await,
            // Rare: the group's statement failed; the row went with it, so it is made again.
            Outcome::Failed => {
                let row = one_row(&batch)?;
                self.append_alone_bounded(&row, batch).await
            }
        }
    }

    /// What an append that stored `batch`, its last event at `position`, tells its caller.
    fn stored(&self, batch: &Batch<'_>, position: i64) -> Result<Appended> {
        Ok(Appended {
            version: batch.version_after(),
            position: version_of(position, &self.sql.table)?,
        })
    }

    /// `append` within the store's append timeout; past it, a transient error that leaves
    /// the outcome of `what` unknown (the statement may still commit).
    pub(super) async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        append: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.append_timeout, append).await {
            Ok(appended) => appended,
            Err(elapsed) => Err(Error::store(
                BACKEND,
                format!(
                    "{} did not finish within {:?}: it may or may not be stored, and making it \
                     again is safe",
                    what(),
                    self.append_timeout
                ),
                elapsed,
            )),
        }
    }

    /// [`append_alone`](Self::append_alone), [bounded](Self::bounded).
    async fn append_alone_bounded(&self, row: &OneRow, batch: Batch<'_>) -> Result<Appended> {
        let what = || {
            format!(
                "the append of event {} to {} {}",
                row.event_id, row.aggregate_type, row.aggregate_id
            )
        };
        self.bounded(what, self.append_alone(row, batch)).await
    }

    /// Appends a batch of several events, at most [`MAX_GROUPED_SAVE`], with the appends that
    /// arrive meanwhile (group commit, see [`super::group`]); alone when the group's
    /// statement left it out or failed.
    pub(super) async fn append_batch(&self, batch: Batch<'_>) -> Result<Appended> {
        debug_assert!(batch.events.len() <= MAX_GROUPED_SAVE);
        let rows = batch
            .events
            .iter()
            .map(|event| group_row(event, batch.expected_version))
            .collect::<Result<Vec<_>>>()?;
        let what = || {
            format!(
                "the append of {} events to {} {}",
                batch.events.len(),
                batch.aggregate_type,
                batch.aggregate_id
            )
        };
        match Group::join(self, Member::Save(rows)).await {
            Turn::Grouped(Outcome::Stored(positions)) if !positions.is_empty() => {
                self.stored(&batch, positions[positions.len() - 1])
            }
            // Alone while the appends that arrive queue for the next group (the turn holds them
            // until the append ends), or again after the group left it out (its stream not at
            // its version: alone finds the conflict) or failed (alone finds the batch stored, if
            // a statement given up on stored it); bounded either way, so that a hanging
            // statement holds nobody for long.
            _turn => {
                let alone = self.append_in(&self.sql.append, batch, With::Nothing);
                Ok(self.bounded(what, alone).await?.0)
            }
        }
    }

    /// The refusal of an append that was not stored: its stream is not at its expected
    /// version (a conflict, with the stream's version now), unless the batch was stored by an
    /// earlier try of the same append.
    async fn not_stored(&self, batch: Batch<'_>) -> Result<Appended> {
        let actual = self
            .stream_version(batch.aggregate_id, batch.aggregate_type)
            .await?;
        batch
            .acknowledge_stored(self, batch_conflict(&batch, actual))
            .await
    }

    /// Appends one event on its own, in a statement without arrays, from its checked row.
    async fn append_alone(&self, row: &OneRow, batch: Batch<'_>) -> Result<Appended> {
        let stored = sqlx::query_scalar::<_, i64>(&self.sql.append_one)
            .bind(row.aggregate_id)
            .bind(&*row.aggregate_type)
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
            .bind(row.request_id.as_deref())
            .fetch_optional(&self.pool)
            .await;
        match stored {
            Ok(Some(position)) => {
                let slices = SliceMask::of_stream(&row.aggregate_type, row.aggregate_id);
                self.notifier.appended(&self.pool, &slices);
                self.stored(&batch, position)
            }
            // The stream is not at the expected version, or a concurrent writer came first.
            Ok(None) => self.not_stored(batch).await,
            Err(e) => self.refused(e, batch).await,
        }
    }

    /// The outcome of an append whose statement failed: a unique key taken by a transaction
    /// that committed while it ran is an event id (possibly this very batch's, sent before
    /// and cancelled or not answered) or one of its versions (a concurrent writer), and the
    /// batch may be stored already; anything else is a store error.
    pub(super) async fn refused(&self, error: sqlx::Error, batch: Batch<'_>) -> Result<Appended> {
        let what = || format!("cannot append to {} {}", batch.aggregate_type, batch.aggregate_id);
        let db = match error {
            sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => db,
            e => return Err(query_error(&what(), e)),
        };
        if db.constraint() == Some(REQUEST_KEY) {
            return Err(Error::RequestRecorded {
                request_id: request_of(batch.events)?.to_string(),
            });
        }
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
            return self.not_stored(batch).await;
        };
        batch.acknowledge_stored(self, refusal).await
    }
}

/// What a batch statement stores with the batch.
pub(super) enum With<'a> {
    Nothing,
    /// The snapshot taken after the batch (the joint save).
    Snapshot(&'a Snapshot),
    /// The batch's request, with this fingerprint, in the request index.
    Request(Option<Fingerprint>),
}

/// The conflict of an append of `batch` to a stream found at `actual`.
fn batch_conflict(batch: &Batch<'_>, actual: u64) -> Error {
    Error::Conflict {
        aggregate_type: batch.aggregate_type.to_owned(),
        aggregate_id: batch.aggregate_id,
        expected: batch.expected_version,
        actual,
    }
}
