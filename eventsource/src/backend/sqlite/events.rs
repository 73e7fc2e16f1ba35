//! The SQLite event store.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::prefix::Prefix;
use super::{parse_timestamp, read, schema, signed, store_error, timestamp_text, unsigned, Database};
use crate::abilities::{AppendSignal, RequestIndex, SliceFeed, StreamListing};
use crate::error::StreamConflict;
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch, EventStore, EventStream, FeedHead};
use crate::multi_stream::{MultiStreamAppend, StreamBatches};
use crate::request::{
    recorded, request_of, validate_refusal, Fingerprint, RequestId, RequestOutcome, RequestRecord,
};
use crate::slice::{SliceCount, SliceParts, SliceRange};

const INSERT: &str = "INSERT INTO {p}events (event_id, event_type, event_version, aggregate_id, \
    aggregate_type, aggregate_version, occurred_at, correlation_id, causation_id, metadata, payload, \
    request_id, slice) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

const STREAM_VERSION: &str = "SELECT aggregate_version FROM {p}events \
    WHERE aggregate_id = ?1 AND aggregate_type = ?2 ORDER BY aggregate_version DESC LIMIT 1";

/// A deleted stream holds its tombstone alone: left out.
const STREAM_VERSIONS: &str = "SELECT aggregate_id, max(aggregate_version) FROM {p}events
    WHERE aggregate_type = ?1 AND event_type <> '$StreamDeleted' GROUP BY aggregate_id";

const HEAD: &str = "SELECT max(position), count(*) FROM {p}events WHERE position > ?1";

const REQUEST: &str = "SELECT aggregate_type, aggregate_id, fingerprint, version, position, refusal,
    recorded_at FROM {p}eventsource_requests WHERE request_id = ?1";

const RECORD_REQUEST: &str = "INSERT INTO {p}eventsource_requests (request_id, aggregate_type,
    aggregate_id, fingerprint, version, position, refusal, recorded_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const RECORD_REFUSAL: &str = "INSERT OR IGNORE INTO {p}eventsource_requests (request_id,
    aggregate_type, aggregate_id, fingerprint, refusal, recorded_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const FORGET_REFUSALS: &str = "DELETE FROM {p}eventsource_requests
    WHERE refusal IS NOT NULL AND recorded_at < ?1 AND (?2 IS NULL OR request_id = ?2)";

/// The event store's statements on the tables of its prefix, built once when it opens.
pub(super) struct Sql {
    insert: String,
    stream_version: String,
    stream_versions: String,
    head: String,
    request: String,
    record_request: String,
    record_refusal: String,
    forget_refusals: String,
    pages: Arc<read::Sql>,
    /// The number of slices of the store, which places each stream in its slice.
    slices: SliceCount,
}

impl Sql {
    fn new(prefix: &Prefix, slices: SliceCount) -> Self {
        Self {
            slices,
            insert: prefix.sql(INSERT),
            stream_version: prefix.sql(STREAM_VERSION),
            stream_versions: prefix.sql(STREAM_VERSIONS),
            head: prefix.sql(HEAD),
            request: prefix.sql(REQUEST),
            record_request: prefix.sql(RECORD_REQUEST),
            record_refusal: prefix.sql(RECORD_REFUSAL),
            forget_refusals: prefix.sql(FORGET_REFUSALS),
            pages: Arc::new(read::Sql::new(prefix)),
        }
    }
}

/// An event store in a SQLite database.
///
/// Cheap to clone: clones share the connections. See the [module docs](super) for the
/// storage and the behaviour under concurrent writers.
#[derive(Clone)]
pub struct SqliteEventStore {
    pub(super) database: Database,
    pub(super) sql: Arc<Sql>,
}

impl std::fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl SqliteEventStore {
    /// Appends the checked batch in one write transaction, recording `request` with it if
    /// given; a refused batch is acknowledged if it is the one stored already.
    async fn append_recording(&self, checked: Batch<'_>, request: Option<Request>) -> Result<Appended> {
        let batch = checked
            .events
            .iter()
            .map(Encoded::new)
            .collect::<Result<Vec<_>>>()?;
        let stream = Stream::new(checked.aggregate_id, checked.aggregate_type);
        let (sql, expected) = (self.sql.clone(), checked.expected_version);
        let appended = self
            .database
            .write(move |connection| stream.append(connection, &sql, expected, &batch, request.as_ref()))
            .await;
        match appended {
            Ok((version, position)) => {
                self.database
                    .appended()
                    .raise_streams([(checked.aggregate_type, checked.aggregate_id)]);
                Ok(Appended { version, position })
            }
            Err(refusal @ (Error::Conflict { .. } | Error::InvalidInput(_))) => {
                checked.acknowledge_stored(self, refusal).await
            }
            Err(e) => Err(e),
        }
    }

    /// The signal raised after each append through this store's database (appends that
    /// other connections make to the file are seen by polling).
    pub fn append_signal(&self) -> AppendSignal {
        self.database.appended().clone()
    }

    /// Opens the store on a file, created if missing, or on `:memory:` (see
    /// [`Database::open`]), creating its table if missing.
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
        Self::on(Database::open(path).await?).await
    }

    /// The store on a database of the program's own, creating its table if missing, with
    /// the database's table prefix ([`Database::with_prefix`]).
    ///
    /// Creates or upgrades the tables (see the [module docs](super#storage)); a table named
    /// `events` or `snapshots` (after the prefix) that is not this library's is
    /// [`Error::InvalidConfiguration`].
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
    pub async fn on(database: Database) -> Result<Self> {
        let slices = schema::migrate(&database).await?;
        let sql = Arc::new(Sql::new(database.table_prefix(), slices));
        Ok(Self { database, sql })
    }

    /// The database the store runs on.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Where its reads read pages.
    fn pages(&self) -> read::Source {
        read::Source {
            database: self.database.clone(),
            sql: self.sql.pages.clone(),
        }
    }
}

/// An event's columns as bound to the `INSERT`.
pub(super) struct Encoded {
    event_id: String,
    event_type: Arc<str>,
    event_version: i64,
    aggregate_version: i64,
    occurred_at: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    metadata: Option<String>,
    payload: Arc<str>,
    request_id: Option<String>,
}

impl Encoded {
    pub(super) fn new(event: &EventEnvelope) -> Result<Self> {
        let metadata = match &event.metadata {
            Some(value) => Some(serde_json::to_string(value).map_err(|e| Error::Serialization {
                action: "serialize",
                what: format!("metadata of event {}", event.event_id),
                reason: e.to_string(),
            })?),
            None => None,
        };
        Ok(Self {
            event_id: event.event_id.hyphenated().to_string(),
            event_type: event.event_type.clone(),
            event_version: i64::from(event.event_version),
            aggregate_version: signed(event.aggregate_version, "aggregate version")?,
            occurred_at: timestamp_text(&event.occurred_at, || format!("event {}", event.event_id))?,
            correlation_id: event.correlation_id.map(|id| id.hyphenated().to_string()),
            causation_id: event.causation_id.map(|id| id.hyphenated().to_string()),
            metadata,
            payload: event.payload.clone(),
            request_id: event.request_id.as_ref().map(|id| id.as_str().to_owned()),
        })
    }
}

/// The stream an append or a read is about.
pub(super) struct Stream {
    id: Uuid,
    key: String,
    aggregate_type: String,
}

impl Stream {
    pub(super) fn new(id: Uuid, aggregate_type: &str) -> Self {
        Self {
            id,
            key: id.hyphenated().to_string(),
            aggregate_type: aggregate_type.to_owned(),
        }
    }

    fn failed(&self, action: &str, e: rusqlite::Error) -> Error {
        store_error(format!("cannot {action} {} {}", self.aggregate_type, self.id), e)
    }

    /// The conflict of an append that expected the stream at `expected` and found `actual`.
    fn conflict(&self, expected: u64, actual: u64) -> Error {
        Error::Conflict {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.id,
            expected,
            actual,
        }
    }

    /// The stream's version as the connection sees it.
    fn version(&self, connection: &Connection, sql: &Sql) -> Result<u64> {
        let stored = self
            .stored_version(connection, sql)
            .map_err(|e| self.failed("read the version of", e))?;
        self.version_of(stored)
    }

    /// The highest stored version, as the column holds it.
    fn stored_version(&self, connection: &Connection, sql: &Sql) -> rusqlite::Result<Option<StoredVersion>> {
        let mut statement = connection.prepare_cached(&sql.stream_version)?;
        statement
            .query_row((&self.key, &self.aggregate_type), |row| {
                Ok(stored_version(row.get_ref(0)?))
            })
            .optional()
    }

    fn version_of(&self, stored: Option<StoredVersion>) -> Result<u64> {
        let what = || format!("the SQLite stream of {} {}", self.aggregate_type, self.id);
        match stored {
            None => Ok(0),
            Some(Ok(version)) => unsigned(version, "aggregate_version", what),
            Some(Err(holds)) => Err(Error::corrupt(
                what(),
                format!("column `aggregate_version` holds {holds}, not an integer"),
            )),
        }
    }

    /// Appends the batch in one `BEGIN IMMEDIATE` transaction if the stream is at `expected`;
    /// the new version and the position of the batch's last event.
    fn append(
        &self,
        connection: &mut Connection,
        sql: &Sql,
        expected: u64,
        batch: &[Encoded],
        request: Option<&Request>,
    ) -> Result<(u64, u64)> {
        let fail = |e| self.failed("append to", e);
        // IMMEDIATE takes the write lock up front (waiting out the busy timeout), so writers
        // queue here rather than fail when a read transaction turns into a write. Returning
        // early drops the transaction, which rolls it back.
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let appended = self.append_in(&tx, sql, expected, batch, request)?;
        tx.commit().map_err(fail)?;
        Ok(appended)
    }

    /// Appends the batch in the write transaction `tx` if the stream is at `expected`,
    /// recording `request` with it; the new version and the position of the batch's last
    /// event. On an error, rows of the batch may be left in `tx`: roll it (or a savepoint
    /// around the call) back.
    pub(super) fn append_in(
        &self,
        tx: &Connection,
        sql: &Sql,
        expected: u64,
        batch: &[Encoded],
        request: Option<&Request>,
    ) -> Result<(u64, u64)> {
        let fail = |e| self.failed("append to", e);
        let conflict = |actual| self.conflict(expected, actual);
        let actual = self.version(tx, sql)?;
        if actual != expected {
            return Err(conflict(actual));
        }
        let last = self.insert(tx, sql, expected, batch)?;
        let version = expected + batch.len() as u64;
        if let Some(request) = request {
            let recorded = tx.prepare_cached(&sql.record_request).map_err(fail)?.execute((
                request.id.as_str(),
                &self.aggregate_type,
                &self.key,
                request.fingerprint.map(Fingerprint::to_stored),
                signed(version, "version")?,
                last,
                None::<String>,
                &request.recorded_at,
            ));
            match recorded {
                Ok(_) => {}
                Err(err) if err.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                    return Err(Error::RequestRecorded {
                        request_id: request.id.to_string(),
                    });
                }
                Err(err) => return Err(fail(err)),
            }
        }
        Ok((version, u64::try_from(last).unwrap_or_default()))
    }

    /// Inserts the batch's rows in the write transaction `tx`, the stream being at
    /// `expected`; the position of its last event.
    fn insert(&self, tx: &Connection, sql: &Sql, expected: u64, batch: &[Encoded]) -> Result<i64> {
        let fail = |e| self.failed("append to", e);
        let conflict = |actual| self.conflict(expected, actual);
        let mut insert = tx.prepare_cached(&sql.insert).map_err(fail)?;
        let slice = sql.slices.slice_of(&self.aggregate_type, self.id);
        for e in batch {
            let row = (
                &e.event_id,
                &*e.event_type,
                e.event_version,
                &self.key,
                &self.aggregate_type,
                e.aggregate_version,
                &e.occurred_at,
                &e.correlation_id,
                &e.causation_id,
                &e.metadata,
                &*e.payload,
                &e.request_id,
                slice,
            );
            match insert.execute(row) {
                Ok(_) => {}
                Err(err) if err.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                    if err.to_string().contains("event_id") {
                        return Err(Error::InvalidInput(format!(
                            "event id {} is already stored",
                            e.event_id
                        )));
                    }
                    // Only a writer that bypassed the write lock could get here first.
                    return Err(conflict(self.version(tx, sql)?));
                }
                Err(err) => return Err(fail(err)),
            }
        }
        // The rowid is the `position` column (INTEGER PRIMARY KEY): the batch's last event's.
        Ok(tx.last_insert_rowid())
    }
}

/// Saves several streams in one `BEGIN IMMEDIATE` transaction: `writes` (each stream, its
/// expected version and its batch) only if each is at its expected version and each of
/// `checks` at its version; the new version and last position of each batch.
fn append_streams(
    connection: &mut Connection,
    sql: &Sql,
    writes: &[(Stream, u64, Vec<Encoded>)],
    checks: &[(Stream, u64)],
) -> Result<Vec<(u64, u64)>> {
    let fail = |e| store_error("cannot save over several streams", e);
    // The write lock, taken first, is held to the commit: nobody appends meanwhile, so the
    // checks hold when the save commits.
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let mut conflicts = Vec::new();
    let expected = writes
        .iter()
        .map(|(stream, expected, _)| (stream, *expected, true))
        .chain(checks.iter().map(|(stream, version)| (stream, *version, false)));
    for (stream, expected, written) in expected {
        let actual = stream.version(&tx, sql)?;
        if actual != expected {
            conflicts.push(StreamConflict::new(
                &stream.aggregate_type,
                stream.id,
                expected,
                actual,
                written,
            ));
        }
    }
    if !conflicts.is_empty() {
        return Err(Error::Conflicts { streams: conflicts });
    }
    let mut appended = Vec::with_capacity(writes.len());
    for (stream, expected, batch) in writes {
        let last = stream.insert(&tx, sql, *expected, batch)?;
        appended.push((
            *expected + batch.len() as u64,
            u64::try_from(last).unwrap_or_default(),
        ));
    }
    tx.commit().map_err(fail)?;
    Ok(appended)
}

/// The request an append records as executed by its batch.
pub(super) struct Request {
    pub(super) id: RequestId,
    pub(super) fingerprint: Option<Fingerprint>,
    pub(super) recorded_at: String,
}

/// A stored version, or what the column holds instead of an integer.
type StoredVersion = std::result::Result<i64, &'static str>;

fn stored_version(value: ValueRef<'_>) -> StoredVersion {
    match value {
        ValueRef::Integer(version) => Ok(version),
        ValueRef::Null => Err("NULL"),
        ValueRef::Real(_) => Err("a real"),
        ValueRef::Text(_) => Err("text"),
        ValueRef::Blob(_) => Err("a blob"),
    }
}

#[async_trait]
impl MultiStreamAppend for SqliteEventStore {
    async fn append_streams(&self, save: StreamBatches<'_>) -> Result<Vec<Appended>> {
        let mut writes = Vec::with_capacity(save.writes().len());
        for batch in save.writes() {
            let encoded = batch
                .events
                .iter()
                .map(Encoded::new)
                .collect::<Result<Vec<_>>>()?;
            writes.push((
                Stream::new(batch.aggregate_id, batch.aggregate_type),
                batch.expected_version,
                encoded,
            ));
        }
        let checks: Vec<(Stream, u64)> = save
            .checks()
            .iter()
            .map(|c| (Stream::new(c.aggregate_id, &c.aggregate_type), c.version))
            .collect();
        let sql = self.sql.clone();
        let outcome = self
            .database
            .write(move |connection| append_streams(connection, &sql, &writes, &checks))
            .await;
        match outcome {
            Ok(appended) => {
                self.database
                    .appended()
                    .raise_streams(save.writes().iter().map(|b| (b.aggregate_type, b.aggregate_id)));
                Ok(appended
                    .into_iter()
                    .map(|(version, position)| Appended { version, position })
                    .collect())
            }
            Err(refusal @ (Error::Conflicts { .. } | Error::InvalidInput(_))) => {
                save.acknowledge_stored(self, refusal).await
            }
            // A writer that bypassed the write lock: the streams as they are now.
            Err(refusal @ Error::Conflict { .. }) => save.refused(self, refusal).await,
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        self.append_recording(batch, None).await
    }

    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        read::stream(&self.pages(), aggregate_id, aggregate_type, after_version)
    }

    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let stream = Arc::new(Stream::new(aggregate_id, aggregate_type));
        let (reading, sql) = (stream.clone(), self.sql.clone());
        let stored = self
            .database
            .read(move |connection| reading.stored_version(connection, &sql))
            .await
            .map_err(|e| stream.failed("read the version of", e))?;
        stream.version_of(stored)
    }

    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        read::log(&self.pages(), after_position)
    }

    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        let after = i64::try_from(after_position).unwrap_or(i64::MAX);
        let sql = self.sql.clone();
        let (last, count): (Option<i64>, i64) = self
            .database
            .read(move |connection| {
                connection
                    .prepare_cached(&sql.head)?
                    .query_row([after], |row| Ok((row.get(0)?, row.get(1)?)))
            })
            .await
            .map_err(|e| store_error("cannot read the head of the event log", e))?;
        let what = || "the SQLite event log".to_owned();
        let position = match last {
            Some(last) => unsigned(last, "position", what)?,
            None => after_position,
        };
        Ok(FeedHead::new(position, unsigned(count, "count", what)?))
    }
}

#[async_trait]
impl SliceFeed for SqliteEventStore {
    async fn slice_count(&self) -> Result<SliceCount> {
        Ok(self.sql.slices)
    }

    async fn feed_head(&self, range: SliceRange, after_position: u64) -> Result<FeedHead> {
        self.slice_count().await?.check(range)?;
        self.head(after_position).await
    }

    async fn parts(&self) -> Result<SliceParts> {
        Ok(SliceParts::whole(self.slice_count().await?))
    }

    fn read_slices(&self, range: SliceRange, after_position: u64) -> EventStream<'_> {
        match self.sql.slices.check(range) {
            Ok(range) => read::slices(&self.pages(), range, after_position),
            Err(e) => Box::pin(futures_util::stream::iter([Err(e)])),
        }
    }
}

#[async_trait]
impl StreamListing for SqliteEventStore {
    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>> {
        let (ty, sql) = (aggregate_type.to_owned(), self.sql.clone());
        let rows: Vec<(String, i64)> = self
            .database
            .read(move |connection| {
                connection
                    .prepare_cached(&sql.stream_versions)?
                    .query_map([&ty], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .await
            .map_err(|e| store_error(format!("cannot list the streams of {aggregate_type}"), e))?;
        rows.into_iter()
            .map(|(id, version)| {
                let what = || format!("the SQLite stream of {aggregate_type} {id}");
                let aggregate_id = Uuid::parse_str(&id)
                    .map_err(|e| Error::corrupt(what(), format!("aggregate_id {id:?}: {e}")))?;
                Ok((aggregate_id, unsigned(version, "aggregate_version", what)?))
            })
            .collect()
    }
}

#[async_trait]
impl RequestIndex for SqliteEventStore {
    async fn find_request(&self, request_id: &RequestId) -> Result<Option<RequestRecord>> {
        let (sql, id) = (self.sql.clone(), request_id.as_str().to_owned());
        let row: Option<RequestRow> = self
            .database
            .read(move |connection| {
                connection
                    .prepare_cached(&sql.request)?
                    .query_row([&id], |row| {
                        Ok(RequestRow {
                            aggregate_type: row.get(0)?,
                            aggregate_id: row.get(1)?,
                            fingerprint: row.get(2)?,
                            version: row.get(3)?,
                            position: row.get(4)?,
                            refusal: row.get(5)?,
                            recorded_at: row.get(6)?,
                        })
                    })
                    .optional()
            })
            .await
            .map_err(|e| store_error(format!("cannot look up request {request_id}"), e))?;
        row.map(|row| row.record(request_id)).transpose()
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
        let request = Request {
            id: request_of(events)?.clone(),
            fingerprint,
            recorded_at: timestamp_text(&crate::request::now(), || "now".into())?,
        };
        self.append_recording(batch, Some(request)).await
    }

    async fn record_refusal(&self, refusal: &RequestRecord) -> Result<RequestRecord> {
        validate_refusal(refusal)?;
        let RequestOutcome::Refused { reason } = &refusal.outcome else {
            unreachable!("validate_refusal accepts refusals only");
        };
        let row = (
            refusal.request_id.as_str().to_owned(),
            refusal.aggregate_type.clone(),
            refusal.aggregate_id.hyphenated().to_string(),
            refusal.fingerprint.map(Fingerprint::to_stored),
            reason.clone(),
            timestamp_text(&refusal.recorded_at, || {
                format!("the refusal of {}", refusal.request_id)
            })?,
        );
        let sql = self.sql.clone();
        self.database
            .write(move |connection| {
                connection
                    .prepare_cached(&sql.record_refusal)
                    .and_then(|mut insert| insert.execute(row))
                    .map_err(|e| store_error("cannot record a refusal", e))
            })
            .await?;
        recorded(refusal, self.find_request(&refusal.request_id).await?)
    }

    async fn forget_refusals(
        &self,
        request_id: Option<&RequestId>,
        recorded_before: DateTime<Utc>,
    ) -> Result<u64> {
        let before = timestamp_text(&recorded_before, || "the retention bound".into())?;
        let id = request_id.map(|id| id.as_str().to_owned());
        let sql = self.sql.clone();
        let deleted = self
            .database
            .write(move |connection| {
                connection
                    .prepare_cached(&sql.forget_refusals)
                    .and_then(|mut delete| delete.execute((&before, &id)))
                    .map_err(|e| store_error("cannot forget refusals", e))
            })
            .await?;
        Ok(deleted as u64)
    }
}

/// A row of the request index, as read.
struct RequestRow {
    aggregate_type: String,
    aggregate_id: String,
    fingerprint: Option<i64>,
    version: Option<i64>,
    position: Option<i64>,
    refusal: Option<String>,
    recorded_at: String,
}

impl RequestRow {
    fn record(self, request_id: &RequestId) -> Result<RequestRecord> {
        let what = || format!("the SQLite record of request {request_id}");
        let aggregate_id = Uuid::parse_str(&self.aggregate_id)
            .map_err(|e| Error::corrupt(what(), format!("aggregate_id {:?}: {e}", self.aggregate_id)))?;
        let recorded_at = parse_timestamp(&self.recorded_at, "recorded_at", what)?;
        let fingerprint = self.fingerprint.map(Fingerprint::from_stored);
        let record = match (self.version, self.position, self.refusal) {
            (Some(version), Some(position), None) => RequestRecord::executed(
                request_id.clone(),
                &self.aggregate_type,
                aggregate_id,
                fingerprint,
                unsigned(version, "version", what)?,
                unsigned(position, "position", what)?,
                recorded_at,
            ),
            (None, None, Some(reason)) => RequestRecord::refused(
                request_id.clone(),
                &self.aggregate_type,
                aggregate_id,
                fingerprint,
                reason,
            )
            .recorded_at(recorded_at),
            _ => {
                return Err(Error::corrupt(
                    what(),
                    "it holds neither an executed outcome (version and position) nor a refusal",
                ))
            }
        };
        Ok(record)
    }
}
