//! The PostgreSQL stores: what only a shared database shows (appends racing on real
//! connections and from several processes, lost connections and timeouts, paged reads, the
//! migration), and the conformance suite.
//!
//! The tests need `EVENTSOURCE_TEST_POSTGRES_URL` (such as
//! `postgres://postgres@127.0.0.1:5432/test`). Without it each one says it is skipped and
//! passes, unless `EVENTSOURCE_REQUIRE_POSTGRES=1` (as in CI), which makes it fail. They share
//! the database, also with other runs: every test uses fresh ids and its own aggregate type
//! names, and a test that needs empty tables makes its own schema.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use common::{opened, Account, MoneyDeposited, MoneyWithdrawn};
use eventsource::backend::postgres::{
    connect_url, pool_options, PgPool, PostgresEventStore, PostgresSnapshotStore,
};
use eventsource::{
    Error, EventEnvelope, EventStore, MissReason, Repository, Snapshot, SnapshotPolicy, SnapshotStore,
    StoredEvent, Uuid,
};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Set in the child processes of the multi-process test: the stream they append to.
const CHILD_VAR: &str = "EVENTSOURCE_TEST_POSTGRES_CHILD";

/// A test's connection to the database: a pool whose connections carry a name unique to the
/// test, so that they can be found in `pg_stat_activity`, and migrated stores on it.
struct Db {
    url: String,
    app: String,
    pool: PgPool,
    events: PostgresEventStore,
    snapshots: PostgresSnapshotStore,
}

/// Connects for `test` with default pool settings, or `None` if PostgreSQL tests are skipped.
async fn db(test: &str) -> Option<Db> {
    db_with(test, pool_options().max_connections(4)).await
}

async fn db_with(test: &str, pool: PgPoolOptions) -> Option<Db> {
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
    async fn admin(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .unwrap()
    }

    /// Waits until one of the test pool's connections waits on a lock.
    async fn until_blocked(&self, admin: &PgPool) {
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
    async fn terminate_connections(&self, admin: &PgPool) -> usize {
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
fn unique_type(name: &str) -> String {
    format!("{name}-{}", Uuid::new_v4().simple())
}

fn event(id: Uuid, aggregate_type: &str, version: u64, payload: Value) -> EventEnvelope {
    EventEnvelope {
        event_type: Arc::from("Recorded"),
        payload: Arc::from(payload.to_string()),
        ..eventsource::testing::envelope(id, aggregate_type, version)
    }
}

/// Events `after + 1 ..= after + n` of the stream.
fn batch(id: Uuid, aggregate_type: &str, after: u64, n: u64) -> Vec<EventEnvelope> {
    (after + 1..=after + n)
        .map(|v| event(id, aggregate_type, v, json!({ "n": v })))
        .collect()
}

async fn read_stream(store: &dyn EventStore, id: Uuid, aggregate_type: &str, after: u64) -> Vec<StoredEvent> {
    store
        .read_stream(id, aggregate_type, after)
        .try_collect()
        .await
        .unwrap()
}

/// Compares what was appended with what was read: field for field, the payload as JSON.
fn assert_same_event(read: &EventEnvelope, appended: &EventEnvelope) {
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
async fn insert_row<'e>(
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

fn is_store_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            backend: "postgres",
            ..
        }
    )
}

/// The event table of the stores in the search path.
const EVENTS: &str = "eventsource_events";

/// A schema of a test's own, for what must not touch the shared tables: a race to create
/// them, or rows that no reader of the shared tables should meet.
struct Scratch {
    schema: String,
    /// Drops the schema when the test is done, also when it fails.
    _guard: common::ScratchSchema,
    events: PostgresEventStore,
    snapshots: PostgresSnapshotStore,
}

impl Db {
    /// A new, migrated schema. Schemas that tests left behind more than an hour ago (when
    /// they failed before dropping theirs) are dropped first.
    async fn scratch(&self) -> Scratch {
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
    fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.schema)
    }

    /// Drops the schema now (as the guard would when the test ends).
    async fn drop(self, _pool: &PgPool) {}
}

/// The feed after `after` once it shows at least `count` events (or an error), waiting up to
/// 30 s: the feed holds events back while transactions that could commit below them run, and
/// the other tests' run meanwhile.
async fn read_all_until(
    events: &PostgresEventStore,
    after: u64,
    count: usize,
) -> Vec<eventsource::Result<StoredEvent>> {
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

// ---------------------------------------------------------------------------------------
// The conformance suite: one test per check, each on a pool of its own.

// The expression the macros take is evaluated in each generated test, so its `return` ends
// that test: this is how the checks skip without a database, like every test here.
mod event_store_conformance {
    eventsource::event_store_conformance!({
        let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
            return;
        };
        std::future::ready(db.events)
    });
}

mod snapshot_store_conformance {
    eventsource::snapshot_store_conformance!({
        let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
            return;
        };
        std::future::ready(db.snapshots)
    });
}

mod subscription_store_conformance {
    eventsource::subscription_store_conformance!({
        let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
            return;
        };
        std::future::ready(db.events.subscription_store())
    });
}

mod stores_conformance {
    eventsource::stores_conformance!({
        let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
            return;
        };
        std::future::ready(eventsource::backend::Stores::from_postgres(
            db.events,
            db.snapshots,
        ))
    });
}

#[tokio::test]
async fn postgres_stores_hand_out_every_ability() {
    let Some(db) = db("postgres_stores_hand_out_every_ability").await else {
        return;
    };
    let every = eventsource::testing::stores::Abilities {
        append_signal: true,
        stream_listing: true,
        snapshot_listing: true,
        request_index: true,
        joint_snapshots: true,
    };
    let stores = eventsource::backend::open(&db.url).await.unwrap();
    eventsource::testing::stores::assert_abilities(&stores, every);
    // Stores on two pools cannot write jointly: the rest they keep.
    let apart = PostgresSnapshotStore::new(db.admin().await);
    let stores = eventsource::backend::Stores::from_postgres(db.events.clone(), apart);
    let without_joint = eventsource::testing::stores::Abilities {
        joint_snapshots: false,
        ..every
    };
    eventsource::testing::stores::assert_abilities(&stores, without_joint);
}

/// The event store suite through a wrapper that forwards only the required methods, on a
/// schema of its own (the trait's defaults read the whole feed).
#[tokio::test]
async fn the_event_store_suite_passes_through_a_wrapper_of_the_required_methods() {
    let Some(db) = db("the_event_store_suite_passes_through_a_wrapper_of_the_required_methods").await else {
        return;
    };
    let scratch = db.scratch().await;
    eventsource::testing::event_store::run_all(&eventsource::testing::RequiredOnly(scratch.events.clone()))
        .await;
}

// ---------------------------------------------------------------------------------------
// Configuration and schema

#[tokio::test]
async fn bad_configuration_is_refused_before_any_connection() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    for bad in [
        "",
        "two words",
        "a.b",
        "x\"y",
        "9lives",
        "information_schema",
        "pg_catalog",
        "pg_toast",
        "pg_anything",
    ] {
        let err = PostgresEventStore::with_schema(pool.clone(), bad).unwrap_err();
        assert!(matches!(err, Error::InvalidConfiguration(_)), "{bad:?}: {err}");
        assert!(PostgresSnapshotStore::with_schema(pool.clone(), bad).is_err());
    }
    let err = PostgresEventStore::new(pool.clone())
        .with_page_size(0)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfiguration(_)), "{err}");
    let store = PostgresEventStore::with_schema(pool, "tenant_7").unwrap();
    assert_eq!(store.schema(), Some("tenant_7"));
    assert_eq!(store.snapshot_store().schema(), Some("tenant_7"));
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_typed_errors() {
    let err = connect_url("postgres://user@host:notaport/db").await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfiguration(_)), "{err}");
    // Nothing listens on port 1 of the loopback. (`connect_url` itself would keep retrying
    // for the pool's 30 s acquire timeout, as when a database is still starting.)
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let (events, snapshots) = (
        PostgresEventStore::new(pool.clone()),
        PostgresSnapshotStore::new(pool),
    );
    let err = events
        .stream_version(Uuid::new_v4(), "Unreachable")
        .await
        .unwrap_err();
    assert!(is_store_error(&err), "{err}");
    let read: Vec<_> = events
        .read_stream(Uuid::new_v4(), "Unreachable", 0)
        .collect()
        .await;
    assert!(matches!(&read[..], [Err(e)] if is_store_error(e)), "{read:?}");
    let err = snapshots
        .get_snapshot(Uuid::new_v4(), "Unreachable", 1)
        .await
        .unwrap_err();
    assert!(is_store_error(&err), "{err}");
    let err = events.migrate().await.unwrap_err();
    assert!(is_store_error(&err), "{err}");
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_when_instances_run_it_at_once() {
    let Some(db) = db("migrate_is_idempotent_and_safe_when_instances_run_it_at_once").await else {
        return;
    };
    // A fresh schema, so the instances really race to create everything.
    let schema = format!(
        "es_test_{}_{}",
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let mut instances = Vec::new();
    for _ in 0..8 {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await
            .unwrap();
        instances.push(PostgresEventStore::with_schema(pool, &schema).unwrap());
    }
    for _ in 0..2 {
        let runs = instances.iter().map(|store| store.migrate());
        for result in futures_util::future::join_all(runs).await {
            result.unwrap();
        }
    }
    let snapshots = instances[0].snapshot_store();
    snapshots.migrate().await.unwrap();

    let indexes: Vec<String> = sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE schemaname = $1")
        .bind(&schema)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let has = |needle: &str| indexes.iter().any(|def| def.contains(needle));
    assert!(
        has("UNIQUE INDEX eventsource_events_event_id_key"),
        "{indexes:#?}"
    );
    assert!(
        has("(aggregate_id, aggregate_type, aggregate_version)"),
        "{indexes:#?}"
    );
    assert!(
        has("eventsource_snapshots USING btree (aggregate_type, schema_version)"),
        "{indexes:#?}"
    );

    // The stores work in that schema, and only there.
    let (events, id) = (&instances[3], Uuid::new_v4());
    assert_eq!(
        events
            .append(id, "Migrated", 0, &batch(id, "Migrated", 0, 2))
            .await
            .unwrap()
            .version,
        2
    );
    assert_eq!(read_stream(events, id, "Migrated", 0).await.len(), 2);
    assert_eq!(db.events.stream_version(id, "Migrated").await.unwrap(), 0);
    let all: Vec<StoredEvent> = read_all_until(events, 0, 2)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        all.iter().map(|e| e.aggregate_version).collect::<Vec<_>>(),
        [1, 2]
    );

    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&db.pool)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Appends and reads

#[tokio::test]
async fn events_read_back_as_appended_through_jsonb() {
    let Some(db) = db("events_read_back_as_appended_through_jsonb").await else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("RoundTrip"));
    let mut first = event(id, &ty, 1, json!(null));
    // Whitespace and key order that JSONB does not keep, and floats that must survive.
    first.payload = Arc::from(r#"{ "zeta" : [1, 2.5, -0.125],   "alpha": {"b": null, "a": "é\n\"x\""} }"#);
    first.occurred_at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
    first.correlation_id = Some(Uuid::new_v4());
    first.causation_id = Some(Uuid::new_v4());
    first.metadata = Some(json!({ "user": "ada", "ip": [127, 0, 0, 1], "nested": { "k": 1.5 } }));
    first.event_version = u32::MAX;
    let mut second = event(
        id,
        &ty,
        2,
        json!({ "values": [0.1, 1e-7, 1e300, 123456.789, f64::MIN_POSITIVE, -3.0, 5e-324] }),
    );
    second.occurred_at = DateTime::from_timestamp(-2_000_000_000, 999_999_999).unwrap();
    second.event_type = Arc::from("Другой");
    let appended = [first, second];

    assert_eq!(db.events.append(id, &ty, 0, &appended).await.unwrap().version, 2);
    let read = read_stream(&db.events, id, &ty, 0).await;
    assert_eq!(read.len(), 2);
    for (read, appended) in read.iter().zip(&appended) {
        assert_same_event(read, appended);
    }
    assert!(read[0].position < read[1].position);
    assert_eq!(db.events.stream_version(id, &ty).await.unwrap(), 2);
    assert_eq!(
        read_stream(&db.events, id, &ty, 1).await[0].event_id,
        appended[1].event_id
    );
    assert!(read_stream(&db.events, id, &ty, 2).await.is_empty());
    assert!(read_stream(&db.events, id, &ty, u64::MAX).await.is_empty());
    // The same id under another type is another stream.
    assert_eq!(
        db.events.stream_version(id, &unique_type("Other")).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_lost_race_is_a_typed_conflict_with_the_real_version() {
    let Some(db) = db("a_lost_race_is_a_typed_conflict_with_the_real_version").await else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("Conflict"));
    db.events.append(id, &ty, 0, &batch(id, &ty, 0, 3)).await.unwrap();
    for expected in [0, 1, 5] {
        match db
            .events
            .append(id, &ty, expected, &batch(id, &ty, expected, 2))
            .await
        {
            Err(Error::Conflict {
                expected: e,
                actual: 3,
                ..
            }) if e == expected => {}
            other => panic!("expected a conflict at {expected}, got {other:?}"),
        }
    }

    // A writer that commits version 4 while this append waits on it: the database decides.
    let admin = db.admin().await;
    let mut blocker = admin.begin().await.unwrap();
    insert_row(&mut *blocker, EVENTS, id, &ty, 4, 1).await;
    let events = db.events.clone();
    let (tid, tty) = (id, ty.clone());
    let racing = tokio::spawn(async move { events.append(tid, &tty, 3, &batch(tid, &tty, 3, 2)).await });
    db.until_blocked(&admin).await;
    blocker.commit().await.unwrap();
    match racing.await.unwrap() {
        Err(Error::Conflict {
            expected: 3,
            actual: 4,
            ..
        }) => {}
        other => panic!("expected a conflict from the unique constraint, got {other:?}"),
    }
    let versions: Vec<u64> = read_stream(&db.events, id, &ty, 0)
        .await
        .iter()
        .map(|e| e.aggregate_version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

#[tokio::test]
async fn refused_values_are_typed_errors_and_write_nothing() {
    let Some(db) = db("refused_values_are_typed_errors_and_write_nothing").await else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("Refused"));
    let stored = batch(id, &ty, 0, 1);
    db.events.append(id, &ty, 0, &stored).await.unwrap();

    // An event id already stored, in another stream.
    let other = Uuid::new_v4();
    let mut reused = batch(other, &ty, 0, 2);
    reused[1].event_id = stored[0].event_id;
    let err = db.events.append(other, &ty, 0, &reused).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains(&stored[0].event_id.to_string()), "{err}");
    assert_eq!(db.events.stream_version(other, &ty).await.unwrap(), 0);

    let mut bad = batch(id, &ty, 1, 2);
    bad[1].payload = Arc::from("{not json");
    let mut raw_nul = batch(id, &ty, 1, 1);
    raw_nul[0].payload = Arc::from("{\"text\": \"a\0b\"}");
    let mut nul_type = batch(id, &ty, 1, 1);
    nul_type[0].event_type = Arc::from("Bad\0Type");
    for events in [bad, raw_nul, nul_type] {
        let err = db.events.append(id, &ty, 1, &events).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }
    assert_eq!(db.events.stream_version(id, &ty).await.unwrap(), 1);

    let snapshot = Snapshot {
        event_id: None,
        aggregate_id: id,
        aggregate_type: ty.clone(),
        version: 1,
        state: "not json".into(),
        schema_version: 1,
        created_at: Utc::now(),
    };
    let err = db.snapshots.save_snapshot(&snapshot).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(!db.snapshots.snapshot_exists(id, &ty).await.unwrap());
}

#[tokio::test]
async fn rows_that_cannot_be_decoded_are_corrupt_errors() {
    let Some(db) = db("rows_that_cannot_be_decoded_are_corrupt_errors").await else {
        return;
    };
    // Rows no reader of the shared tables should meet.
    let scratch = db.scratch().await;
    let events = scratch.table(EVENTS);

    let (id, ty) = (Uuid::new_v4(), "Corrupt");
    insert_row(&db.pool, &events, id, ty, 1, 1).await;
    insert_row(&db.pool, &events, id, ty, 3, 1).await;
    let read: Vec<_> = scratch.events.read_stream(id, ty, 0).collect().await;
    assert_eq!(read.len(), 2, "the stream stops at the first error");
    assert_eq!(read[0].as_ref().unwrap().aggregate_version, 1);
    assert!(matches!(&read[1], Err(Error::Corrupt { .. })), "{:?}", read[1]);

    let id = Uuid::new_v4();
    insert_row(&db.pool, &events, id, ty, 1, -1).await;
    let read: Vec<_> = scratch.events.read_stream(id, ty, 0).collect().await;
    assert!(matches!(&read[..], [Err(Error::Corrupt { .. })]), "{read:?}");
    let all = read_all_until(&scratch.events, 0, 3).await;
    assert_eq!(all.len(), 3, "read_all stops at the first error");
    assert!(matches!(&all[2], Err(Error::Corrupt { .. })), "{:?}", all[2]);

    sqlx::query(&format!(
        "INSERT INTO {} (aggregate_id, aggregate_type, version, state, schema_version, created_at)
         VALUES ($1, $2, 1, '{{}}', -4, now())",
        scratch.table("eventsource_snapshots")
    ))
    .bind(id)
    .bind(ty)
    .execute(&db.pool)
    .await
    .unwrap();
    let err = scratch
        .snapshots
        .get_snapshot(id, ty, u32::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    scratch.drop(&db.pool).await;
}

#[tokio::test]
async fn a_column_of_another_type_is_a_corrupt_error() {
    let Some(db) = db("a_column_of_another_type_is_a_corrupt_error").await else {
        return;
    };
    // A table altered by hand: the reader checks each page's column types once and decodes
    // the values unchecked, so the check must catch it.
    let scratch = db.scratch().await;
    sqlx::query(&format!(
        "ALTER TABLE {} ALTER COLUMN occurred_at_ns TYPE bigint, ALTER COLUMN event_version TYPE integer",
        scratch.table(EVENTS)
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let (id, ty) = (Uuid::new_v4(), "Altered");
    scratch
        .events
        .append(id, ty, 0, &batch(id, ty, 0, 3))
        .await
        .unwrap();

    let read: Vec<_> = scratch.events.read_stream(id, ty, 0).collect().await;
    assert!(matches!(&read[..], [Err(Error::Corrupt { .. })]), "{read:?}");
    let err = read[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("column event_version is of type INT4"), "{err}");
    let all = read_all_until(&scratch.events, 0, 1).await;
    assert!(matches!(&all[..], [Err(Error::Corrupt { .. })]), "{all:?}");

    // A joint read decodes its events as a page too.
    scratch
        .snapshots
        .save_snapshot(&snapshot(id, ty, 2, 1))
        .await
        .unwrap();
    let joint = scratch.events.joint_snapshots(&scratch.snapshots).unwrap();
    let reader = joint.reader();
    let found = reader.read(id, ty, u32::MAX).await.unwrap().unwrap();
    assert_eq!(found.snapshot.version, 2);
    let read: Vec<_> = found.events.collect().await;
    assert!(matches!(&read[..], [Err(Error::Corrupt { .. })]), "{read:?}");

    scratch.drop(&db.pool).await;
}

#[tokio::test]
async fn a_long_stream_is_read_page_by_page() {
    // One connection: a read that held it between pages would starve the other calls.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5));
    let Some(db) = db_with("a_long_stream_is_read_page_by_page", pool).await else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("Long"));
    let mut appended = Vec::new();
    for start in (0..2500).step_by(500) {
        let events = batch(id, &ty, start, 500);
        db.events.append(id, &ty, start, &events).await.unwrap();
        appended.extend(events);
    }

    let mut stream = db.events.read_stream(id, &ty, 0);
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.aggregate_version, 1);
    // Mid-read, the pool's only connection is free for other calls.
    assert_eq!(db.events.stream_version(id, &ty).await.unwrap(), 2500);
    db.events
        .append(id, &ty, 2500, &batch(id, &ty, 2500, 1))
        .await
        .unwrap();
    let rest: Vec<StoredEvent> = stream.try_collect().await.unwrap();
    assert_eq!(
        rest.len(),
        2500,
        "the read goes on to what was appended after it started"
    );
    for (read, appended) in rest.iter().zip(&appended[1..]) {
        assert_same_event(read, appended);
    }

    // Small pages, and a start in the middle of one.
    let small = db.events.clone().with_page_size(7).unwrap();
    let read = read_stream(&small, id, &ty, 1234).await;
    let versions: Vec<u64> = read.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(versions, (1235..=2501).collect::<Vec<_>>());
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));

    // read_all pages by position: this stream's events come in order among everyone's.
    let mut ours = Vec::new();
    let mut all = small.read_all(first.position - 1);
    let mut last = first.position - 1;
    let waiting_since = std::time::Instant::now();
    while ours.len() < 2501 {
        let Some(event) = all.next().await else {
            // The feed may hold events back while other tests' transactions run.
            assert!(
                waiting_since.elapsed() < Duration::from_secs(30),
                "read_all ended before this stream's events"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            all = small.read_all(last);
            continue;
        };
        let event = event.unwrap();
        assert!(event.position > last);
        last = event.position;
        if event.aggregate_id == id && *event.aggregate_type == *ty {
            ours.push(event.aggregate_version);
        }
    }
    assert_eq!(ours, (1..=2501).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Concurrency enforced by the database

/// One writer's result: the events it stored, and how many appends it lost.
#[derive(Default)]
struct Tally {
    won: Vec<(u64, Vec<Uuid>)>,
    lost: usize,
}

/// Appends `rounds` batches of `size` events, each at the version just read, and tallies
/// the outcome; any error but a conflict fails the test.
async fn contend(events: PostgresEventStore, id: Uuid, ty: String, rounds: usize, size: u64) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..rounds {
        let at = events.stream_version(id, &ty).await.unwrap();
        let batch = batch(id, &ty, at, size);
        match events.append(id, &ty, at, &batch).await {
            Ok(appended) => {
                assert_eq!(appended.version, at + size);
                tally
                    .won
                    .push((at + 1, batch.iter().map(|e| e.event_id).collect()));
            }
            Err(Error::Conflict { expected, actual, .. }) => {
                assert_eq!(expected, at);
                assert!(actual > at, "a conflict at {at} reports version {actual}");
                tally.lost += 1;
            }
            Err(other) => panic!("an append lost to a concurrent writer must be a conflict, got {other}"),
        }
    }
    tally
}

/// Checks the stream holds exactly the winners' batches, each whole and in place, with no
/// gap and no duplicate.
async fn assert_stream_is_the_winners(
    events: &PostgresEventStore,
    id: Uuid,
    ty: &str,
    won: &[(u64, Vec<Uuid>)],
) {
    let stored = read_stream(events, id, ty, 0).await;
    let versions: Vec<u64> = stored.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(
        versions,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "versions without gaps"
    );
    let ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), stored.len(), "no event stored twice");
    let mut expected: BTreeMap<u64, Uuid> = BTreeMap::new();
    for (first, batch) in won {
        for (i, event_id) in batch.iter().enumerate() {
            assert!(
                expected.insert(first + i as u64, *event_id).is_none(),
                "two winners for version {}",
                first + i as u64
            );
        }
    }
    let actual: BTreeMap<u64, Uuid> = stored.iter().map(|e| (e.aggregate_version, e.event_id)).collect();
    assert_eq!(
        actual, expected,
        "exactly the winners' events, each at its version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_many_tasks_have_one_winner_per_version() {
    // A connection per task: the database, not the pool, serializes the writers.
    let pool = pool_options().max_connections(16);
    let test = "concurrent_appends_from_many_tasks_have_one_winner_per_version";
    let Some(db) = db_with(test, pool).await else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("Contended"));
    let tasks: Vec<_> = (0..16u64)
        .map(|task| tokio::spawn(contend(db.events.clone(), id, ty.clone(), 40, task % 3 + 1)))
        .collect();
    let mut won = Vec::new();
    let mut lost = 0;
    for task in tasks {
        let tally = task.await.unwrap();
        won.extend(tally.won);
        lost += tally.lost;
    }
    assert_eq!(won.len() + lost, 16 * 40);
    assert!(
        lost > 0,
        "16 writers on one stream never collided: the test did not contend"
    );
    assert_stream_is_the_winners(&db.events, id, &ty, &won).await;
    println!("{} appends won, {lost} lost to a conflict", won.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_several_processes_have_one_winner_per_version() {
    const NAME: &str = "concurrent_appends_from_several_processes_have_one_winner_per_version";
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return child_process(spec).await;
    }
    let Some(db) = db(NAME).await else { return };
    let (id, ty) = (Uuid::new_v4(), unique_type("Processes"));
    let start_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() + 1500;
    let children: Vec<_> = (0..4)
        .map(|_| {
            tokio::process::Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_VAR, format!("{id} {ty} {start_at}"))
                .kill_on_drop(true)
                .output()
        })
        .collect();
    let mut won = Vec::new();
    let mut lost = 0;
    for output in futures_util::future::join_all(children).await {
        let output = output.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "a child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut reported = false;
        for line in stdout.lines() {
            // The harness may print on the same line before the test's own output.
            if let Some((_, rest)) = line.split_once("@@won ") {
                let mut words = rest.split(' ');
                let first: u64 = words.next().unwrap().parse().unwrap();
                won.push((first, words.map(|w| w.parse().unwrap()).collect()));
            } else if let Some((_, n)) = line.split_once("@@lost ") {
                lost += n.parse::<usize>().unwrap();
                reported = true;
            }
        }
        assert!(reported, "a child reported nothing:\n{stdout}");
    }
    assert_eq!(won.len() + lost, 4 * 3 * 25);
    assert_stream_is_the_winners(&db.events, id, &ty, &won).await;
    println!(
        "{} appends won, {lost} lost to a conflict, across 4 processes",
        won.len()
    );
}

/// A child of the multi-process test: three writers on their own pool, starting together
/// with the other processes; prints what they won and how often they lost.
async fn child_process(spec: String) {
    let mut parts = spec.split(' ');
    let id: Uuid = parts.next().unwrap().parse().unwrap();
    let ty = parts.next().unwrap().to_owned();
    let start_at: u64 = parts.next().unwrap().parse().unwrap();
    let url = common::postgres_url("child").expect("the parent has a database");
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .unwrap();
    let events = PostgresEventStore::new(pool);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(start_at.saturating_sub(now))).await;
    let writers: Vec<_> = (0..3)
        .map(|w| tokio::spawn(contend(events.clone(), id, ty.clone(), 25, w % 2 + 1)))
        .collect();
    let mut lost = 0;
    for writer in writers {
        let tally = writer.await.unwrap();
        for (first, ids) in tally.won {
            let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            println!("@@won {first} {}", ids.join(" "));
        }
        lost += tally.lost;
    }
    println!("@@lost {lost}");
}

// ---------------------------------------------------------------------------------------
// Failures of the database

#[tokio::test]
async fn a_terminated_connection_is_a_store_error_and_the_next_call_works() {
    // One connection, so the connection each step kills is the one the next call gets.
    let pool = pool_options().max_connections(1);
    let test = "a_terminated_connection_is_a_store_error_and_the_next_call_works";
    let Some(db) = db_with(test, pool).await else {
        return;
    };
    let admin = db.admin().await;
    let (id, ty) = (Uuid::new_v4(), unique_type("Terminated"));

    // Killed while idle for long: the pool pings it before use, drops it, and connects anew.
    assert_eq!(db.events.stream_version(id, &ty).await.unwrap(), 0);
    assert_eq!(db.terminate_connections(&admin).await, 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(db.events.stream_version(id, &ty).await.unwrap(), 0);

    // Killed just after use: at most one call fails, as a store error, and the next works.
    assert_eq!(db.terminate_connections(&admin).await, 1);
    if let Err(err) = db.snapshots.get_snapshot(id, &ty, u32::MAX).await {
        assert!(is_store_error(&err), "{err:?}");
    }
    assert_eq!(db.snapshots.get_snapshot(id, &ty, u32::MAX).await.unwrap(), None);

    // Killed in the middle of an append (waiting on another writer's row): nothing is written.
    let mut blocker = admin.begin().await.unwrap();
    insert_row(&mut *blocker, EVENTS, id, &ty, 1, 1).await;
    let events = db.events.clone();
    let (tid, tty) = (id, ty.clone());
    let append = tokio::spawn(async move { events.append(tid, &tty, 0, &batch(tid, &tty, 0, 2)).await });
    db.until_blocked(&admin).await;
    assert_eq!(db.terminate_connections(&admin).await, 1);
    let err = append.await.unwrap().unwrap_err();
    assert!(is_store_error(&err), "{err:?}");
    blocker.rollback().await.unwrap();

    assert_eq!(
        db.events.stream_version(id, &ty).await.unwrap(),
        0,
        "the killed append wrote nothing"
    );
    assert_eq!(
        db.events
            .append(id, &ty, 0, &batch(id, &ty, 0, 2))
            .await
            .unwrap()
            .version,
        2
    );
    assert_eq!(read_stream(&db.events, id, &ty, 0).await.len(), 2);
}

#[tokio::test]
async fn a_statement_timeout_is_a_store_error_and_the_next_call_works() {
    let Some(db) = db("a_statement_timeout_is_a_store_error_and_the_next_call_works").await else {
        return;
    };
    // A store whose statements may take 300 ms (migrated by `db`, whose statements may wait).
    let options = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .options([("statement_timeout", "300ms")]);
    let timed = PostgresEventStore::new(
        pool_options()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap(),
    );
    let admin = db.admin().await;
    let (id, ty) = (Uuid::new_v4(), unique_type("Timeout"));
    let mut blocker = admin.begin().await.unwrap();
    insert_row(&mut *blocker, EVENTS, id, &ty, 1, 1).await;
    let err = timed.append(id, &ty, 0, &batch(id, &ty, 0, 1)).await.unwrap_err();
    assert!(is_store_error(&err), "{err:?}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    blocker.rollback().await.unwrap();
    assert_eq!(
        timed
            .append(id, &ty, 0, &batch(id, &ty, 0, 1))
            .await
            .unwrap()
            .version,
        1
    );
}

// ---------------------------------------------------------------------------------------
// Snapshots

fn snapshot(id: Uuid, ty: &str, version: u64, schema_version: u32) -> Snapshot {
    Snapshot {
        state: json!({ "version": version, "note": "state" }).to_string(),
        ..eventsource::testing::snapshot(id, ty, version, schema_version)
    }
}

#[tokio::test]
async fn snapshot_upserts_never_go_back_even_when_writers_race() {
    let Some(db) = db("snapshot_upserts_never_go_back_even_when_writers_race").await else {
        return;
    };
    let store = &db.snapshots;
    let (id, ty) = (Uuid::new_v4(), unique_type("Snap"));
    assert_eq!(store.get_snapshot(id, &ty, u32::MAX).await.unwrap(), None);

    let mut five = snapshot(id, &ty, 5, 2);
    five.state = r#"{ "b" : 1,  "a" : [true, null] }"#.into();
    five.created_at = DateTime::from_timestamp(1_600_000_000, 987_654_321).unwrap();
    assert!(store.save_snapshot(&five).await.unwrap());
    assert!(
        !store.save_snapshot(&snapshot(id, &ty, 4, 2)).await.unwrap(),
        "an older one is refused"
    );
    let read = store.get_snapshot(id, &ty, u32::MAX).await.unwrap().unwrap();
    assert_eq!(read.state_value().unwrap(), five.state_value().unwrap());
    assert_eq!(
        Snapshot {
            state: five.state.clone(),
            ..read
        },
        five
    );
    let mut same = snapshot(id, &ty, 5, 2);
    same.state = r#"{"replaced":true}"#.into();
    assert!(
        store.save_snapshot(&same).await.unwrap(),
        "the same version replaces"
    );
    assert_eq!(
        store
            .get_snapshot(id, &ty, u32::MAX)
            .await
            .unwrap()
            .unwrap()
            .state,
        same.state
    );

    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let (store, ty) = (store.clone(), ty.clone());
            tokio::spawn(async move {
                for round in 0..20 {
                    store
                        .save_snapshot(&snapshot(id, &ty, (w * 37 + round * 11) % 300 + 6, 2))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let highest = (0..16u64)
        .flat_map(|w| (0..20).map(move |r| (w * 37 + r * 11) % 300 + 6))
        .max()
        .unwrap();
    assert_eq!(
        store
            .get_snapshot(id, &ty, u32::MAX)
            .await
            .unwrap()
            .unwrap()
            .version,
        highest
    );

    assert!(store.delete_snapshot(id, &ty).await.unwrap());
    assert!(!store.delete_snapshot(id, &ty).await.unwrap());
    assert!(!store.snapshot_exists(id, &ty).await.unwrap());
}

#[tokio::test]
async fn snapshots_are_invalidated_by_type_and_schema_version() {
    let Some(db) = db("snapshots_are_invalidated_by_type_and_schema_version").await else {
        return;
    };
    let store = &db.snapshots;
    let (ty, other) = (unique_type("Invalidated"), unique_type("Kept"));
    for schema_version in [1, 1, 2, 3] {
        store
            .save_snapshot(&snapshot(Uuid::new_v4(), &ty, 1, schema_version))
            .await
            .unwrap();
    }
    let kept = Uuid::new_v4();
    store.save_snapshot(&snapshot(kept, &other, 1, 1)).await.unwrap();
    assert_eq!(store.delete_snapshots_by_type(&ty, Some(2)).await.unwrap(), 2);
    assert_eq!(store.delete_snapshots_by_type(&ty, Some(2)).await.unwrap(), 0);
    assert_eq!(store.delete_snapshots_by_type(&ty, None).await.unwrap(), 2);
    assert!(store.snapshot_exists(kept, &other).await.unwrap());
}

// ---------------------------------------------------------------------------------------
// A repository on PostgreSQL

#[tokio::test]
async fn repositories_of_two_instances_share_the_stores_of_a_url() {
    let Some(url) = common::postgres_url("repositories_of_two_instances_share_the_stores_of_a_url") else {
        return;
    };
    let stores = eventsource::backend::open(&url).await.unwrap();
    assert_eq!(stores.backend_name(), "postgres");
    stores.migrate().await.unwrap();
    let repo = stores.repository_with_snapshots::<Account>(SnapshotPolicy::every(10).unwrap());
    let id = Uuid::new_v4();
    let mut account = opened(id, 24);
    assert_eq!(repo.save(&mut account).await.unwrap(), 25);
    let snapshot = stores
        .snapshots
        .get_snapshot(id, "Account", u32::MAX)
        .await
        .unwrap()
        .expect("a snapshot at 25");
    assert_eq!(snapshot.version, 25);
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (25, account.state()));
    assert_eq!(repo.metrics().hits("Account"), 1);

    // A second instance, on a pool of its own: the slower of two saves is a conflict.
    let (events, snapshots) = connect_url(&url).await.unwrap();
    let other =
        Repository::<Account>::new(events).with_snapshots(snapshots, SnapshotPolicy::every(10).unwrap());
    let (mut mine, mut theirs) = (repo.load(id).await.unwrap(), other.load(id).await.unwrap());
    mine.record(MoneyDeposited { amount: 5.0 });
    theirs.record(MoneyWithdrawn { amount: 7.0 });
    assert_eq!(repo.save(&mut mine).await.unwrap(), 26);
    let err = other.save(&mut theirs).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 25,
                actual: 26,
                ..
            }
        ),
        "{err}"
    );
    let reloaded = other.load(id).await.unwrap();
    assert_eq!((reloaded.version(), reloaded.state()), (26, mine.state()));
}

// ---------------------------------------------------------------------------------------
// Group commit of one-event appends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_appends_decide_each_append_alone_and_survive_cancelled_callers() {
    let Some(db) = db_with(
        "grouped_appends_decide_each_append_alone_and_survive_cancelled_callers",
        pool_options().max_connections(8),
    )
    .await
    else {
        return;
    };
    let ty = unique_type("Grouped");
    let events = db.events.clone();
    // 32 writers on streams of their own, 20 one-event appends each; every fourth writer's
    // odd appends are cancelled part way (a dropped future), then made again.
    let mut writers = Vec::new();
    for w in 0..32u64 {
        let (events, ty) = (events.clone(), ty.clone());
        writers.push(tokio::spawn(async move {
            let id = Uuid::new_v4();
            let mut version = 0;
            while version < 20 {
                let batch = batch(id, &ty, version, 1);
                if w % 4 == 0 && version % 2 == 1 {
                    let cancelled = events.append(id, &ty, version, &batch);
                    let _ = tokio::time::timeout(Duration::from_micros(50), cancelled).await;
                }
                // Made again after a cancellation, an append is acknowledged if it was stored.
                version = events.append(id, &ty, version, &batch).await.unwrap().version;
            }
            id
        }));
    }
    // Meanwhile 8 writers race for each version of one stream: one winner per version.
    let contested = Uuid::new_v4();
    let mut racers = Vec::new();
    for _ in 0..8 {
        let (events, ty) = (events.clone(), ty.clone());
        racers.push(tokio::spawn(async move {
            let mut wins = 0u64;
            for _ in 0..50 {
                let version = events.stream_version(contested, &ty).await.unwrap();
                match events
                    .append(contested, &ty, version, &batch(contested, &ty, version, 1))
                    .await
                {
                    Ok(_) => wins += 1,
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("a racing append failed: {e}"),
                }
            }
            wins
        }));
    }
    let deadline = Duration::from_secs(60);
    for writer in writers {
        let id = tokio::time::timeout(deadline, writer)
            .await
            .expect("no append hangs")
            .unwrap();
        let versions: Vec<u64> = read_stream(&db.events, id, &ty, 0)
            .await
            .iter()
            .map(|e| e.aggregate_version)
            .collect();
        assert_eq!(
            versions,
            (1..=20).collect::<Vec<_>>(),
            "each version stored once, in order"
        );
    }
    let mut wins = 0;
    for racer in racers {
        wins += tokio::time::timeout(deadline, racer)
            .await
            .expect("no race hangs")
            .unwrap();
    }
    let stored = read_stream(&db.events, contested, &ty, 0).await;
    assert_eq!(stored.len() as u64, wins, "one stored event per winning append");
    let versions: Vec<u64> = stored.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(versions, (1..=wins).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// A save with its snapshot in one statement

#[tokio::test]
async fn a_save_and_its_due_snapshot_are_one_statement_and_a_failing_snapshot_never_fails_it() {
    let Some(db) =
        db("a_save_and_its_due_snapshot_are_one_statement_and_a_failing_snapshot_never_fails_it").await
    else {
        return;
    };
    let scratch = db.scratch().await;
    let joint = scratch
        .events
        .joint_snapshots(&scratch.snapshots)
        .expect("stores on one pool write jointly");
    let repo = Repository::<Account>::new(scratch.events.clone())
        .with_joint_snapshots(joint, SnapshotPolicy::every(10).unwrap());
    let id = Uuid::new_v4();
    let mut account = opened(id, 11); // 12 events: crosses 10
    assert_eq!(repo.save(&mut account).await.unwrap(), 12);
    let snapshot = scratch
        .snapshots
        .get_snapshot(id, "Account", 1)
        .await
        .unwrap()
        .expect("a snapshot at 12");
    assert_eq!(snapshot.version, 12);
    assert_eq!(snapshot.event_id, account.last_event_id());
    assert_eq!(repo.metrics().written("Account"), 1);
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (12, account.state()));
    assert_eq!(repo.metrics().hits("Account"), 1);

    // A conflict is the save's own: the snapshot goes nowhere either.
    let mut stale = opened(id, 9);
    let err = repo.save(&mut stale).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 0,
                actual: 12,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        scratch
            .snapshots
            .get_snapshot(id, "Account", 1)
            .await
            .unwrap()
            .unwrap()
            .version,
        12
    );

    // A snapshot table that refuses every row: the joint statement fails, the save appends
    // without the snapshot and succeeds, and the snapshot's own write fails and is counted.
    sqlx::query(&format!(
        "ALTER TABLE {} ADD CONSTRAINT refuse_all CHECK (version < 0) NOT VALID",
        scratch.table("eventsource_snapshots")
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut more = repo.load(id).await.unwrap();
    for _ in 0..10 {
        more.record(MoneyDeposited { amount: 1.0 });
    }
    assert_eq!(repo.save(&mut more).await.unwrap(), 22);
    assert_eq!(repo.metrics().write_failures("Account"), 1);
    let versions: Vec<u64> = read_stream(&scratch.events, id, "Account", 0)
        .await
        .iter()
        .map(|e| e.aggregate_version)
        .collect();
    assert_eq!(versions, (1..=22).collect::<Vec<_>>(), "every event stored once");
    assert_eq!(
        scratch
            .snapshots
            .get_snapshot(id, "Account", 1)
            .await
            .unwrap()
            .unwrap()
            .version,
        12
    );
    scratch.drop(&db.pool).await;
}

// ---------------------------------------------------------------------------------------
// A load with a snapshot in one statement

/// The versions of the events a joint read returned, and its snapshot's version.
async fn joint_read(
    events: &PostgresEventStore,
    snapshots: &PostgresSnapshotStore,
    id: Uuid,
) -> Option<(u64, Vec<u64>)> {
    let joint = events
        .joint_snapshots(snapshots)
        .expect("stores on one pool read jointly");
    let reader = joint.reader();
    let found = reader.read(id, "Account", u32::MAX).await.unwrap()?;
    let versions: Vec<StoredEvent> = found.events.try_collect().await.unwrap();
    Some((
        found.snapshot.version,
        versions.iter().map(|e| e.aggregate_version).collect(),
    ))
}

#[tokio::test]
async fn a_snapshot_and_its_events_are_read_in_one_statement_and_checked_as_ever() {
    let Some(db) = db("a_snapshot_and_its_events_are_read_in_one_statement_and_checked_as_ever").await else {
        return;
    };
    // Pages of three events: the tail after the first page is read page by page.
    let events = db.events.clone().with_page_size(3).unwrap();
    let repo = Repository::<Account>::new(events.clone()).with_joint_snapshots(
        events.joint_snapshots(&db.snapshots).unwrap(),
        SnapshotPolicy::every(1000).unwrap(),
    );
    let id = Uuid::new_v4();
    let mut account = opened(id, 9);
    repo.save(&mut account).await.unwrap();
    let at_head = repo.create_snapshot(&account).await.unwrap();
    assert_eq!(at_head.version, 10);

    // At the head: the snapshot and the event at its version, which proves the stream has it.
    assert_eq!(joint_read(&events, &db.snapshots, id).await, Some((10, vec![10])));
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (10, account.state()));
    assert_eq!(repo.metrics().hits("Account"), 1);

    // Behind the head, by more than a page.
    let mut later = repo.load(id).await.unwrap();
    for amount in 1..=7 {
        later.record(MoneyDeposited {
            amount: f64::from(amount),
        });
    }
    repo.save(&mut later).await.unwrap();
    assert_eq!(
        joint_read(&events, &db.snapshots, id).await,
        Some((10, (10..=17).collect()))
    );
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (17, later.state()));
    assert_eq!(repo.metrics().hits("Account"), 3);

    // No snapshot.
    assert_eq!(joint_read(&events, &db.snapshots, Uuid::new_v4()).await, None);

    // Pages of one event: at the head, then the rest of the stream page by page.
    let single = db.events.clone().with_page_size(1).unwrap();
    assert_eq!(
        joint_read(&single, &db.snapshots, id).await,
        Some((10, (10..=17).collect()))
    );

    // Beyond the head: the snapshot comes alone, and the repository replays every event.
    let beyond = Snapshot {
        version: 30,
        ..at_head.clone()
    };
    db.snapshots.save_snapshot(&beyond).await.unwrap();
    assert_eq!(joint_read(&events, &db.snapshots, id).await, Some((30, vec![])));
    assert_eq!(joint_read(&single, &db.snapshots, id).await, Some((30, vec![])));
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (17, later.state()));
    assert_eq!(repo.metrics().misses("Account", MissReason::BeyondStreamHead), 1);

    // Another schema version: replayed too. (One newer than the reader's is never read.)
    db.snapshots.delete_snapshot(id, "Account").await.unwrap();
    let other_schema = Snapshot {
        schema_version: 0,
        ..at_head.clone()
    };
    db.snapshots.save_snapshot(&other_schema).await.unwrap();
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (17, later.state()));
    assert_eq!(repo.metrics().misses("Account", MissReason::SchemaMismatch), 1);

    // A snapshot at version 0 is refused before its events are looked at, as ever.
    db.snapshots.delete_snapshot(id, "Account").await.unwrap();
    let at_zero = Snapshot {
        version: 0,
        ..at_head
    };
    db.snapshots.save_snapshot(&at_zero).await.unwrap();
    // No event is at version 0, so the reader falls back to two statements.
    assert_eq!(
        joint_read(&events, &db.snapshots, id).await,
        Some((0, (1..=17).collect()))
    );
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (17, later.state()));
    assert_eq!(repo.metrics().misses("Account", MissReason::StoreError), 1);
}

#[tokio::test]
async fn corrupt_rows_fail_a_joint_read_and_the_load_replays() {
    let Some(db) = db("corrupt_rows_fail_a_joint_read_and_the_load_replays").await else {
        return;
    };
    let scratch = db.scratch().await;
    let repo = Repository::<Account>::new(scratch.events.clone()).with_joint_snapshots(
        scratch.events.joint_snapshots(&scratch.snapshots).unwrap(),
        SnapshotPolicy::every(1000).unwrap(),
    );
    let joint = scratch.events.joint_snapshots(&scratch.snapshots).unwrap();
    let reader = joint.reader();
    let snapshots = scratch.table("eventsource_snapshots");

    // A snapshot row out of range.
    let id = Uuid::new_v4();
    let mut account = opened(id, 4);
    repo.save(&mut account).await.unwrap();
    repo.create_snapshot(&account).await.unwrap();
    sqlx::query(&format!(
        "UPDATE {snapshots} SET schema_version = -4 WHERE aggregate_id = $1"
    ))
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let err = reader.read(id, "Account", u32::MAX).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (5, account.state()));
    assert_eq!(repo.metrics().misses("Account", MissReason::StoreError), 1);

    // A stream with events after the snapshot's version but none at it.
    let (id, ty) = (Uuid::new_v4(), "Gap");
    let events = scratch.table(EVENTS);
    insert_row(&db.pool, &events, id, ty, 1, 1).await;
    insert_row(&db.pool, &events, id, ty, 3, 1).await;
    scratch
        .snapshots
        .save_snapshot(&snapshot(id, ty, 2, 1))
        .await
        .unwrap();
    // The events say so, as a read of the stream from the snapshot's version would.
    let found = reader.read(id, ty, u32::MAX).await.unwrap().unwrap();
    assert_eq!(found.snapshot.version, 2);
    let read: Vec<_> = found.events.collect().await;
    assert!(matches!(&read[..], [Err(Error::Corrupt { .. })]), "{read:?}");
    let err = read[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("jumps from version 1 to 3"), "{err}");

    // A bad event row in the first page ends the events with an error.
    let id = Uuid::new_v4();
    insert_row(&db.pool, &events, id, ty, 1, 1).await;
    insert_row(&db.pool, &events, id, ty, 2, -1).await;
    scratch
        .snapshots
        .save_snapshot(&snapshot(id, ty, 1, 1))
        .await
        .unwrap();
    let read: Vec<_> = reader
        .read(id, ty, u32::MAX)
        .await
        .unwrap()
        .unwrap()
        .events
        .collect()
        .await;
    assert_eq!(read.len(), 2, "{read:?}");
    assert!(matches!(&read[1], Err(Error::Corrupt { .. })), "{:?}", read[1]);

    scratch.drop(&db.pool).await;
}

#[tokio::test]
async fn only_stores_on_one_pool_read_jointly() {
    let Some(db) = db("only_stores_on_one_pool_read_jointly").await else {
        return;
    };
    let snapshots = &db.snapshots;
    // Clones and stores made from a clone of the pool share it, whatever their schemas.
    assert!(db.events.joint_snapshots(snapshots).is_some());
    let in_schema = PostgresEventStore::with_schema(db.pool.clone(), "es_joint_unused").unwrap();
    assert!(in_schema.joint_snapshots(snapshots).is_some());
    // A pool of its own may be another database.
    let other = PostgresEventStore::new(db.admin().await);
    assert!(other.joint_snapshots(snapshots).is_none());
    // The stores of a URL hand the joint statements out.
    let stores = eventsource::backend::open(&db.url).await.unwrap();
    assert!(stores.joint_snapshots.is_some());
}
