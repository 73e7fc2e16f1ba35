//! The SQLite event store.

use std::path::Path;
use std::sync::OnceLock;

use async_trait::async_trait;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{read, schema, signed, timestamp_text, unsigned, WriteTransaction, BACKEND};
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{validate_batch, EventStore, EventStream};

/// Rows per `INSERT` statement at most; a batch is written in chunks of powers of two up to
/// this, so only a few statement shapes are ever prepared and cached.
const MAX_ROWS_PER_INSERT: usize = 64;

/// Columns of an `INSERT`: all but the position, which SQLite assigns.
const COLUMNS: usize = 11;

const STREAM_VERSION: &str = "SELECT aggregate_version FROM events \
    WHERE aggregate_id = ?1 AND aggregate_type = ?2 ORDER BY aggregate_version DESC LIMIT 1";

/// An event store in a SQLite database.
///
/// Cheap to clone: clones share the pool. See the [module docs](super) for the storage and
/// the behaviour under concurrent writers.
#[derive(Clone, Debug)]
pub struct SqliteEventStore {
    pool: SqlitePool,
}

impl SqliteEventStore {
    /// Opens the store on a file, created if missing, or on `:memory:` (see
    /// [`connect`](super::connect)), creating its table if missing.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_pool(super::connect(path).await?).await
    }

    /// The store on a pool of the program's own, creating its table if missing.
    ///
    /// On an in-memory database the pool must keep a single connection (or use a named
    /// shared-cache database) so that all its connections see one database.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        schema::EVENTS.create(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// An event's columns as bound to the `INSERT`.
struct Encoded<'a> {
    event_id: String,
    event: &'a EventEnvelope,
    aggregate_version: i64,
    occurred_at: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    metadata: Option<String>,
}

impl<'a> Encoded<'a> {
    fn new(event: &'a EventEnvelope) -> Result<Self> {
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
            event,
            aggregate_version: signed(event.aggregate_version, "aggregate version")?,
            occurred_at: timestamp_text(&event.occurred_at, || format!("event {}", event.event_id))?,
            correlation_id: event.correlation_id.map(|id| id.hyphenated().to_string()),
            causation_id: event.causation_id.map(|id| id.hyphenated().to_string()),
            metadata,
        })
    }
}

/// The `INSERT` of `rows` events, built once per size.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        let row = format!("({})", ["?"; COLUMNS].join(", "));
        (0..=MAX_ROWS_PER_INSERT.trailing_zeros())
            .map(|power| {
                format!(
                    "INSERT INTO events (event_id, event_type, event_version, aggregate_id, aggregate_type, \
                     aggregate_version, occurred_at, correlation_id, causation_id, metadata, payload) VALUES {}",
                    vec![row.as_str(); 1 << power].join(", ")
                )
            })
            .collect()
    });
    &all[rows.trailing_zeros() as usize]
}

/// The stream's version as the connection sees it.
async fn current_version(
    connection: &mut SqliteConnection,
    aggregate_id: &str,
    aggregate_type: &str,
) -> Result<u64> {
    let version: Option<i64> = sqlx::query_scalar(STREAM_VERSION)
        .bind(aggregate_id)
        .bind(aggregate_type)
        .fetch_optional(&mut *connection)
        .await
        .map_err(|e| {
            Error::store(
                BACKEND,
                format!("cannot read the version of {aggregate_type} {aggregate_id}"),
                e,
            )
        })?;
    match version {
        Some(version) => unsigned(version, "aggregate_version", || {
            format!("the SQLite stream of {aggregate_type} {aggregate_id}")
        }),
        None => Ok(0),
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
    ) -> Result<u64> {
        validate_batch(aggregate_id, aggregate_type, expected_version, events)?;
        let encoded = events.iter().map(Encoded::new).collect::<Result<Vec<_>>>()?;
        let id = aggregate_id.hyphenated().to_string();
        let fail = |e| {
            Error::store(
                BACKEND,
                format!("cannot append to {aggregate_type} {aggregate_id}"),
                e,
            )
        };

        // IMMEDIATE takes the write lock up front (waiting out the busy timeout), so writers
        // queue here rather than fail when a read transaction turns into a write.
        let mut tx = WriteTransaction::begin(&self.pool).await.map_err(fail)?;
        let actual = current_version(tx.connection(), &id, aggregate_type).await?;
        if actual != expected_version {
            // The conflict is the answer even if the rollback fails (the guard retries it).
            let _ = tx.rollback().await;
            return Err(Error::Conflict {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id,
                expected: expected_version,
                actual,
            });
        }
        let mut rest = encoded.as_slice();
        while !rest.is_empty() {
            let rows = MAX_ROWS_PER_INSERT.min(1 << rest.len().ilog2());
            let (chunk, tail) = rest.split_at(rows);
            let mut insert = sqlx::query(insert_sql(rows));
            for e in chunk {
                insert = insert
                    .bind(e.event_id.as_str())
                    .bind(&*e.event.event_type)
                    .bind(i64::from(e.event.event_version))
                    .bind(id.as_str())
                    .bind(aggregate_type)
                    .bind(e.aggregate_version)
                    .bind(e.occurred_at.as_str())
                    .bind(e.correlation_id.as_deref())
                    .bind(e.causation_id.as_deref())
                    .bind(e.metadata.as_deref())
                    .bind(&*e.event.payload);
            }
            match insert.execute(tx.connection()).await {
                Ok(_) => rest = tail,
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    let reused_id = db.message().contains("event_id");
                    // The conflict is the answer even if the rollback fails (the guard retries it).
                    let _ = tx.rollback().await;
                    return Err(if reused_id {
                        self.reused_event_id(&encoded).await
                    } else {
                        // Only a writer that bypassed the write lock could get here first.
                        let mut connection = self.pool.acquire().await.map_err(fail)?;
                        Error::Conflict {
                            aggregate_type: aggregate_type.to_owned(),
                            aggregate_id,
                            expected: expected_version,
                            actual: current_version(&mut connection, &id, aggregate_type).await?,
                        }
                    });
                }
                Err(e) => return Err(fail(e)),
            }
        }
        tx.commit().await.map_err(fail)?;
        Ok(expected_version + events.len() as u64)
    }

    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        read::stream(&self.pool, aggregate_id, aggregate_type, after_version)
    }

    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let mut connection = self.pool.acquire().await.map_err(|e| {
            Error::store(
                BACKEND,
                format!("cannot read the version of {aggregate_type} {aggregate_id}"),
                e,
            )
        })?;
        current_version(
            &mut connection,
            &aggregate_id.hyphenated().to_string(),
            aggregate_type,
        )
        .await
    }

    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        read::log(&self.pool, after_position)
    }
}

impl SqliteEventStore {
    /// The error for a batch that holds an event id already stored.
    async fn reused_event_id(&self, batch: &[Encoded<'_>]) -> Error {
        for e in batch {
            let found = sqlx::query_scalar::<_, i64>("SELECT 1 FROM events WHERE event_id = ?")
                .bind(e.event_id.as_str())
                .fetch_optional(&self.pool)
                .await;
            match found {
                Ok(Some(_)) => {
                    return Error::InvalidInput(format!("event id {} is already stored", e.event_id));
                }
                Ok(None) => {}
                Err(err) => return Error::store(BACKEND, "cannot look up a reused event id", err),
            }
        }
        Error::InvalidInput("an event id of the batch is already stored".into())
    }
}
