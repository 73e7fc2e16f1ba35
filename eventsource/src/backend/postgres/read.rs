//! Reads: a stream or the feed in keyset-paginated pages, a load's replay in one streamed
//! statement, and the decoding of rows, checked column by column.

use std::future::Future;
use std::sync::Arc;

use futures_util::{stream, StreamExt};
use sqlx::postgres::PgRow;
use sqlx::{Column, Row};
use tokio::task::JoinHandle;
use uuid::Uuid;

use chrono::{DateTime, Utc};

use super::{join_timestamp, query_error, PostgresEventStore, BACKEND};
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::EventStream;
use crate::request::RequestId;
use crate::slice::{merge, SliceRange};

pub(super) fn version_of(version: i64, table: &str) -> Result<u64> {
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

    pub(super) fn new(store: &PostgresEventStore, stream: Option<(Uuid, Arc<str>)>, after: i64) -> Self {
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
                Some((id, aggregate_type)) => {
                    let page = |statement| {
                        sqlx::query(statement)
                            .bind(id)
                            .bind(&**aggregate_type)
                            .bind(after)
                            .bind(store.page_size)
                            .fetch_all(&store.pool)
                    };
                    let fail = |e| query_error(&format!("cannot read stream {aggregate_type} {id}"), e);
                    let rows = page(&sql.read_stream).await.map_err(fail)?;
                    match rows.first() {
                        Some(first)
                            if archived_before(first, after, at::AGGREGATE_VERSION, at::EVENT_TYPE) =>
                        {
                            page(&sql.read_archived_stream).await.map_err(fail)
                        }
                        _ => Ok(rows),
                    }
                }
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

    /// Decodes rows that start with [`COLUMNS`] (then the stream's id and type, then the
    /// slice), in order, whatever their positions: the rows of a read by slice.
    fn decode_sliced(&mut self, rows: &[PgRow]) -> Result<Vec<(u32, StoredEvent)>> {
        let table = self.store.sql.table.clone();
        if let Some(Err(reason)) = rows
            .first()
            .map(|row| self.check_types(row).and(has_type::<i32>(row, at::SLICE)))
        {
            return Err(Error::corrupt(table, reason));
        }
        rows.iter()
            .map(|row| {
                let slice: i32 = column(row, at::SLICE).map_err(|e| Error::corrupt(table.clone(), e))?;
                Ok((slice as u32, self.decode(row)?))
            })
            .collect()
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
        has_type::<&str>(row, at::REQUEST_ID)?;
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
                if aggregate_version != self.after + 1 && !tombstone(row, at::EVENT_TYPE) {
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
            request_id: column::<Option<&str>>(row, at::REQUEST_ID)
                .map_err(fail)?
                .map(|id| RequestId::new(id).map_err(|e| fail(format!("request_id: {e}"))))
                .transpose()?,
            metadata,
            payload: Arc::from(column::<&str>(row, at::PAYLOAD).map_err(fail)?),
        };
        Ok(StoredEvent {
            position: u64::try_from(position).map_err(|_| fail("negative position".into()))?,
            envelope,
        })
    }
}

/// The events of the slices of `range` after `after`, in position order: each slice read from
/// the index by slice below the feed's bound when the read starts (every event below it is
/// final, and later statements see it), the slices merged.
pub(super) fn slices(store: &PostgresEventStore, range: SliceRange, after: u64) -> EventStream<'static> {
    let bound = {
        let store = store.clone();
        async move {
            store.read_slice_count().await?.check(range)?;
            sqlx::query_scalar::<_, i64>(&store.sql.feed_bound)
                .fetch_one(&store.pool)
                .await
                .map_err(|e| query_error("cannot read the bound of the feed", e))
        }
    };
    let (store, what) = (store.clone(), store.sql.table.clone());
    merge::merged(range, after, what, bound, move |bound| slice_pages(&store, bound))
}

/// Reads, for each of some slices, its events after its own position and below `bound`, in
/// one statement.
fn slice_pages(store: &PostgresEventStore, bound: i64) -> merge::Fetch {
    let store = store.clone();
    Box::new(move |cursors, limit| {
        let store = store.clone();
        Box::pin(async move {
            let (slices, afters): (Vec<i32>, Vec<i64>) = cursors
                .iter()
                .map(|(slice, after)| (*slice as i32, i64::try_from(*after).unwrap_or(i64::MAX)))
                .unzip();
            let rows = sqlx::query(&store.sql.read_slices)
                .bind(slices)
                .bind(afters)
                .bind(bound)
                .bind(limit as i64)
                .fetch_all(&store.pool)
                .await
                .map_err(|e| query_error("cannot read the feed by slice", e))?;
            Reader::new(&store, None, 0).decode_sliced(&rows)
        })
    })
}

/// Decodes the rows of [`LOAD_COLUMNS`] of one stream into events, checking that versions
/// follow on one by one.
pub(super) struct Loader<'a> {
    table: &'a str,
    aggregate_id: Uuid,
    aggregate_type: Arc<str>,
    after: i64,
    names: Names,
    types_checked: bool,
}

impl Loader<'_> {
    /// The stream's events after `after` as a load replays them, in one streamed statement.
    pub(super) fn stream<'a>(
        store: &'a PostgresEventStore,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after: i64,
    ) -> EventStream<'a> {
        let rows = move |statement| {
            sqlx::query(statement)
                .bind(aggregate_id)
                .bind(aggregate_type)
                .bind(after)
                .fetch(&store.pool)
        };
        // The live rows, unless the first is past the next version (and no tombstone): then
        // the stream has archived events before it, read again with them in one statement.
        let rows = stream::once(async move {
            let mut live = rows(&store.sql.load_stream);
            match live.next().await {
                Some(Ok(first)) if archived_before(&first, after, 0, 2) => {
                    rows(&store.sql.load_archived_stream)
                }
                first => Box::pin(stream::iter(first).chain(live)),
            }
        })
        .flatten();
        let mut loader = Loader::new(&store.sql.table, aggregate_id, aggregate_type, after);
        Box::pin(rows.map(move |row| match row {
            Ok(row) => loader.decode(&row),
            Err(e) => Err(query_error(
                &format!("cannot read stream {aggregate_type} {aggregate_id}"),
                e,
            )),
        }))
    }
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
        if aggregate_version != self.after + 1 && !tombstone(row, 2) {
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
    /// The slice a read by slice adds after them.
    pub(crate) const SLICE: usize = 14;
}

/// Whether the first row read after version `after` (its version and event type at these
/// indexes) starts the stream past the next version, and is no tombstone: the versions
/// between are archived (see `crate::lifecycle`).
fn archived_before(first: &PgRow, after: i64, version_at: usize, type_at: usize) -> bool {
    column::<i64>(first, version_at).is_ok_and(|version| version != after + 1) && !tombstone(first, type_at)
}

/// Whether the row's event, its event type at `index`, is a deleted stream's tombstone,
/// which follows the versions the deletion removed (see `crate::lifecycle`).
fn tombstone(row: &PgRow, index: usize) -> bool {
    column::<&str>(row, index).is_ok_and(|event_type| event_type == crate::lifecycle::DELETED)
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
