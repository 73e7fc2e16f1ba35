//! Saves in the application's own transaction: its rows and the events commit together.

use sqlx::error::ErrorKind;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::projection::PgTransaction;
use super::{query_error, to_bigint, PostgresEventStore};
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch};
use crate::request::RequestId;
use crate::root::AggregateRoot;

/// PostgreSQL's code for an object not in the state required: what the append trigger
/// raises for a transaction that wrote before it announced its appends.
const NOT_ANNOUNCED: &str = "55000";

impl PostgresEventStore {
    /// Begins a transaction on the store's pool in which the application writes its own rows
    /// and saves aggregates ([`save_in_transaction`](Self::save_in_transaction)): whatever it
    /// writes commits with the events, or nothing does.
    ///
    /// The transaction is announced as one that appends events before anything is written
    /// (see the [module docs](super)), so the feed waits for it until it ends: consumers see no
    /// event appended after it began until it commits or rolls back. Keep it short.
    ///
    /// # Errors
    ///
    /// A store error as [`Error::Store`] if the pool cannot give a connection or the
    /// transaction cannot begin.
    ///
    /// # Cancel safety
    ///
    /// Dropped, nothing is left: the transaction, if begun, rolls back when its connection goes
    /// back to the pool.
    pub async fn begin(&self) -> Result<PgTransaction> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| query_error("cannot begin a transaction", e))?;
        self.announce(&mut tx).await?;
        Ok(tx)
    }

    /// Announces the transaction of `connection` (begun by the application, on a connection
    /// of its own) as one that appends events, as [`begin`](Self::begin) does: call it before
    /// the transaction's first write.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if the transaction wrote already; nothing is changed, but the
    /// transaction is aborted by the error and must be rolled back.
    ///
    /// # Cancel safety
    ///
    /// Dropped, the transaction may or may not be announced: roll it back.
    pub async fn announce(&self, connection: &mut PgConnection) -> Result<()> {
        let announce = format!("SELECT {}()", self.layout.begin_append);
        match sqlx::query(&announce).execute(&mut *connection).await {
            Ok(_) => Ok(()),
            Err(e) => Err(not_announced(e)),
        }
    }

    /// Appends `events` to a stream in the transaction of `connection` (from
    /// [`begin`](Self::begin), or announced with [`announce`](Self::announce)), if the stream
    /// is at `expected_version`, as [`EventStore::append`](crate::EventStore::append) does:
    /// the same checks, the same conflict. The events are stored when the transaction
    /// commits; a refusal leaves the transaction as it was (the append runs in a savepoint),
    /// so the application may go on or roll back.
    ///
    /// Events carrying a request id record it in the request index, in the transaction: a
    /// request id recorded already is [`Error::RequestRecorded`].
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] if the stream is not at `expected_version` (also when a
    /// transaction that committed first took one of the versions); [`Error::InvalidInput`]
    /// for a batch the contract refuses, an event id stored already, or a transaction that
    /// wrote before it was announced; [`Error::Store`] if the database failed.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, the savepoint may be left open in the transaction: roll the
    /// transaction back.
    pub async fn append_in_transaction(
        &self,
        connection: &mut PgConnection,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        let request = events[0].request_id.clone();
        // Outside the savepoint: an announcement rolled back with a refused append would
        // leave the transaction unable to append again.
        self.announce(connection).await?;
        let mut savepoint = connection
            .begin()
            .await
            .map_err(|e| query_error("cannot begin a savepoint", e))?;
        match self.insert_in(&mut savepoint, &batch, request.as_ref()).await {
            Ok(Some(appended)) => {
                // Delivered when the transaction commits, to the consumers of every process.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(self.notifier.channel())
                    .execute(&mut *savepoint)
                    .await
                    .map_err(|e| query_error("cannot notify the consumers", e))?;
                savepoint
                    .commit()
                    .await
                    .map_err(|e| query_error("cannot release a savepoint", e))?;
                Ok(appended)
            }
            Ok(None) => {
                let _ = savepoint.rollback().await;
                let actual = sqlx::query_scalar::<_, Option<i64>>(&self.sql.stream_version)
                    .bind(aggregate_id)
                    .bind(aggregate_type)
                    .fetch_one(&mut *connection)
                    .await
                    .map_err(|e| query_error("cannot read a stream's version", e))?;
                let actual = super::read::version_of(actual.unwrap_or(0), &self.sql.table)?;
                Err(Error::Conflict {
                    aggregate_type: aggregate_type.to_owned(),
                    aggregate_id,
                    expected: expected_version,
                    actual,
                })
            }
            Err(e) => {
                let _ = savepoint.rollback().await;
                Err(e)
            }
        }
    }

    /// Saves the unsaved events of `root` in the transaction of `connection`, as
    /// [`append_in_transaction`](Self::append_in_transaction) appends them, expecting the
    /// stream at the version `root` was loaded at. The root's events count as saved once this
    /// returns; if the transaction then rolls back, load the aggregate again.
    ///
    /// # Errors
    ///
    /// As [`append_in_transaction`](Self::append_in_transaction); an event that cannot be
    /// stored is [`Error::Serialization`]. On an error the root keeps its events.
    ///
    /// # Cancel safety
    ///
    /// As [`append_in_transaction`](Self::append_in_transaction); the root keeps its events.
    pub async fn save_in_transaction<A: Aggregate>(
        &self,
        connection: &mut PgConnection,
        root: &mut AggregateRoot<A>,
    ) -> Result<Appended> {
        let envelopes = root.envelopes_to_save()?.without_keys()?;
        let appended = self
            .append_in_transaction(
                connection,
                root.id(),
                A::TYPE_NAME,
                root.saved_version(),
                &envelopes,
            )
            .await?;
        root.mark_saved(appended.position);
        Ok(appended)
    }

    /// Inserts the batch in the savepoint: its outcome, or `None` if its stream was not at
    /// the expected version.
    async fn insert_in(
        &self,
        savepoint: &mut PgConnection,
        batch: &Batch<'_>,
        request: Option<&RequestId>,
    ) -> Result<Option<Appended>> {
        let expected = to_bigint(batch.expected_version, "expected version")?;
        let c = super::append::Columns::of(batch.events)?;
        let sql = match request {
            Some(_) => &self.sql.append_request_in_transaction,
            None => &self.sql.append_in_transaction,
        };
        let mut query = c.bind(
            sqlx::query_as::<_, (i64, i64, Option<i64>)>(sql)
                .bind(batch.aggregate_id)
                .bind(batch.aggregate_type)
                .bind(expected),
        );
        if request.is_some() {
            query = query.bind(None::<i64>);
        }
        match query.fetch_one(&mut *savepoint).await {
            Ok((_, inserted, Some(last))) if inserted == batch.events.len() as i64 => Ok(Some(Appended {
                version: batch.version_after(),
                position: super::read::version_of(last, &self.sql.table)?,
            })),
            Ok(_) => Ok(None),
            Err(sqlx::Error::Database(db)) if db.kind() == ErrorKind::UniqueViolation => {
                match db.constraint() {
                    Some(super::sql::REQUEST_KEY) => Err(Error::RequestRecorded {
                        request_id: request.map(ToString::to_string).unwrap_or_default(),
                    }),
                    Some(super::sql::EVENT_ID_KEY) => Err(Error::InvalidInput(format!(
                        "cannot append to {} {}: an event id of the batch is already stored",
                        batch.aggregate_type, batch.aggregate_id
                    ))),
                    // A transaction that committed first took one of the versions.
                    Some(super::sql::STREAM_VERSION_KEY) => Ok(None),
                    _ => Err(query_error(
                        &format!("cannot append to {} {}", batch.aggregate_type, batch.aggregate_id),
                        sqlx::Error::Database(db),
                    )),
                }
            }
            Err(e) => Err(query_error(
                &format!("cannot append to {} {}", batch.aggregate_type, batch.aggregate_id),
                e,
            )),
        }
    }
}

/// The error of an announcement refused because the transaction wrote first, or any other.
fn not_announced(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(NOT_ANNOUNCED) => Error::InvalidInput(
            "the transaction wrote before it announced its appends: begin it with PostgresEventStore::begin, \
             or call PostgresEventStore::announce before its first write"
                .into(),
        ),
        _ => query_error("cannot announce the transaction's appends", e),
    }
}
