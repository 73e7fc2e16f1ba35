//! Reading events: a stream or the whole log, a page at a time.
//!
//! Each page is one short query, so a reader holds no connection, lock or read transaction
//! between pages and can be dropped at any point. SQLite builds the page as one JSON array
//! (`json_group_array`), which crosses from sqlx's worker thread as a single value: several
//! times faster than one row at a time, where sqlx copies every column of every row. When
//! that JSON does not decode (a value of the wrong type in some row), the page is read again
//! row by row, which names the row and the column at fault.

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::{stream, StreamExt};
use serde::Deserialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{parse_timestamp, unsigned, BACKEND};
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::EventStream;

/// Rows per page.
const PAGE: usize = 1_000;

macro_rules! columns {
    () => {
        "position, event_id, event_type, event_version, aggregate_id, aggregate_type, \
         aggregate_version, occurred_at, correlation_id, causation_id, metadata, payload"
    };
}

macro_rules! stream_page {
    () => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM events WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND aggregate_version > ?3 \
             ORDER BY aggregate_version LIMIT ?4"
        )
    };
}

macro_rules! log_page {
    () => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
        )
    };
}

// The page as one JSON array of rows. JSON would take a value of the wrong type as something
// it is not (SQLite reads a BLOB as its binary JSON), so: a version or a name that is not of
// its column's type becomes null, which fails to decode and sends the page to the row by row
// read; the ids, timestamps and metadata are cast to text, which only changes a BLOB, whose
// bytes then fail to parse as what the column holds, as every other bad value does. The rows
// come in the order of the inner query; the decoder checks that they do.
macro_rules! as_json {
    ($page:expr) => {
        concat!(
            "SELECT json_group_array(json_array(position, CAST(event_id AS TEXT), \
             iif(typeof(event_type) = 'text', event_type, NULL), \
             iif(typeof(event_version) = 'integer', event_version, NULL), \
             CAST(aggregate_id AS TEXT), iif(typeof(aggregate_type) = 'text', aggregate_type, NULL), \
             iif(typeof(aggregate_version) = 'integer', aggregate_version, NULL), \
             CAST(occurred_at AS TEXT), CAST(correlation_id AS TEXT), CAST(causation_id AS TEXT), \
             CAST(metadata AS TEXT), iif(typeof(payload) = 'text', payload, NULL))) FROM (",
            $page,
            ")"
        )
    };
}

const STREAM_PAGE: &str = stream_page!();
const STREAM_PAGE_JSON: &str = as_json!(stream_page!());
const LOG_PAGE: &str = log_page!();
const LOG_PAGE_JSON: &str = as_json!(log_page!());

/// The events of one stream after a version, in version order.
pub(super) fn stream(
    pool: &SqlitePool,
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
    pages(pool.clone(), cursor, decoder)
}

/// Every event after a position, in position order.
pub(super) fn log(pool: &SqlitePool, after: u64) -> EventStream<'static> {
    let Ok(after_position) = i64::try_from(after) else {
        return Box::pin(stream::empty());
    };
    pages(
        pool.clone(),
        Cursor::Log { after_position },
        Decoder {
            stream: None,
            names: Vec::new(),
        },
    )
}

fn pages(pool: SqlitePool, cursor: Cursor, decoder: Decoder) -> EventStream<'static> {
    let pages = stream::unfold(Some((pool, cursor, decoder)), |state| async move {
        let (pool, mut cursor, mut decoder) = state?;
        let page = cursor.read(&pool, &mut decoder).await;
        // A short page is the end of what there was when it was read; an error ends the read.
        let more = match page.last() {
            Some(Ok(last)) => {
                cursor.advance(last);
                page.len() == PAGE
            }
            Some(Err(_)) => false,
            None => return None,
        };
        Some((page, more.then_some((pool, cursor, decoder))))
    });
    Box::pin(pages.flat_map(stream::iter))
}

/// Where the next page starts.
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
    fn query(
        &self,
        sql_stream: &'static str,
        sql_log: &'static str,
    ) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
        match self {
            Cursor::Stream {
                aggregate_id,
                aggregate_type,
                after_version,
            } => sqlx::query(sql_stream)
                .bind(aggregate_id.as_str())
                .bind(aggregate_type.as_str())
                .bind(*after_version)
                .bind(PAGE as i64),
            Cursor::Log { after_position } => sqlx::query(sql_log).bind(*after_position).bind(PAGE as i64),
        }
    }

    fn failed(&self, e: sqlx::Error) -> Error {
        match self {
            Cursor::Stream {
                aggregate_id,
                aggregate_type,
                ..
            } => Error::store(
                BACKEND,
                format!("cannot read the stream of {aggregate_type} {aggregate_id}"),
                e,
            ),
            Cursor::Log { .. } => Error::store(BACKEND, "cannot read the event log", e),
        }
    }

    /// The next page: its events, then the error that ended it if one did.
    async fn read(&self, pool: &SqlitePool, decoder: &mut Decoder) -> Vec<Result<StoredEvent>> {
        match self.query(STREAM_PAGE_JSON, LOG_PAGE_JSON).fetch_one(pool).await {
            Ok(row) => {
                let json: Option<&str> = row.try_get(0).ok();
                if let Some(Ok(rows)) = json.map(serde_json::from_str::<Vec<JsonRow<'_>>>) {
                    if self.in_order(&rows) {
                        return decoder.page(rows.iter().map(|row| Ok(row.columns())));
                    }
                }
            }
            // SQLite could not build the JSON (it reads a BLOB as its binary JSON, and fails on
            // one that is not): the row by row read says where.
            Err(sqlx::Error::Database(_)) => {}
            Err(e) => return vec![Err(self.failed(e))],
        }
        match self.query(STREAM_PAGE, LOG_PAGE).fetch_all(pool).await {
            Ok(rows) => decoder.page(rows.iter().map(Columns::from_row)),
            Err(e) => vec![Err(self.failed(e))],
        }
    }

    /// Whether a page's rows follow the cursor in increasing order: the versions of a
    /// stream, the positions of the log.
    fn in_order(&self, rows: &[JsonRow<'_>]) -> bool {
        let (mut last, key): (i64, fn(&JsonRow<'_>) -> i64) = match self {
            Cursor::Stream { after_version, .. } => (*after_version, |row| row.6),
            Cursor::Log { after_position } => (*after_position, |row| row.0),
        };
        rows.iter()
            .all(|row| std::mem::replace(&mut last, key(row)) < key(row))
    }

    fn advance(&mut self, event: &StoredEvent) {
        // Decoded values came from an i64 column, so they fit back into one.
        match self {
            Cursor::Stream { after_version, .. } => *after_version = event.aggregate_version as i64,
            Cursor::Log { after_position } => *after_position = event.position as i64,
        }
    }
}

/// One row of a JSON page: the columns in `columns!()` order.
#[derive(Deserialize)]
struct JsonRow<'a>(
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Cow<'a, str>,
);

impl JsonRow<'_> {
    fn columns(&self) -> Columns<'_> {
        Columns {
            position: self.0,
            event_id: &self.1,
            event_type: &self.2,
            event_version: self.3,
            aggregate_id: &self.4,
            aggregate_type: &self.5,
            aggregate_version: self.6,
            occurred_at: &self.7,
            correlation_id: self.8.as_deref(),
            causation_id: self.9.as_deref(),
            metadata: self.10.as_deref(),
            payload: &self.11,
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
}

impl<'a> Columns<'a> {
    fn from_row(row: &'a SqliteRow) -> Result<Self> {
        let position: i64 = row.try_get(0).map_err(|e| {
            Error::corrupt(
                "a row of the SQLite events table",
                format!("column `position`: {e}"),
            )
        })?;
        let what = || at_position(position);
        macro_rules! get {
            ($index:literal, $column:literal) => {
                row.try_get($index)
                    .map_err(|e| Error::corrupt(what(), format!("column `{}`: {e}", $column)))?
            };
        }
        Ok(Columns {
            position,
            event_id: get!(1, "event_id"),
            event_type: get!(2, "event_type"),
            event_version: get!(3, "event_version"),
            aggregate_id: get!(4, "aggregate_id"),
            aggregate_type: get!(5, "aggregate_type"),
            aggregate_version: get!(6, "aggregate_version"),
            occurred_at: get!(7, "occurred_at"),
            correlation_id: get!(8, "correlation_id"),
            causation_id: get!(9, "causation_id"),
            metadata: get!(10, "metadata"),
            payload: get!(11, "payload"),
        })
    }
}

fn at_position(position: i64) -> String {
    format!("the SQLite event at position {position}")
}

/// Turns rows into events, sharing one allocation per distinct type name.
struct Decoder {
    /// The stream being read, whose id and type need no decoding.
    stream: Option<(Uuid, Arc<str>)>,
    names: Vec<Arc<str>>,
}

impl Decoder {
    /// Decodes rows up to the first that fails, which ends the page.
    fn page<'a>(&mut self, rows: impl Iterator<Item = Result<Columns<'a>>>) -> Vec<Result<StoredEvent>> {
        let mut events = Vec::with_capacity(PAGE);
        for row in rows {
            let event = row.and_then(|columns| self.decode(columns));
            let failed = event.is_err();
            events.push(event);
            if failed {
                break;
            }
        }
        events
    }

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
            metadata,
            payload: Arc::from(c.payload),
        };
        Ok(StoredEvent {
            position: unsigned(c.position, "position", what)?,
            envelope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_store::EventStore;

    /// The JSON page is the path every ordinary read takes: it must decode ordinary rows,
    /// escapes and all, to what the row by row read gives.
    #[tokio::test]
    async fn json_pages_decode_to_what_rows_give() {
        let (events, _) = crate::backend::sqlite::open(":memory:").await.unwrap();
        let id = Uuid::new_v4();
        let payloads = [r#"{"a":"\"q\" \\ \n é ✓ \u0000"}"#, "[1, 2.50, null]", "{}"];
        let batch: Vec<EventEnvelope> = payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| EventEnvelope {
                event_id: Uuid::new_v4(),
                event_type: Arc::from("Ünïcode \"type\""),
                event_version: 3,
                aggregate_id: id,
                aggregate_type: Arc::from("Thing"),
                aggregate_version: i as u64 + 1,
                occurred_at: chrono::Utc::now(),
                correlation_id: (i == 0).then(Uuid::new_v4),
                causation_id: (i == 1).then(Uuid::new_v4),
                metadata: (i == 2).then(|| serde_json::json!({"k": ["v", 1]})),
                payload: Arc::from(*payload),
            })
            .collect();
        events.append(id, "Thing", 0, &batch).await.unwrap();

        let cursor = Cursor::Log { after_position: 0 };
        let row = cursor
            .query(STREAM_PAGE_JSON, LOG_PAGE_JSON)
            .fetch_one(events.pool())
            .await
            .unwrap();
        let json: &str = row.try_get(0).unwrap();
        let rows: Vec<JsonRow<'_>> = serde_json::from_str(json).unwrap();
        assert!(cursor.in_order(&rows), "rows in position order");
        let mut decoder = Decoder {
            stream: None,
            names: Vec::new(),
        };
        let fast: Vec<StoredEvent> = decoder
            .page(rows.iter().map(|row| Ok(row.columns())))
            .into_iter()
            .map(Result::unwrap)
            .collect();

        let rows = cursor
            .query(STREAM_PAGE, LOG_PAGE)
            .fetch_all(events.pool())
            .await
            .unwrap();
        let slow: Vec<StoredEvent> = decoder
            .page(rows.iter().map(Columns::from_row))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(fast, slow);
        let envelopes: Vec<EventEnvelope> = fast.into_iter().map(|e| e.envelope).collect();
        assert_eq!(envelopes, batch);
    }
}
