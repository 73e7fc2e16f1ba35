//! Reading events: a stream or the whole log, a page at a time.
//!
//! Each page is one short query, run where [`Database::read`] runs reads (on the calling
//! thread), so a reader holds no connection, lock or read transaction between pages and can
//! be dropped at any point. Between pages it gives the runtime a turn, so a long replay does
//! not hold a thread for its whole length.

use std::sync::Arc;

use futures_util::{stream, StreamExt};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::prefix::Prefix;
use super::{parse_timestamp, store_error, unsigned, Database};
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::EventStream;
use crate::request::RequestId;
use crate::slice::{merge, SliceRange};

/// Rows per page: about a tenth of a millisecond of reading and decoding.
const PAGE: usize = 256;

macro_rules! columns {
    () => {
        "position, event_id, event_type, event_version, aggregate_id, aggregate_type, \
         aggregate_version, occurred_at, correlation_id, causation_id, metadata, payload, request_id"
    };
}

const STREAM_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM {p}events WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND aggregate_version > ?3 \
     ORDER BY aggregate_version LIMIT ?4"
);

/// A page of a stream that has archived events (see `crate::lifecycle`): those, then its
/// live ones, in one statement.
const ARCHIVED_STREAM_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM {p}eventsource_archived_events \
     WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND aggregate_version > ?3 \
     UNION ALL SELECT ",
    columns!(),
    " FROM {p}events WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND aggregate_version > ?3 \
     ORDER BY aggregate_version LIMIT ?4"
);

const LOG_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM {p}events WHERE position > ?1 ORDER BY position LIMIT ?2"
);

const SLICE_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM {p}events WHERE slice = ?1 AND position > ?2 AND position <= ?3 ORDER BY position LIMIT ?4"
);

const LAST_POSITION: &str = "SELECT coalesce(max(position), 0) FROM {p}events";

/// The statements that read pages, on the tables of one prefix.
#[derive(Debug)]
pub(super) struct Sql {
    stream_page: String,
    archived_stream_page: String,
    log_page: String,
    slice_page: String,
    last_position: String,
}

impl Sql {
    pub(super) fn new(prefix: &Prefix) -> Self {
        Self {
            stream_page: prefix.sql(STREAM_PAGE),
            archived_stream_page: prefix.sql(ARCHIVED_STREAM_PAGE),
            log_page: prefix.sql(LOG_PAGE),
            slice_page: prefix.sql(SLICE_PAGE),
            last_position: prefix.sql(LAST_POSITION),
        }
    }
}

/// Where pages are read: the database, and the statements on its tables.
#[derive(Clone)]
pub(super) struct Source {
    pub(super) database: Database,
    pub(super) sql: Arc<Sql>,
}

/// The events of one stream after a version, in version order.
pub(super) fn stream(
    source: &Source,
    aggregate_id: Uuid,
    aggregate_type: &str,
    after: u64,
) -> EventStream<'static> {
    // No version is beyond i64::MAX, so reading after one gives nothing.
    let Ok(after_version) = i64::try_from(after) else {
        return Box::pin(stream::empty());
    };
    let cursor = Cursor::Stream {
        aggregate_id: aggregate_id.hyphenated().to_string(),
        aggregate_type: aggregate_type.to_owned(),
        after_version,
    };
    let decoder = Decoder {
        stream: Some((aggregate_id, Arc::from(aggregate_type))),
        names: Vec::new(),
    };
    pages(source.clone(), cursor, decoder)
}

/// Every event after a position, in position order.
pub(super) fn log(source: &Source, after: u64) -> EventStream<'static> {
    let Ok(after_position) = i64::try_from(after) else {
        return Box::pin(stream::empty());
    };
    pages(
        source.clone(),
        Cursor::Log { after_position },
        Decoder {
            stream: None,
            names: Vec::new(),
        },
    )
}

/// The events of the slices of `range` after a position, in position order: each slice read
/// from the index by slice up to the last position stored when the read starts (one writer at
/// a time commits positions in order, so every event up to it is there to read), the slices
/// merged.
pub(super) fn slices(source: &Source, range: SliceRange, after: u64) -> EventStream<'static> {
    let source = source.clone();
    let last = {
        let source = source.clone();
        async move {
            let sql = source.sql.clone();
            source
                .database
                .read(move |connection| {
                    connection
                        .prepare_cached(&sql.last_position)?
                        .query_row([], |row| row.get::<_, i64>(0))
                })
                .await
                .map_err(|e| store_error("cannot read the event log", e))
        }
    };
    let what = "the SQLite events table".to_owned();
    merge::merged(range, after, what, last, move |last| slice_pages(&source, last))
}

/// Reads, for each of some slices, its events after its own position up to `last`.
fn slice_pages(source: &Source, last: i64) -> merge::Fetch {
    let source = source.clone();
    Box::new(move |cursors, limit| {
        let source = source.clone();
        Box::pin(async move {
            let sql = source.sql.clone();
            let read = source
                .database
                .read(move |connection| {
                    let mut statement = connection.prepare_cached(&sql.slice_page)?;
                    let mut decoder = Decoder {
                        stream: None,
                        names: Vec::new(),
                    };
                    let mut events = Vec::new();
                    for (slice, after) in &cursors {
                        let after = i64::try_from(*after).unwrap_or(i64::MAX);
                        let mut rows = statement.query((slice, after, last, limit as i64))?;
                        while let Some(row) = rows.next()? {
                            let event = Columns::of(row).and_then(|columns| decoder.decode(columns));
                            events.push(event.map(|event| (*slice, event)));
                        }
                    }
                    Ok(events)
                })
                .await
                .map_err(|e| store_error("cannot read the event log by slice", e))?;
            read.into_iter().collect()
        })
    })
}

fn pages(source: Source, cursor: Cursor, decoder: Decoder) -> EventStream<'static> {
    let start = Some((source, cursor, decoder, true));
    let pages = stream::unfold(start, |state| async move {
        let (source, mut cursor, decoder, first) = state?;
        if !first {
            tokio::task::yield_now().await;
        }
        let (page, decoder) = cursor.read(&source, decoder).await;
        // A short page is the end of what there was when it was read; an error ends the read.
        let more = match page.last() {
            Some(Ok(last)) => {
                cursor.advance(last);
                page.len() == PAGE
            }
            Some(Err(_)) => false,
            None => return None,
        };
        Some((page, more.then_some((source, cursor, decoder, false))))
    });
    Box::pin(pages.flat_map(stream::iter))
}

/// Where the next page starts.
#[derive(Clone)]
enum Cursor {
    Stream {
        aggregate_id: String,
        aggregate_type: String,
        after_version: i64,
    },
    Log {
        after_position: i64,
    },
}

impl Cursor {
    fn failed(&self, e: rusqlite::Error) -> Error {
        match self {
            Cursor::Stream {
                aggregate_id,
                aggregate_type,
                ..
            } => store_error(
                format!("cannot read the stream of {aggregate_type} {aggregate_id}"),
                e,
            ),
            Cursor::Log { .. } => store_error("cannot read the event log", e),
        }
    }

    /// The next page: its events, then the error that ended it if one did.
    async fn read(&self, source: &Source, decoder: Decoder) -> (Vec<Result<StoredEvent>>, Decoder) {
        let cursor = self.clone();
        let sql = source.sql.clone();
        let fallback = decoder.clone();
        let read = source
            .database
            .read(move |connection| {
                let mut decoder = decoder.clone();
                let page = cursor.page(connection, &sql, &mut decoder)?;
                Ok((page, decoder))
            })
            .await;
        read.unwrap_or_else(|e| (vec![Err(self.failed(e))], fallback))
    }

    /// Reads and decodes a page, up to the first row that fails to decode.
    fn page(
        &self,
        connection: &Connection,
        sql: &Sql,
        decoder: &mut Decoder,
    ) -> rusqlite::Result<Vec<Result<StoredEvent>>> {
        match self {
            Cursor::Stream {
                aggregate_id,
                aggregate_type,
                after_version,
            } => {
                let params = (aggregate_id, aggregate_type, after_version, PAGE as i64);
                let mut statement = connection.prepare_cached(&sql.stream_page)?;
                let events = Self::decoded(statement.query(params)?, decoder)?;
                // Past the next version, and not a tombstone: the versions between are in
                // the archive.
                let archived = events.first().is_some_and(|first| {
                    first.as_ref().is_ok_and(|e| {
                        e.aggregate_version as i64 != after_version + 1
                            && *e.event_type != *crate::lifecycle::DELETED
                    })
                });
                if !archived {
                    return Ok(events);
                }
                let mut statement = connection.prepare_cached(&sql.archived_stream_page)?;
                let events = Self::decoded(statement.query(params)?, decoder)?;
                Ok(events)
            }
            Cursor::Log { after_position } => {
                let mut statement = connection.prepare_cached(&sql.log_page)?;
                let events = Self::decoded(statement.query((after_position, PAGE as i64))?, decoder)?;
                Ok(events)
            }
        }
    }

    /// Decodes the rows of a page, up to the first that fails to decode.
    fn decoded(
        mut rows: rusqlite::Rows<'_>,
        decoder: &mut Decoder,
    ) -> rusqlite::Result<Vec<Result<StoredEvent>>> {
        let mut events = Vec::with_capacity(PAGE);
        while let Some(row) = rows.next()? {
            let event = Columns::of(row).and_then(|columns| decoder.decode(columns));
            let failed = event.is_err();
            events.push(event);
            if failed {
                break;
            }
        }
        Ok(events)
    }

    fn advance(&mut self, event: &StoredEvent) {
        // Decoded values came from an i64 column, so they fit back into one.
        match self {
            Cursor::Stream { after_version, .. } => *after_version = event.aggregate_version as i64,
            Cursor::Log { after_position } => *after_position = event.position as i64,
        }
    }
}

/// The columns of one row, of the types the schema gives them.
struct Columns<'a> {
    position: i64,
    event_id: &'a str,
    event_type: &'a str,
    event_version: i64,
    aggregate_id: &'a str,
    aggregate_type: &'a str,
    aggregate_version: i64,
    occurred_at: &'a str,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    metadata: Option<&'a str>,
    payload: &'a str,
    request_id: Option<&'a str>,
}

impl<'a> Columns<'a> {
    /// The row's columns, each of the type the schema gives it; anything else is corrupt.
    fn of(row: &'a Row<'a>) -> Result<Self> {
        let position = match row.get_ref(0) {
            Ok(ValueRef::Integer(position)) => position,
            other => {
                return Err(Error::corrupt(
                    "a row of the SQLite events table",
                    format!("column `position` holds {}", describe(other)),
                ))
            }
        };
        let what = || at_position(position);
        let integer = |index: usize, column: &str| match row.get_ref(index) {
            Ok(ValueRef::Integer(value)) => Ok(value),
            other => Err(Error::corrupt(
                what(),
                format!("column `{column}` holds {}, not an integer", describe(other)),
            )),
        };
        let text = |index: usize, column: &str| match row.get_ref(index) {
            Ok(ValueRef::Text(bytes)) => std::str::from_utf8(bytes).map(Some).map_err(|e| {
                Error::corrupt(
                    what(),
                    format!("column `{column}` holds text that is not UTF-8: {e}"),
                )
            }),
            Ok(ValueRef::Null) => Ok(None),
            other => Err(Error::corrupt(
                what(),
                format!("column `{column}` holds {}, not text", describe(other)),
            )),
        };
        let required = |index: usize, column: &str| {
            text(index, column)?.ok_or_else(|| Error::corrupt(what(), format!("column `{column}` is NULL")))
        };
        Ok(Columns {
            position,
            event_id: required(1, "event_id")?,
            event_type: required(2, "event_type")?,
            event_version: integer(3, "event_version")?,
            aggregate_id: required(4, "aggregate_id")?,
            aggregate_type: required(5, "aggregate_type")?,
            aggregate_version: integer(6, "aggregate_version")?,
            occurred_at: required(7, "occurred_at")?,
            correlation_id: text(8, "correlation_id")?,
            causation_id: text(9, "causation_id")?,
            metadata: text(10, "metadata")?,
            payload: required(11, "payload")?,
            request_id: text(12, "request_id")?,
        })
    }
}

/// What a column holds, for an error message.
fn describe(value: rusqlite::Result<ValueRef<'_>>) -> String {
    match value {
        Ok(ValueRef::Null) => "NULL".into(),
        Ok(ValueRef::Integer(n)) => format!("the integer {n}"),
        Ok(ValueRef::Real(x)) => format!("the real {x}"),
        Ok(ValueRef::Text(_)) => "text".into(),
        Ok(ValueRef::Blob(bytes)) => format!("a blob of {} bytes", bytes.len()),
        Err(e) => format!("nothing readable ({e})"),
    }
}

fn at_position(position: i64) -> String {
    format!("the SQLite event at position {position}")
}

/// Turns rows into events, sharing one allocation per distinct type name.
#[derive(Clone)]
struct Decoder {
    /// The stream being read, whose id and type need no decoding.
    stream: Option<(Uuid, Arc<str>)>,
    names: Vec<Arc<str>>,
}

impl Decoder {
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.iter().find(|known| ***known == *name) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(name);
        // A log of many types gets no sharing past this, rather than a slow lookup.
        if self.names.len() < 64 {
            self.names.push(name.clone());
        }
        name
    }

    fn decode(&mut self, c: Columns<'_>) -> Result<StoredEvent> {
        let what = || at_position(c.position);
        let uuid = |text: &str, column: &str| {
            Uuid::try_parse(text).map_err(|e| {
                Error::corrupt(
                    what(),
                    format!("column `{column}` holds {text:?}, not a uuid: {e}"),
                )
            })
        };
        let (aggregate_id, aggregate_type) = match &self.stream {
            Some((id, name)) => (*id, name.clone()),
            None => (
                uuid(c.aggregate_id, "aggregate_id")?,
                self.intern(c.aggregate_type),
            ),
        };
        let metadata = match c.metadata {
            Some(json) => Some(
                serde_json::from_str(json)
                    .map_err(|e| Error::corrupt(what(), format!("column `metadata` is not JSON: {e}")))?,
            ),
            None => None,
        };
        let envelope = EventEnvelope {
            event_id: uuid(c.event_id, "event_id")?,
            event_type: self.intern(c.event_type),
            event_version: unsigned(c.event_version, "event_version", what)?,
            aggregate_id,
            aggregate_type,
            aggregate_version: unsigned(c.aggregate_version, "aggregate_version", what)?,
            occurred_at: parse_timestamp(c.occurred_at, "occurred_at", what)?,
            correlation_id: c
                .correlation_id
                .map(|id| uuid(id, "correlation_id"))
                .transpose()?,
            causation_id: c.causation_id.map(|id| uuid(id, "causation_id")).transpose()?,
            request_id: c
                .request_id
                .map(|id| {
                    RequestId::new(id)
                        .map_err(|e| Error::corrupt(what(), format!("column `request_id`: {e}")))
                })
                .transpose()?,
            metadata,
            payload: Arc::from(c.payload),
        };
        Ok(StoredEvent {
            position: unsigned(c.position, "position", what)?,
            envelope,
        })
    }
}
