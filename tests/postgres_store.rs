//! The PostgreSQL stores: the conformance suites, configuration and migrations, failures of
//! the database (lost connections, timeouts), snapshots and repositories of two instances.
//!
//! The tests need `EVENTSOURCE_TEST_POSTGRES_URL` (such as
//! `postgres://postgres@127.0.0.1:5432/test`). Without it each one says it is skipped and
//! passes, unless `EVENTSOURCE_REQUIRE_POSTGRES=1` (as in CI), which makes it fail. They share
//! the database, also with other runs: every test uses fresh ids and its own aggregate type
//! names, and a test that needs empty tables makes its own schema.

mod common;
#[path = "postgres/support.rs"]
mod support;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::DateTime;
use common::{opened, Account, MoneyDeposited, MoneyWithdrawn};
use eventsourcing_kit::backend::postgres::{
    connect_url, pool_options, PostgresEventStore, PostgresSnapshotStore,
};
use eventsourcing_kit::{Error, EventStore, Repository, SnapshotPolicy, SnapshotStore, StoredEvent, Uuid};
use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::*;

// ---------------------------------------------------------------------------------------
// The conformance suite: one test per check, each on a pool of its own.

// The expression the macros take is evaluated in each generated test, so its `return` ends
// that test: this is how the checks skip without a database, like every test here.
mod event_store_conformance {
    eventsourcing_kit::event_store_conformance!(
        #[cfg_attr(
            not(eventsource_postgres_tests),
            ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )]
        {
            let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
                return;
            };
            std::future::ready(db.events)
        }
    );
}

mod snapshot_store_conformance {
    eventsourcing_kit::snapshot_store_conformance!(
        #[cfg_attr(
            not(eventsource_postgres_tests),
            ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )]
        {
            let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
                return;
            };
            std::future::ready(db.snapshots)
        }
    );
}

mod subscription_store_conformance {
    eventsourcing_kit::subscription_store_conformance!(
        #[cfg_attr(
            not(eventsource_postgres_tests),
            ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )]
        {
            let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
                return;
            };
            std::future::ready(db.events.subscription_store())
        }
    );
}

mod key_store_conformance {
    eventsourcing_kit::key_store_conformance!(
        #[cfg_attr(
            not(eventsource_postgres_tests),
            ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )]
        {
            let Some(db) = super::db(concat!("conformance check in ", module_path!())).await else {
                return;
            };
            std::future::ready(db.events.key_store())
        }
    );
}

/// The stores of the test database for one check, `None` without a server.
async fn stores_of(test: &str) -> Option<eventsourcing_kit::backend::Stores> {
    let db = db(test).await?;
    Some(eventsourcing_kit::backend::Stores::from_postgres(
        db.events,
        db.snapshots,
    ))
}

mod stream_lifecycle_conformance {
    eventsourcing_kit::stream_lifecycle_conformance!(
        #[cfg_attr(
            not(eventsource_postgres_tests),
            ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )]
        optional: super::stores_of(concat!("conformance check in ", module_path!()))
    );
}

mod stores_conformance {
    eventsourcing_kit::stores_conformance!(
        #[cfg_attr(
            not(eventsource_postgres_tests),
            ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )]
        optional: super::stores_of(concat!("conformance check in ", module_path!()))
    );
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_stores_hand_out_every_ability() {
    let Some(db) = db("postgres_stores_hand_out_every_ability").await else {
        return;
    };
    let every = eventsourcing_kit::testing::stores::Abilities {
        append_signal: true,
        stream_listing: true,
        snapshot_listing: true,
        request_index: true,
        slice_feed: true,
        joint_snapshots: true,
        multi_stream: true,
        stream_lifecycle: true,
    };
    let stores = eventsourcing_kit::backend::open(&db.url).await.unwrap();
    eventsourcing_kit::testing::stores::assert_abilities(&stores, every);
    // Stores on two pools cannot write jointly: the rest they keep.
    let apart = PostgresSnapshotStore::new(db.admin().await);
    let stores = eventsourcing_kit::backend::Stores::from_postgres(db.events.clone(), apart);
    let without_joint = eventsourcing_kit::testing::stores::Abilities {
        joint_snapshots: false,
        ..every
    };
    eventsourcing_kit::testing::stores::assert_abilities(&stores, without_joint);
}

/// The event store suite through a wrapper that forwards only the required methods, on a
/// schema of its own (the trait's defaults read the whole feed).
#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_event_store_suite_passes_through_a_wrapper_of_the_required_methods() {
    let Some(db) = db("the_event_store_suite_passes_through_a_wrapper_of_the_required_methods").await else {
        return;
    };
    let scratch = db.scratch().await;
    eventsourcing_kit::testing::event_store::run_all(&eventsourcing_kit::testing::RequiredOnly(
        scratch.events.clone(),
    ))
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
// Failures of the database

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
        {
            let mut value = read;
            value.state = five.state.clone();
            value
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn repositories_of_two_instances_share_the_stores_of_a_url() {
    let Some(url) = common::postgres_url("repositories_of_two_instances_share_the_stores_of_a_url") else {
        return;
    };
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
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
    mine.record(MoneyDeposited { amount: 500 });
    theirs.record(MoneyWithdrawn { amount: 700 });
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
