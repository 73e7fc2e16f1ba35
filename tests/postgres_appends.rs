//! PostgreSQL appends: reads as appended, paged reads, appends racing on real connections and
//! from several processes, and group commit of one-event appends and of saves over several
//! streams.
//!
//! The tests need `EVENTSOURCE_TEST_POSTGRES_URL` (such as
//! `postgres://postgres@127.0.0.1:5432/test`). Without it each one says it is skipped and
//! passes, unless `EVENTSOURCE_REQUIRE_POSTGRES=1` (as in CI), which makes it fail. They share
//! the database, also with other runs: every test uses fresh ids and its own aggregate type
//! names, and a test that needs empty tables makes its own schema.

mod common;
#[path = "postgres/support.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::DateTime;
use eventsourcing_kit::backend::postgres::{pool_options, PostgresEventStore};
use eventsourcing_kit::{Error, EventEnvelope, EventStore, Snapshot, SnapshotStore, StoredEvent, Uuid};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use support::*;

/// Set in the child processes of the multi-process test: the stream they append to.
const CHILD_VAR: &str = "EVENTSOURCE_TEST_POSTGRES_CHILD";

// ---------------------------------------------------------------------------------------
// Appends and reads

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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

    let snapshot = Snapshot::new(id, ty.clone(), 1, 1, "not json");
    let err = db.snapshots.save_snapshot(&snapshot).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(!db.snapshots.snapshot_exists(id, &ty).await.unwrap());
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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
// Group commit of one-event appends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
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

/// The events of a save over two streams, one for each at its version after `at`.
fn pair_of(ty: &str, (a, b): (Uuid, Uuid), (at_a, at_b): (u64, u64)) -> [Vec<EventEnvelope>; 2] {
    [batch(a, ty, at_a, 1), batch(b, ty, at_b, 1)]
}

/// Saves `events` (as [`pair_of`] gives them) over their two streams.
async fn save_two(
    store: &PostgresEventStore,
    ty: &str,
    events: &[Vec<EventEnvelope>; 2],
) -> Result<Vec<eventsourcing_kit::Appended>, Error> {
    use eventsourcing_kit::multi_stream::{MultiStreamAppend, StreamBatches};
    use eventsourcing_kit::Batch;

    let batches = events.each_ref().map(|events| {
        Batch::checked(
            events[0].aggregate_id,
            ty,
            events[0].aggregate_version - 1,
            events,
        )
        .unwrap()
    });
    store
        .append_streams(StreamBatches::checked(&batches, &[]).unwrap())
        .await
}

/// Saves over two streams share group statements with each other and with one-event appends,
/// and each stays all or nothing: whether its streams moved before the group (left out), a
/// writer outside the group took one of its versions first (the group fails, each member goes
/// alone), or its caller went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn grouped_saves_over_several_streams_are_all_or_nothing() {
    let Some(db) = db_with(
        "grouped_saves_over_several_streams_are_all_or_nothing",
        pool_options().max_connections(8),
    )
    .await
    else {
        return;
    };
    let ty = unique_type("GroupedStreams");
    // A bound well past what a busy shared server may take: the test is of outcomes, not of
    // the timeout.
    let events = db
        .events
        .clone()
        .with_append_timeout(Duration::from_secs(60))
        .unwrap();
    let deadline = Duration::from_secs(60);
    // 24 writers on pairs of streams of their own, 10 saves each: over both streams, or, for
    // every fourth writer, of two events in the first. Every third writer's even saves are
    // cancelled part way, then made again.
    let mut writers = Vec::new();
    for w in 0..24u64 {
        let (events, ty) = (events.clone(), ty.clone());
        writers.push(tokio::spawn(async move {
            let pair = (Uuid::new_v4(), Uuid::new_v4());
            // The position each save returned for each stream it wrote.
            let mut returned = Vec::new();
            for version in 0..10 {
                let save = pair_of(&ty, pair, (version, version));
                let two = batch(pair.0, &ty, 2 * version, 2);
                let save = || async {
                    match w % 4 {
                        3 => events
                            .append(pair.0, &ty, 2 * version, &two)
                            .await
                            .map(|a| vec![a]),
                        _ => save_two(&events, &ty, &save).await,
                    }
                };
                if w % 3 == 0 && version % 2 == 0 {
                    let _ = tokio::time::timeout(Duration::from_micros(50), save()).await;
                }
                // Made again after a cancellation, a save is acknowledged if it was stored.
                let saved = save().await.unwrap();
                let expected = match w % 4 {
                    3 => vec![2 * version + 2],
                    _ => vec![version + 1; 2],
                };
                assert_eq!(saved.iter().map(|a| a.version).collect::<Vec<_>>(), expected);
                returned.extend(saved.iter().map(|a| a.position));
            }
            (pair, w % 4 == 3, returned)
        }));
    }
    // Meanwhile, on one contested pair: saves over both streams, one-event appends to the
    // first, and two-event appends to the second.
    let contested = (Uuid::new_v4(), Uuid::new_v4());
    let mut racers = Vec::new();
    for r in 0..9 {
        let (events, ty) = (events.clone(), ty.clone());
        racers.push(tokio::spawn(async move {
            let (mut stored, mut refused) = (Vec::new(), Vec::new());
            for _ in 0..30 {
                let at_a = events.stream_version(contested.0, &ty).await.unwrap();
                let at_b = events.stream_version(contested.1, &ty).await.unwrap();
                let (outcome, ids) = match r % 3 {
                    0 => {
                        let save = pair_of(&ty, contested, (at_a, at_b));
                        let ids = [save[0][0].event_id, save[1][0].event_id];
                        (save_two(&events, &ty, &save).await, ids)
                    }
                    1 => {
                        let one = batch(contested.0, &ty, at_a, 1);
                        let appended = events.append(contested.0, &ty, at_a, &one).await;
                        (appended.map(|a| vec![a]), [one[0].event_id; 2])
                    }
                    _ => {
                        let two = batch(contested.1, &ty, at_b, 2);
                        let appended = events.append(contested.1, &ty, at_b, &two).await;
                        (appended.map(|a| vec![a]), [two[0].event_id, two[1].event_id])
                    }
                };
                match outcome {
                    Ok(_) => stored.extend(ids),
                    Err(Error::Conflict { .. } | Error::Conflicts { .. }) => refused.extend(ids),
                    Err(e) => panic!("a racing save failed: {e}"),
                }
            }
            (stored, refused)
        }));
    }
    // The writers of each transaction, and the transactions of the batches' writers.
    let (mut transactions, mut batches) = (BTreeMap::<u64, HashSet<usize>>::new(), Vec::new());
    for (w, writer) in writers.into_iter().enumerate() {
        let ((a, b), batched, returned) = tokio::time::timeout(deadline, writer)
            .await
            .expect("no save hangs")
            .unwrap();
        let (first, second) = (
            read_stream(&db.events, a, &ty, 0).await,
            read_stream(&db.events, b, &ty, 0).await,
        );
        let count = |n: u64| (1..=n).collect::<Vec<u64>>();
        let versions = |s: &[StoredEvent]| s.iter().map(|e| e.aggregate_version).collect::<Vec<u64>>();
        let (on_first, on_second) = if batched { (20, 0) } else { (10, 10) };
        assert_eq!(versions(&first), count(on_first), "each version stored once");
        assert_eq!(versions(&second), count(on_second), "each version stored once");
        // Each save's events are consecutive in the feed, in the order of its batches, and at
        // the positions it returned.
        let (saves, positions): (Vec<[&StoredEvent; 2]>, Vec<u64>) = match batched {
            true => (
                first.chunks(2).map(|c| [&c[0], &c[1]]).collect(),
                first.chunks(2).map(|c| c[1].position).collect(),
            ),
            false => (
                first.iter().zip(&second).map(|(x, y)| [x, y]).collect(),
                first
                    .iter()
                    .zip(&second)
                    .flat_map(|(x, y)| [x.position, y.position])
                    .collect(),
            ),
        };
        assert_eq!(returned, positions, "the positions the saves returned");
        for [x, y] in saves {
            assert_eq!(y.position, x.position + 1, "one save's events are consecutive");
            transactions.entry(x.position >> 20).or_default().insert(w);
            if batched {
                batches.push(x.position >> 20);
            }
        }
    }
    // 240 saves committed in fewer transactions: they went in groups, batches too.
    assert!(
        transactions.len() < 240,
        "saves shared commits: {} transactions",
        transactions.len()
    );
    assert!(
        batches.iter().any(|tx| transactions[tx].len() > 1),
        "a batch shared its commit"
    );
    let (mut stored, mut refused) = (HashSet::new(), HashSet::new());
    for racer in racers {
        let (s, r) = tokio::time::timeout(deadline, racer)
            .await
            .expect("no race hangs")
            .unwrap();
        stored.extend(s);
        refused.extend(r);
    }
    let mut found = HashSet::new();
    for id in [contested.0, contested.1] {
        let stream = read_stream(&db.events, id, &ty, 0).await;
        let versions: Vec<u64> = stream.iter().map(|e| e.aggregate_version).collect();
        assert_eq!(
            versions,
            (1..=stream.len() as u64).collect::<Vec<_>>(),
            "no gap, no version twice"
        );
        found.extend(stream.iter().map(|e| e.event_id));
    }
    assert_eq!(
        found, stored,
        "every save that succeeded is stored whole, and nothing else"
    );
    assert!(refused.is_disjoint(&found), "nothing of a refused save is stored");
}

/// Waits until a statement containing `statement` waits for the transaction of the server
/// process `holder`; panics after 30 s.
async fn wait_until_blocked(pool: &sqlx::PgPool, holder: i32, statement: &str) {
    for _ in 0..3000 {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE $1 = ANY(pg_blocking_pids(pid)) AND position($2 in query) > 0",
        )
        .bind(holder)
        .bind(statement)
        .fetch_one(pool)
        .await
        .unwrap();
        if blocked > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no statement with {statement:?} came to wait for server process {holder}");
}

/// A group that holds a save over several streams, and meets a version taken by a writer
/// outside it, stores nothing: each member goes again alone, and only the save on the taken
/// stream is refused. Transactions held open make the order certain: the group forms behind a
/// lone append that waits, and its statement then waits for the outside writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_group_that_meets_a_writer_outside_it_stores_each_member_alone() {
    let Some(db) = db_with(
        "a_group_that_meets_a_writer_outside_it_stores_each_member_alone",
        pool_options().max_connections(8),
    )
    .await
    else {
        return;
    };
    let ty = unique_type("Outside");
    // Tables of its own: the transactions it holds open hold the feed back for their table,
    // which other tests read.
    let scratch = db.scratch().await;
    let store = scratch
        .events
        .clone()
        .with_append_timeout(Duration::from_secs(60))
        .unwrap();
    let [held, taken, free, left, right, lone] = [(); 6].map(|_| Uuid::new_v4());
    // Two transactions outside the store's groups, each holding version 1 of a stream.
    let mut holders = Vec::new();
    for id in [held, taken] {
        let mut tx = store.begin().await.unwrap();
        store
            .append_in_transaction(&mut tx, id, &ty, 0, &batch(id, &ty, 0, 1))
            .await
            .unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        holders.push((tx, pid));
    }
    let (taken_tx, taken_pid) = holders.pop().unwrap();
    let (held_tx, held_pid) = holders.pop().unwrap();
    // A lone append waits for the first transaction; meanwhile three members queue.
    let spawn_append = |id: Uuid| {
        let (store, ty) = (store.clone(), ty.clone());
        tokio::spawn(async move { store.append(id, &ty, 0, &batch(id, &ty, 0, 1)).await })
    };
    let leader = spawn_append(held);
    wait_until_blocked(&db.pool, held_pid, "INSERT INTO").await;
    let spawn_save = |pair: (Uuid, Uuid)| {
        let (store, ty) = (store.clone(), ty.clone());
        tokio::spawn(async move { save_two(&store, &ty, &pair_of(&ty, pair, (0, 0))).await })
    };
    let on_taken = spawn_save((taken, free));
    let elsewhere = spawn_save((left, right));
    let one = spawn_append(lone);
    // Time for the three to queue behind the waiting append (they do no I/O before).
    tokio::time::sleep(Duration::from_secs(1)).await;
    held_tx.commit().await.unwrap();
    assert!(matches!(
        leader.await.unwrap(),
        Err(Error::Conflict { actual: 1, .. })
    ));
    // The group's statement found every stream at 0, and now waits for the second one.
    wait_until_blocked(&db.pool, taken_pid, "WITH r AS MATERIALIZED").await;
    taken_tx.commit().await.unwrap();
    match on_taken.await.unwrap() {
        Err(Error::Conflicts { streams }) => {
            let named: Vec<(Uuid, u64)> = streams.iter().map(|s| (s.aggregate_id, s.actual)).collect();
            assert_eq!(named, [(taken, 1)], "the conflict names the taken stream alone");
        }
        other => panic!("the save on the taken stream was not refused: {other:?}"),
    }
    assert_eq!(elsewhere.await.unwrap().unwrap().len(), 2);
    assert_eq!(one.await.unwrap().unwrap().version, 1);
    for (id, count) in [(free, 0), (left, 1), (right, 1), (lone, 1), (taken, 1), (held, 1)] {
        assert_eq!(
            read_stream(&store, id, &ty, 0).await.len(),
            count,
            "events of {id}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Planning

/// The statements that write events are planned once per connection, not at each call: a
/// statement the server plans again each time (with the values of its arrays) spends longer
/// planning than running. Every kind of save runs a dozen times on a pool of one connection,
/// whose prepared statements the server then lists with how each was planned.
#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn writes_are_planned_once_per_connection() {
    use common::{Account, AccountCommands};
    use eventsourcing_kit::backend::Stores;
    use eventsourcing_kit::multi_stream::MultiStreamSave;
    use eventsourcing_kit::SnapshotPolicy;

    let Some(db) = db_with(
        "writes_are_planned_once_per_connection",
        pool_options().max_connections(1),
    )
    .await
    else {
        return;
    };
    // The server's default, whatever the environment set (`PGOPTIONS` can force generic plans,
    // which would hide a statement planned at each call). The pool's one connection is the
    // session of every statement below.
    sqlx::query("SET plan_cache_mode = auto")
        .execute(&db.pool)
        .await
        .unwrap();
    // Tables of its own: statistics that other tests' writes change would make the server
    // plan again for reasons of their own.
    let scratch = db.scratch().await;
    let stores = Stores::from_postgres(scratch.events.clone(), scratch.snapshots.clone());
    let plain = stores.repository::<Account>();
    let snapshotting = stores.repository_with_snapshots::<Account>(SnapshotPolicy::every(1).unwrap());
    let multi = stores.multi_stream().unwrap();
    let (mut a, mut b) = (
        common::opened(Uuid::new_v4(), 0),
        common::opened(Uuid::new_v4(), 0),
    );
    plain.save(&mut a).await.unwrap();
    plain.save(&mut b).await.unwrap();
    let mut snapshotted = common::opened(Uuid::new_v4(), 0);
    snapshotting.save(&mut snapshotted).await.unwrap();
    let requested = Uuid::new_v4();
    let mut requested_root = common::opened(requested, 0);
    plain.save(&mut requested_root).await.unwrap();
    for _ in 0..12 {
        a.deposit(100).unwrap();
        plain.save(&mut a).await.unwrap();
        snapshotted.deposit(100).unwrap();
        snapshotting.save(&mut snapshotted).await.unwrap();
        a.deposit(100).unwrap();
        b.deposit(100).unwrap();
        MultiStreamSave::new()
            .write(&mut a)
            .write(&mut b)
            .save(&multi)
            .await
            .unwrap();
        plain
            .command(requested)
            .request_id(Uuid::new_v4())
            .run(|account| account.deposit(100))
            .await
            .unwrap();
    }
    let plans: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let writes: Vec<&(String, i64, i64)> = plans
        .iter()
        .filter(|(statement, generic, custom)| statement.contains("INSERT INTO") && generic + custom >= 12)
        .collect();
    assert!(writes.len() >= 4, "the saves ran their statements: {plans:#?}");
    assert!(
        writes
            .iter()
            .any(|(statement, _, _)| statement.contains("WITH expected AS")),
        "the save over two streams ran its statement: {plans:#?}"
    );
    let replanned: Vec<&&(String, i64, i64)> = writes.iter().filter(|(_, _, custom)| *custom > 5).collect();
    assert!(
        replanned.is_empty(),
        "statements planned at each call: {replanned:#?}"
    );
}

/// The plan a connection keeps for the feed's head at every position (its generic plan)
/// expects to read a few rows, not a third of the table: on a large table it would scan the
/// whole table at each call, and consumers read the head after each batch that catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_plan_kept_for_the_head_expects_a_few_rows() {
    let Some(db) = db_with(
        "the_plan_kept_for_the_head_expects_a_few_rows",
        pool_options().max_connections(1),
    )
    .await
    else {
        return;
    };
    // The pool's one connection keeps the generic plan from the first call.
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&db.pool)
        .await
        .unwrap();
    let scratch = db.scratch().await;
    let events = &scratch.events;
    // A table of 60,000 one-event streams, filled by the server itself in one transaction.
    let table = scratch.table("eventsource_events");
    sqlx::query(&format!(
        "INSERT INTO {table} (position, event_id, event_type, event_version, aggregate_id,
             aggregate_type, aggregate_version, occurred_at, payload)
         SELECT (pg_current_xact_id()::text::bigint << 20) + g, gen_random_uuid(), 'Deposited', 1,
             gen_random_uuid(), 'Account', 1, now(), '{{}}'
         FROM generate_series(1, 60000) AS g"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(&format!("ANALYZE {table}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let head = events.head(0).await.unwrap();
    assert_eq!(head.events_after, 60_000);
    let found = events.head(head.position - 1).await.unwrap();
    assert_eq!((found.position, found.events_after), (head.position, 1));
    // The statement the store ran, planned again for every position at once: how many rows
    // its plan expects to read from the table.
    let statement: String = sqlx::query_scalar(
        "SELECT statement FROM pg_prepared_statements
         WHERE statement LIKE '%count(*) FILTER%' AND strpos(statement, $1) > 0",
    )
    .bind(&table)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(&format!("PREPARE head_again AS {statement}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let plan: sqlx::types::JsonValue = sqlx::query_scalar(&format!(
        "EXPLAIN (FORMAT JSON) EXECUTE head_again({})",
        head.position - 1
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut nodes = vec![&plan[0]["Plan"]];
    let mut expected = None;
    while let Some(node) = nodes.pop() {
        if node["Relation Name"] == "eventsource_events" {
            assert!(
                node["Node Type"] != "Seq Scan",
                "the head scans the table: {plan:#}"
            );
            expected = node["Plan Rows"].as_f64();
        }
        nodes.extend(node["Plans"].as_array().into_iter().flatten());
    }
    let expected = expected.unwrap_or_else(|| panic!("the plan reads the table: {plan:#}"));
    assert!(
        expected <= 600.0,
        "the plan expects {expected} rows of 60,000: {plan:#}"
    );
}
