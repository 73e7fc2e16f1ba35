//! What the PostgreSQL test binaries share: a test's connection to the database, schemas of
//! its own, and events to append.
#![allow(dead_code)]

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventsourcing_kit::backend::postgres::{pool_options, PgPool, PostgresEventStore, PostgresSnapshotStore};
use eventsourcing_kit::{Error, EventEnvelope, EventStore, Snapshot, StoredEvent, Uuid};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::common;

/// A test's connection to the database: a pool whose connections carry a name unique to the
/// test, so that they can be found in `pg_stat_activity`, and migrated stores on it.
pub(crate) struct Db {
    pub(crate) url: String,
    pub(crate) app: String,
    pub(crate) pool: PgPool,
    pub(crate) events: PostgresEventStore,
    pub(crate) snapshots: PostgresSnapshotStore,
}

/// Connects for `test` with default pool settings, or `None` if PostgreSQL tests are skipped.
pub(crate) async fn db(test: &str) -> Option<Db> {
    db_with(test, pool_options().max_connections(4)).await
}

pub(crate) async fn db_with(test: &str, pool: PgPoolOptions) -> Option<Db> {
    let url = common::postgres_url(test)?;
    // Unique, and within PostgreSQL's 63 bytes.
    let app = format!("es-test-{}", Uuid::new_v4().simple());
    let options = PgConnectOptions::from_str(&url).unwrap().application_name(&app);
    let pool = pool
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let events = PostgresEventStore::new(pool.clone());
    events.migrate().await.unwrap();
    let snapshots = PostgresSnapshotStore::new(pool.clone());
    Some(Db {
        url,
        app,
        pool,
        events,
        snapshots,
    })
}

impl Db {
    /// A second pool, for statements the stores must not see (blockers, raw rows, kills).
    pub(crate) async fn admin(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .unwrap()
    }

    /// Waits until one of the test pool's connections waits on a lock.
    pub(crate) async fn until_blocked(&self, admin: &PgPool) {
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&self.app)
            .fetch_one(admin)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no connection of {} ever waited on a lock", self.app);
    }

    /// Terminates every server process of the test pool; returns how many.
    pub(crate) async fn terminate_connections(&self, admin: &PgPool) -> usize {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&self.app)
        .fetch_all(admin)
        .await
        .unwrap();
        killed.len()
    }
}

/// An aggregate type name no other test or run uses.
pub(crate) fn unique_type(name: &str) -> String {
    format!("{name}-{}", Uuid::new_v4().simple())
}

pub(crate) fn event(id: Uuid, aggregate_type: &str, version: u64, payload: Value) -> EventEnvelope {
    EventEnvelope::from_json(id, aggregate_type, version, "Recorded", 1, payload.to_string())
}

/// Events `after + 1 ..= after + n` of the stream.
pub(crate) fn batch(id: Uuid, aggregate_type: &str, after: u64, n: u64) -> Vec<EventEnvelope> {
    (after + 1..=after + n)
        .map(|v| event(id, aggregate_type, v, json!({ "n": v })))
        .collect()
}

pub(crate) async fn read_stream(
    store: &dyn EventStore,
    id: Uuid,
    aggregate_type: &str,
    after: u64,
) -> Vec<StoredEvent> {
    store
        .read_stream(id, aggregate_type, after)
        .try_collect()
        .await
        .unwrap()
}

/// Compares what was appended with what was read: field for field, the payload as JSON.
pub(crate) fn assert_same_event(read: &EventEnvelope, appended: &EventEnvelope) {
    let value = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    assert_eq!(
        value(&read.payload),
        value(&appended.payload),
        "payload of {}",
        appended.event_id
    );
    let mut read = read.clone();
    read.payload = appended.payload.clone();
    assert_eq!(&read, appended);
}

/// Inserts an event row directly, as another program (or a corruption) would.
pub(crate) async fn insert_row<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    table: &str,
    id: Uuid,
    aggregate_type: &str,
    version: i64,
    event_version: i64,
) {
    sqlx::query(&format!(
        "INSERT INTO {table} (event_id, event_type, event_version, aggregate_id,
             aggregate_type, aggregate_version, occurred_at, payload)
         VALUES ($1, 'Raw', $2, $3, $4, $5, now(), '{{}}')"
    ))
    .bind(Uuid::new_v4())
    .bind(event_version)
    .bind(id)
    .bind(aggregate_type)
    .bind(version)
    .execute(executor)
    .await
    .unwrap();
}

pub(crate) fn is_store_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            backend: "postgres",
            ..
        }
    )
}

/// The event table of the stores in the search path.
pub(crate) const EVENTS: &str = "eventsource_events";

/// A schema of a test's own, for what must not touch the shared tables: a race to create
/// them, or rows that no reader of the shared tables should meet.
pub(crate) struct Scratch {
    pub(crate) schema: String,
    /// Drops the schema when the test is done, also when it fails.
    pub(crate) _guard: common::ScratchSchema,
    pub(crate) events: PostgresEventStore,
    pub(crate) snapshots: PostgresSnapshotStore,
}

impl Db {
    /// A new, migrated schema. Schemas that tests left behind more than an hour ago (when
    /// they failed before dropping theirs) are dropped first.
    pub(crate) async fn scratch(&self) -> Scratch {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace
             WHERE nspname ~ '^es_test_[0-9]+_' AND split_part(nspname, '_', 3)::bigint < $1",
        )
        .bind((now - 3600) as i64)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        for schema in stale {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&self.pool)
                .await;
        }
        let guard = common::ScratchSchema::new(&self.url, &format!("test_{now}"));
        let schema = guard.name.clone();
        let events = PostgresEventStore::with_schema(self.pool.clone(), &schema).unwrap();
        events.migrate().await.unwrap();
        let snapshots = events.snapshot_store();
        Scratch {
            schema,
            _guard: guard,
            events,
            snapshots,
        }
    }
}

impl Scratch {
    pub(crate) fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.schema)
    }

    /// Drops the schema now (as the guard would when the test ends).
    pub(crate) async fn drop(self, _pool: &PgPool) {}
}

/// The feed after `after` once it shows at least `count` events (or an error), waiting up to
/// 30 s: the feed holds events back while transactions that could commit below them run, and
/// the other tests' run meanwhile.
pub(crate) async fn read_all_until(
    events: &PostgresEventStore,
    after: u64,
    count: usize,
) -> Vec<eventsourcing_kit::Result<StoredEvent>> {
    let started = std::time::Instant::now();
    loop {
        let all: Vec<_> = events.read_all(after).collect().await;
        if all.len() >= count || all.iter().any(Result::is_err) || started.elapsed() > Duration::from_secs(30)
        {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A snapshot of the stream at `version`, with a state that says so.
pub(crate) fn snapshot(id: Uuid, ty: &str, version: u64, schema_version: u32) -> Snapshot {
    Snapshot::new(
        id,
        ty,
        version,
        schema_version,
        json!({ "version": version, "note": "state" }).to_string(),
    )
}
