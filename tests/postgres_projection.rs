//! A PostgreSQL read model's transaction and its lease: a consumer frozen inside its
//! transaction holds its locks no longer than its lease, and the read model stays exact.
//! The tests need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use eventsourcing_kit::testing::envelope;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsourcing_kit::backend::postgres::{
    pool_options, PgTransaction, PostgresEventStore, PostgresProjection, PostgresReadModel,
};
use eventsourcing_kit::projection::ReadModelStore;
use eventsourcing_kit::subscription::{HandlerError, SubscriptionStore};
use eventsourcing_kit::{EventStore, StoredEvent, Uuid};
use futures_util::TryStreamExt;
use tokio::sync::Notify;

/// Counts the events it applies in one row, and can freeze inside its transaction, after its
/// write, as a paused process would.
struct Counter {
    table: String,
    freeze: Option<(Arc<Notify>, Arc<Notify>)>,
}

#[async_trait]
impl PostgresProjection for Counter {
    async fn setup(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} (k TEXT PRIMARY KEY, n BIGINT NOT NULL)",
            self.table
        );
        sqlx::query(&create).execute(&mut **tx).await?;
        Ok(())
    }

    async fn apply(&mut self, tx: &mut PgTransaction, events: &[StoredEvent]) -> Result<(), HandlerError> {
        let upsert = format!(
            "INSERT INTO {0} (k, n) VALUES ('total', $1) ON CONFLICT (k) DO UPDATE SET n = {0}.n + EXCLUDED.n",
            self.table
        );
        sqlx::query(&upsert)
            .bind(events.len() as i64)
            .execute(&mut **tx)
            .await?;
        if let Some((entered, thawed)) = &self.freeze {
            entered.notify_one();
            thawed.notified().await;
        }
        Ok(())
    }

    async fn reset(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(&format!("DELETE FROM {}", self.table))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_consumer_frozen_in_its_transaction_blocks_the_standby_no_longer_than_its_lease() {
    let Some(url) = common::postgres_url("frozen read model owner") else {
        return;
    };
    let pool = pool_options().max_connections(6).connect(&url).await.unwrap();
    // Dropped at the end, also when the test fails.
    let scratch = common::ScratchSchema::new(&url, "frozen");
    let schema = scratch.name.clone();
    let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
    events.migrate().await.unwrap();
    let table = format!("\"{schema}\".counts");
    let subscriptions = events.subscription_store();

    let id = Uuid::new_v4();
    let batch: Vec<_> = (1..=3).map(|version| envelope(id, "Counter", version)).collect();
    events.append(id, "Counter", 0, &batch).await.unwrap();
    let stored: Vec<StoredEvent> = events.read_all(0).try_collect().await.unwrap();
    let last = stored.last().unwrap().position;

    // The owner takes a short lease, writes its batch and freezes before committing.
    let (entered, thawed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let frozen = PostgresReadModel::new(
        subscriptions.clone(),
        Counter {
            table: table.clone(),
            freeze: Some((entered.clone(), thawed.clone())),
        },
    );
    frozen.setup().await.unwrap();
    let (owner, standby) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(subscriptions
        .acquire("counts", owner, Duration::from_secs(1))
        .await
        .unwrap());
    let first = {
        let stored = stored.clone();
        tokio::spawn(async move { frozen.commit("counts", owner, None, &stored, last).await })
    };
    entered.notified().await;

    // Once the lease ran out, the standby takes it and commits the same batch: the frozen
    // transaction's row lock must not hold it past the lease (and a margin).
    let standby_model = PostgresReadModel::new(
        subscriptions.clone(),
        Counter {
            table: table.clone(),
            freeze: None,
        },
    );
    let mut taken = false;
    for _ in 0..100 {
        if subscriptions
            .acquire("counts", standby, Duration::from_secs(30))
            .await
            .unwrap()
        {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken, "the standby never took the lease");
    let committed = tokio::time::timeout(
        Duration::from_secs(10),
        standby_model.commit("counts", standby, None, &stored, last),
    )
    .await
    .expect("the standby waited on the frozen consumer's locks past its lease");
    assert!(committed.unwrap());

    // The frozen consumer thaws: its transaction is gone, its batch is not applied twice.
    thawed.notify_one();
    let outcome = first.await.unwrap();
    assert!(
        !matches!(outcome, Ok(true)),
        "the frozen consumer committed after losing its lease"
    );
    let total: i64 = sqlx::query_scalar(&format!("SELECT n FROM {table} WHERE k = 'total'"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 3, "the batch was applied other than once");
    assert_eq!(subscriptions.checkpoint("counts").await.unwrap(), Some(last));
    pool.close().await;
}
