//! A read model in SQLite, each batch committed in one transaction with its checkpoint.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Transaction, TransactionBehavior};
use uuid::Uuid;

use super::{store_error, SqliteSubscriptionStore};
use crate::event::StoredEvent;
use crate::projection::ReadModelStore;
use crate::subscription::{HandlerError, SubscriptionStore};

/// A projection whose read model is tables of its own in the SQLite database of its
/// checkpoints.
///
/// Each method gets the transaction in which the checkpoint is then stored, and runs on the
/// database's connection (a blocking thread for a file): what it writes there commits with
/// the checkpoint or not at all. A method that fails rolls the transaction back.
pub trait SqliteProjection: Send + 'static {
    /// Creates the read model's tables if missing (`CREATE TABLE IF NOT EXISTS`).
    fn setup(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        let _ = tx;
        Ok(())
    }

    /// Applies a batch of events, in feed order.
    fn apply(&mut self, tx: &Transaction<'_>, events: &[StoredEvent]) -> Result<(), HandlerError>;

    /// Empties the read model, for a rebuild.
    fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError>;

    /// Makes this read model the one queries read (for instance a view over its tables,
    /// dropped and created again), for a blue/green rebuild. Nothing by default.
    fn go_live(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        let _ = tx;
        Ok(())
    }
}

/// A [`SqliteProjection`]'s read model, in the database of the subscription store that keeps
/// its checkpoint and lease (in that store's tables, of its table prefix).
pub struct SqliteReadModel<P> {
    subscriptions: SqliteSubscriptionStore,
    projection: Arc<Mutex<P>>,
}

impl<P> std::fmt::Debug for SqliteReadModel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReadModel")
            .field("projection", &std::any::type_name::<P>())
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

impl<P: SqliteProjection> SqliteReadModel<P> {
    /// The read model of `projection`, in the database of `subscriptions`.
    pub fn new(subscriptions: SqliteSubscriptionStore, projection: P) -> Self {
        SqliteReadModel {
            subscriptions,
            projection: Arc::new(Mutex::new(projection)),
        }
    }

    /// The database of its tables and checkpoint.
    pub(crate) fn database(&self) -> &super::Database {
        self.subscriptions.database()
    }

    /// The projection, locked by each transaction.
    pub(crate) fn projection(&self) -> &Arc<Mutex<P>> {
        &self.projection
    }

    /// Runs `step` on the projection in one `BEGIN IMMEDIATE` transaction, committed if it
    /// returns `Ok(true)`.
    async fn transaction<F>(&self, step: F) -> Result<bool, HandlerError>
    where
        F: FnOnce(&mut P, &Transaction<'_>) -> Result<bool, HandlerError> + Send + 'static,
    {
        let projection = self.projection.clone();
        let outcome = self
            .subscriptions
            .database()
            .write(move |connection| {
                let fail = |e| store_error("a read model's transaction failed", e);
                let tx = connection
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(fail)?;
                let mut projection = projection.lock().unwrap_or_else(|p| p.into_inner());
                match step(&mut projection, &tx) {
                    Ok(true) => tx.commit().map(|()| Ok(true)).map_err(fail),
                    // Dropping the transaction rolls it back.
                    other => Ok(other),
                }
            })
            .await?;
        outcome
    }
}

#[async_trait]
impl<P: SqliteProjection> ReadModelStore for SqliteReadModel<P> {
    fn subscriptions(&self) -> Arc<dyn SubscriptionStore> {
        Arc::new(self.subscriptions.clone())
    }

    async fn setup(&self) -> Result<(), HandlerError> {
        self.transaction(|projection, tx| projection.setup(tx).map(|()| true))
            .await
            .map(drop)
    }

    async fn commit(
        &self,
        name: &str,
        owner: Uuid,
        after: Option<u64>,
        events: &[StoredEvent],
        last: u64,
    ) -> Result<bool, HandlerError> {
        let (name, events) = (name.to_owned(), events.to_vec());
        let beyond = |p: u64| format!("checkpoint {p} is beyond what SQLite can store");
        let last = i64::try_from(last).map_err(|_| beyond(last))?;
        let after = after
            .map(|p| i64::try_from(p).map_err(|_| beyond(p)))
            .transpose()?;
        let sql = self.subscriptions.sql().clone();
        self.transaction(move |projection, tx| {
            if !events.is_empty() {
                projection.apply(tx, &events)?;
            }
            // The checkpoint moves only from `after`, in the same transaction: a consumer that
            // lost its lease, or whose batch was overtaken, rolls its batch back. Inside the
            // transaction's write lock nobody can take the lease meanwhile.
            let params = (name, owner.hyphenated().to_string(), last, after);
            Ok(tx.execute(&sql.advance, params)? > 0)
        })
        .await
    }

    async fn reset(&self, name: &str) -> Result<(), HandlerError> {
        let (name, sql) = (name.to_owned(), self.subscriptions.sql().clone());
        self.transaction(move |projection, tx| {
            projection.reset(tx)?;
            tx.execute(&sql.reset, [name])?;
            Ok(true)
        })
        .await
        .map(drop)
    }

    async fn go_live(&self) -> Result<(), HandlerError> {
        self.transaction(|projection, tx| projection.go_live(tx).map(|()| true))
            .await
            .map(drop)
    }
    /// A projection of SQLite's own kind cannot be verified (see
    /// [`crate::projection::verify`]).
    fn verifier(&self) -> Option<&dyn crate::projection::VerifiableReadModel> {
        None
    }
}
