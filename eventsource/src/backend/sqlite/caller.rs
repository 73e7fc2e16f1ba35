//! Saves in the application's own transaction: its statements and the events commit
//! together.

use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};
use uuid::Uuid;

use super::events::{Encoded, Request, Sql, Stream};
use super::{store_error, timestamp_text, SqliteEventStore};
use crate::aggregate::Aggregate;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::event::EventEnvelope;
use crate::event_store::{Appended, Batch};
use crate::root::AggregateRoot;
use crate::slice::mask::SliceMask;

/// The savepoint each append of a [`SqliteTransaction`] runs in.
const SAVEPOINT: &str = "eventsource_append";

/// A write transaction of the store's database, from [`SqliteEventStore::transaction`]: the
/// application's own statements on [`connection`](Self::connection), and appends and saves
/// of aggregates, commit together or not at all.
pub struct SqliteTransaction<'t> {
    connection: &'t Connection,
    sql: &'t Sql,
    /// The slices of the streams it appended to.
    appended: SliceMask,
}

impl std::fmt::Debug for SqliteTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTransaction")
            .field("appended", &!self.appended.is_empty())
            .finish_non_exhaustive()
    }
}

impl SqliteTransaction<'_> {
    /// The connection the transaction runs on: the application's statements go here.
    pub fn connection(&self) -> &Connection {
        self.connection
    }

    /// Appends `events` to a stream if it is at `expected_version`, as
    /// [`EventStore::append`](crate::EventStore::append) does: the same checks, the same
    /// conflict. The events are stored when the transaction commits; a refusal leaves the
    /// transaction as it was (the append runs in a savepoint). Events carrying a request id
    /// record it in the request index, in the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] if the stream is not at `expected_version`;
    /// [`Error::RequestRecorded`] if the request id is recorded already;
    /// [`Error::InvalidInput`] for a batch the contract refuses or an event id stored
    /// already; [`Error::Store`] if the database failed.
    pub fn append(
        &mut self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        let encoded = batch
            .events
            .iter()
            .map(Encoded::new)
            .collect::<Result<Vec<_>>>()?;
        let request = match &events[0].request_id {
            Some(id) => Some(Request {
                id: id.clone(),
                fingerprint: None,
                recorded_at: timestamp_text(&crate::request::now(), || "now".into())?,
            }),
            None => None,
        };
        let fail = |e| store_error("cannot append in a transaction", e);
        self.connection
            .execute_batch(&format!("SAVEPOINT {SAVEPOINT}"))
            .map_err(fail)?;
        let stream = Stream::new(aggregate_id, aggregate_type);
        match stream.append_in(
            self.connection,
            self.sql,
            expected_version,
            &encoded,
            request.as_ref(),
        ) {
            Ok((version, position)) => {
                self.connection
                    .execute_batch(&format!("RELEASE {SAVEPOINT}"))
                    .map_err(fail)?;
                self.appended.insert_stream(aggregate_type, aggregate_id);
                Ok(Appended { version, position })
            }
            Err(e) => {
                self.connection
                    .execute_batch(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"))
                    .map_err(fail)?;
                Err(e)
            }
        }
    }

    /// Saves the unsaved events of `root`, as [`append`](Self::append) appends them,
    /// expecting the stream at the version `root` was loaded at. The root's events count as
    /// saved once this returns; if the transaction then rolls back, load the aggregate again.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append); an event that cannot be stored is
    /// [`Error::Serialization`]. On an error the root keeps its events.
    pub fn save<A: Aggregate>(&mut self, root: &mut AggregateRoot<A>) -> Result<Appended> {
        let envelopes = root.envelopes_to_save()?.without_keys()?;
        let appended = self.append(root.id(), A::TYPE_NAME, root.saved_version(), &envelopes)?;
        root.mark_saved(appended.position);
        Ok(appended)
    }
}

impl SqliteEventStore {
    /// Runs `work` in one write transaction of the store's database (`BEGIN IMMEDIATE`, on
    /// its connection's thread), and commits it if `work` returns `Ok`: the application's own
    /// statements ([`SqliteTransaction::connection`]) and the events it appends or saves
    /// there commit together, or, on an `Err`, none of them. What `work` needs it takes by
    /// value (aggregate roots too) and gives back in its result.
    ///
    /// While it runs, every other write of the database waits: keep it short.
    ///
    /// # Errors
    ///
    /// `work`'s error, after the transaction rolled back; [`Error::Store`] if the
    /// transaction could not begin or commit.
    ///
    /// # Cancel safety
    ///
    /// `work` runs to its end on the database's thread even if the future is dropped, and the
    /// transaction commits or rolls back as `work` decides.
    pub async fn transaction<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteTransaction<'_>) -> Result<T> + Send + 'static,
    {
        let sql: Arc<Sql> = self.sql.clone();
        let (value, appended) = self
            .database
            .write(move |connection| {
                let fail = |e| store_error("a transaction failed", e);
                let tx = connection
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(fail)?;
                let mut handle = SqliteTransaction {
                    connection: &tx,
                    sql: &sql,
                    appended: SliceMask::default(),
                };
                // An error drops the transaction, which rolls it back.
                let value = work(&mut handle)?;
                let appended = handle.appended;
                tx.commit().map_err(fail)?;
                Ok((value, appended))
            })
            .await?;
        self.database.appended().raise_slices(&appended);
        Ok(value)
    }
}
