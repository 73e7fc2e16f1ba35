//! One read model written once for SQLite and PostgreSQL (`SqlProjection`, `SqlReadModel`):
//! the same projection, the same statements, on both backends, exactly once (a batch whose
//! statement fails is rolled back and applied once when tried again).
//!
//! The PostgreSQL case needs `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use eventsourcing_kit::testing::envelope;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use eventsourcing_kit::backend::{self, SqlProjection, SqlReadModel, SqlWrites, Stores};
use eventsourcing_kit::subscription::Consumer;
use eventsourcing_kit::subscription::HandlerError;
use eventsourcing_kit::{Error, EventEnvelope, StoredEvent, Uuid};
use serde_json::Value;

/// Takings per till: one upsert per payment, the sum kept by the database.
struct Takings {
    /// Makes the next batch end with a statement the database refuses, once.
    fail_next: Arc<AtomicBool>,
}

impl SqlProjection for Takings {
    fn setup(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        writes.execute(
            "CREATE TABLE IF NOT EXISTS takings (
                till TEXT PRIMARY KEY, total BIGINT NOT NULL, payments BIGINT NOT NULL)",
            [],
        );
        writes.execute(
            "CREATE TABLE IF NOT EXISTS largest (till TEXT PRIMARY KEY, amount BIGINT)",
            [],
        );
        Ok(())
    }

    fn apply(&mut self, writes: &mut SqlWrites, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            let paid: Value = serde_json::from_str(&event.payload)?;
            let amount = paid["amount"].as_i64().unwrap_or(0);
            writes.execute(
                "INSERT INTO takings (till, total, payments) VALUES ($1, $2, 1)
                 ON CONFLICT (till) DO UPDATE
                 SET total = takings.total + excluded.total, payments = takings.payments + 1",
                [event.aggregate_id.into(), amount.into()],
            );
            // The same statement with a NULL, then an integer: the largest payment above 6.
            let large = (amount > 6).then_some(amount);
            writes.execute(
                "INSERT INTO largest (till, amount) VALUES ($1, CAST($2 AS BIGINT))
                 ON CONFLICT (till) DO UPDATE
                 SET amount = coalesce(excluded.amount, largest.amount)",
                [event.aggregate_id.into(), large.into()],
            );
        }
        if self.fail_next.swap(false, Ordering::SeqCst) {
            // Refused by the database after the batch's upserts ran: all of it rolls back.
            writes.execute(
                "INSERT INTO takings (till, total, payments) VALUES ($1, CAST($2 AS BIGINT), 0)",
                ["broken".into(), eventsourcing_kit::backend::SqlValue::Null],
            );
        }
        Ok(())
    }

    fn reset(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        writes.execute("DELETE FROM takings", []);
        writes.execute("DELETE FROM largest", []);
        Ok(())
    }
}

/// Appends `amounts` as payments of one till; its id.
async fn pay(stores: &Stores, amounts: &[i64]) -> Uuid {
    let till = Uuid::new_v4();
    let batch: Vec<EventEnvelope> = amounts
        .iter()
        .enumerate()
        .map(|(i, amount)| {
            let mut value = envelope(till, "Till", i as u64 + 1);
            value.payload = Arc::from(format!(r#"{{"amount":{amount}}}"#));
            value
        })
        .collect();
    stores.events.append(till, "Till", 0, &batch).await.unwrap();
    till
}

/// The read model's rows: till, total, payments.
async fn takings(stores: &Stores) -> BTreeMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> = if let Some(subscriptions) = stores.sqlite() {
        subscriptions
            .database()
            .call(|connection| {
                let mut statement = connection.prepare("SELECT till, total, payments FROM takings")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
                rows.collect()
            })
            .await
            .unwrap()
    } else {
        let pool = stores.postgres().unwrap().pool();
        sqlx::query_as("SELECT till, total, payments FROM takings")
            .fetch_all(pool)
            .await
            .unwrap()
    };
    rows.into_iter()
        .map(|(till, total, n)| (till, (total, n)))
        .collect()
}

/// The largest payments above 6 by till.
async fn largest(stores: &Stores) -> BTreeMap<String, Option<i64>> {
    let rows: Vec<(String, Option<i64>)> = if let Some(subscriptions) = stores.sqlite() {
        subscriptions
            .database()
            .call(|connection| {
                let mut statement = connection.prepare("SELECT till, amount FROM largest")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect()
            })
            .await
            .unwrap()
    } else {
        sqlx::query_as("SELECT till, amount FROM largest")
            .fetch_all(stores.postgres().unwrap().pool())
            .await
            .unwrap()
    };
    rows.into_iter().collect()
}

async fn one_read_model_for_both(stores: Stores) {
    let fail_next = Arc::new(AtomicBool::new(false));
    let model = SqlReadModel::on(
        &stores,
        Takings {
            fail_next: fail_next.clone(),
        },
    )
    .unwrap();
    let projection = stores
        .projection("takings", model)
        .unwrap()
        .retry(
            3,
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(5),
        )
        .unwrap();
    let first = pay(&stores, &[5, 7]).await;
    let second = pay(&stores, &[11]).await;
    fail_next.store(true, Ordering::SeqCst);
    projection.catch_up(|_| {}).await.unwrap();
    assert!(
        !fail_next.load(Ordering::SeqCst),
        "the failing statement never ran"
    );
    assert_eq!(
        projection.metrics().retries(),
        1,
        "the refused batch was tried again"
    );
    let expected = BTreeMap::from([(first.to_string(), (12, 2)), (second.to_string(), (11, 1))]);
    assert_eq!(takings(&stores).await, expected, "each payment counted once");
    assert_eq!(
        largest(&stores).await,
        BTreeMap::from([(first.to_string(), Some(7)), (second.to_string(), Some(11))]),
        "a parameter NULL at one run and an integer at the next"
    );

    // A rebuild empties the read model and replays the feed into it: the same rows.
    projection.rebuild(|_| {}).await.unwrap();
    assert_eq!(takings(&stores).await, expected);
}

#[tokio::test]
async fn one_read_model_for_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("takings.db").display());
    one_read_model_for_both(backend::open(&url).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn one_read_model_for_postgres() {
    let Some(url) = common::postgres_url("one_read_model_for_postgres") else {
        return;
    };
    // The stores' tables and the read model's (in the search path) in a schema of the test's
    // own, dropped at the end also when the test fails.
    let scratch = common::ScratchSchema::new(&url, "sql_read_model");
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{url}{separator}schema={0}&options=-c%20search_path%3D{0}",
        scratch.name
    );
    let stores = backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    one_read_model_for_both(stores).await;
}

#[tokio::test]
async fn in_memory_stores_have_no_sql_read_model() {
    let stores = backend::open("memory:").await.unwrap();
    let refused = SqlReadModel::on(
        &stores,
        Takings {
            fail_next: Arc::default(),
        },
    );
    assert!(matches!(refused, Err(Error::InvalidConfiguration(_))));
}
