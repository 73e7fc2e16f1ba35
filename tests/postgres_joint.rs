//! PostgreSQL's joint statements: a save with its due snapshot, and a load with its
//! snapshot, in one statement each, with the outcome of the two statements they replace.
//!
//! The tests need `EVENTSOURCE_TEST_POSTGRES_URL` (such as
//! `postgres://postgres@127.0.0.1:5432/test`). Without it each one says it is skipped and
//! passes, unless `EVENTSOURCE_REQUIRE_POSTGRES=1` (as in CI), which makes it fail. They share
//! the database, also with other runs: every test uses fresh ids and its own aggregate type
//! names, and a test that needs empty tables makes its own schema.

mod common;
#[path = "postgres/support.rs"]
mod support;

use common::{opened, Account, MoneyDeposited};
use eventsourcing_kit::backend::postgres::{PostgresEventStore, PostgresSnapshotStore};
use eventsourcing_kit::{Error, MissReason, Repository, SnapshotPolicy, SnapshotStore, StoredEvent, Uuid};
use futures_util::{StreamExt, TryStreamExt};
use support::*;

// ---------------------------------------------------------------------------------------
// A save with its snapshot in one statement

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
        more.record(MoneyDeposited { amount: 100 });
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
        later.record(MoneyDeposited { amount });
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
    let beyond = {
        let mut value = at_head.clone();
        value.version = 30;
        value
    };
    db.snapshots.save_snapshot(&beyond).await.unwrap();
    assert_eq!(joint_read(&events, &db.snapshots, id).await, Some((30, vec![])));
    assert_eq!(joint_read(&single, &db.snapshots, id).await, Some((30, vec![])));
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (17, later.state()));
    assert_eq!(repo.metrics().misses("Account", MissReason::BeyondStreamHead), 1);

    // Another schema version: replayed too. (One newer than the reader's is never read.)
    db.snapshots.delete_snapshot(id, "Account").await.unwrap();
    let other_schema = {
        let mut value = at_head.clone();
        value.schema_version = 0;
        value
    };
    db.snapshots.save_snapshot(&other_schema).await.unwrap();
    let loaded = repo.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (17, later.state()));
    assert_eq!(repo.metrics().misses("Account", MissReason::SchemaMismatch), 1);

    // A snapshot at version 0 is refused before its events are looked at, as ever.
    db.snapshots.delete_snapshot(id, "Account").await.unwrap();
    let at_zero = {
        let mut value = at_head;
        value.version = 0;
        value
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
    let stores = eventsourcing_kit::backend::open(&db.url).await.unwrap();
    assert!(stores.joint_snapshots.is_some());
}
