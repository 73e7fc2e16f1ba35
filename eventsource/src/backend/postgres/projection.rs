//! A read model in PostgreSQL, each batch committed in one transaction with its checkpoint.

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use super::{query_error, PostgresSubscriptionStore};
use crate::event::StoredEvent;
use crate::projection::ReadModelStore;
use crate::subscription::{HandlerError, SubscriptionStore};

/// The transaction a [`PostgresProjection`] writes its read model in.
pub type PgTransaction = sqlx::Transaction<'static, sqlx::Postgres>;

/// A projection whose read model is tables of its own in PostgreSQL.
///
/// Each method gets the transaction in which the projection's checkpoint is then stored:
/// what it writes there commits with the checkpoint or not at all. Write through it, as
/// `sqlx::query(...).execute(&mut **tx)`, and nothing else: a write outside it would not be
/// undone with the batch. A method that fails rolls the transaction back.
///
/// The transaction of [`apply`](Self::apply) is bounded by the projection's lease: if it sits
/// idle between two statements for about a lease (half as long again as the lease has left
/// when it begins, at least 1 s: the process was paused, or `apply` awaited something slow),
/// the server rolls it back, so that the standby taking the lease over is not held up by its
/// locks. The batch is then applied again, by whichever consumer holds the lease. Keep slow
/// work out of `apply`'s transaction.
#[async_trait]
pub trait PostgresProjection: Send + 'static {
    /// Creates the read model's tables if missing (`CREATE TABLE IF NOT EXISTS`); run before
    /// the projection starts, by every instance.
    async fn setup(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        let _ = tx;
        Ok(())
    }

    /// Applies a batch of events, in feed order.
    async fn apply(&mut self, tx: &mut PgTransaction, events: &[StoredEvent]) -> Result<(), HandlerError>;

    /// Empties the read model, for a rebuild.
    async fn reset(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError>;

    /// Makes this read model the one queries read (for instance `CREATE OR REPLACE VIEW`
    /// over its tables), for a blue/green rebuild. Nothing by default. It runs with a
    /// `lock_timeout` of 2 s, so that it fails (to be tried again) rather than stall every
    /// query of the view behind a long reader.
    async fn go_live(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        let _ = tx;
        Ok(())
    }
}

/// A [`PostgresProjection`]'s read model, in the database of a subscription store whose
/// table keeps its checkpoint and lease.
///
/// Each transaction runs in a task of its own, so that a caller that stops waiting for it
/// (a cancelled catch-up, a shutdown) never leaves it open on a pooled connection, holding
/// row locks: it commits or rolls back all the same.
pub struct PostgresReadModel<P> {
    subscriptions: PostgresSubscriptionStore,
    projection: Arc<tokio::sync::Mutex<P>>,
}

impl<P> std::fmt::Debug for PostgresReadModel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresReadModel")
            .field("projection", &std::any::type_name::<P>())
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

impl<P: PostgresProjection> PostgresReadModel<P> {
    /// The read model of `projection`, its checkpoint in `subscriptions`' table (of the same
    /// database: [`PostgresEventStore::subscription_store`](super::PostgresEventStore::subscription_store)).
    pub fn new(subscriptions: PostgresSubscriptionStore, projection: P) -> Self {
        PostgresReadModel {
            subscriptions,
            projection: Arc::new(tokio::sync::Mutex::new(projection)),
        }
    }

    /// The pool of its database.
    pub(crate) fn pool(&self) -> &sqlx::PgPool {
        &self.subscriptions.pool
    }

    /// The projection, locked by each transaction.
    pub(crate) fn projection(&self) -> &Arc<tokio::sync::Mutex<P>> {
        &self.projection
    }

    /// Runs `step` in one transaction, in a task of its own; committed if it gives `Ok(true)`,
    /// rolled back otherwise.
    async fn transaction(&self, step: Step) -> Result<bool, HandlerError> {
        let (subscriptions, projection) = (self.subscriptions.clone(), self.projection.clone());
        tokio::spawn(async move {
            let mut projection = projection.lock().await;
            let mut tx = subscriptions
                .pool
                .begin()
                .await
                .map_err(|e| query_error("cannot begin a read model's transaction", e))?;
            let outcome = step.run(&mut *projection, &subscriptions, &mut tx).await;
            match outcome {
                Ok(true) => tx
                    .commit()
                    .await
                    .map_err(|e| query_error("cannot commit a read model's transaction", e))?,
                // At once, not when the connection is next used: its locks go now.
                _ => {
                    let _ = tx.rollback().await;
                }
            }
            outcome
        })
        .await
        .map_err(|e| HandlerError::from(format!("a read model's transaction panicked: {e}")))?
    }
}

/// The advisory lock that serializes read models' set-ups, resets and switches: "readmodl".
const READ_MODEL_LOCK: i64 = 0x7265_6164_6d6f_646c;

/// What one transaction of a read model does.
enum Step {
    Setup,
    Commit {
        name: String,
        owner: Uuid,
        after: Option<u64>,
        events: Vec<StoredEvent>,
        last: u64,
    },
    Reset {
        name: String,
    },
    GoLive,
}

impl Step {
    async fn run<P: PostgresProjection>(
        self,
        projection: &mut P,
        subscriptions: &PostgresSubscriptionStore,
        tx: &mut PgTransaction,
    ) -> Result<bool, HandlerError> {
        if !matches!(self, Step::Commit { .. }) {
            // Instances starting together would race their `CREATE TABLE IF NOT EXISTS`.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(READ_MODEL_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        match self {
            Step::Setup => projection.setup(tx).await?,
            Step::Commit {
                name,
                owner,
                after,
                events,
                last,
            } => {
                subscriptions.bound_by_lease_on(&mut **tx, &name, owner).await?;
                if !events.is_empty() {
                    projection.apply(tx, &events).await?;
                }
                // The checkpoint moves only from `after`, in the same transaction: a commit
                // made again after its first try committed (a lost answer), or a consumer
                // whose batch was overtaken, rolls its batch back.
                return Ok(subscriptions
                    .advance_checkpoint_on(&mut **tx, &name, owner, after, last)
                    .await?);
            }
            Step::Reset { name } => {
                projection.reset(tx).await?;
                subscriptions.reset_on(&mut **tx, &name).await?;
            }
            Step::GoLive => {
                // Repointing a view waits for every query reading it, and every new query
                // then waits behind it: give up after a moment rather than stall the readers
                // behind a long one (the caller may try again).
                sqlx::query("SET LOCAL lock_timeout = '2s'")
                    .execute(&mut **tx)
                    .await?;
                projection.go_live(tx).await?
            }
        }
        Ok(true)
    }
}

#[async_trait]
impl<P: PostgresProjection> ReadModelStore for PostgresReadModel<P> {
    fn subscriptions(&self) -> Arc<dyn SubscriptionStore> {
        Arc::new(self.subscriptions.clone())
    }

    async fn setup(&self) -> Result<(), HandlerError> {
        self.transaction(Step::Setup).await.map(drop)
    }

    async fn commit(
        &self,
        name: &str,
        owner: Uuid,
        after: Option<u64>,
        events: &[StoredEvent],
        last: u64,
    ) -> Result<bool, HandlerError> {
        self.transaction(Step::Commit {
            name: name.to_owned(),
            owner,
            after,
            events: events.to_vec(),
            last,
        })
        .await
    }

    async fn reset(&self, name: &str) -> Result<(), HandlerError> {
        self.transaction(Step::Reset {
            name: name.to_owned(),
        })
        .await
        .map(drop)
    }

    async fn go_live(&self) -> Result<(), HandlerError> {
        self.transaction(Step::GoLive).await.map(drop)
    }

    /// A projection of PostgreSQL's own kind cannot be verified (see
    /// [`crate::projection::verify`]).
    fn verifier(&self) -> Option<&dyn crate::projection::VerifiableReadModel> {
        None
    }
}
