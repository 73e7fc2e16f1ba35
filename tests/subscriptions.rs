//! Subscriptions on every backend: many writers and a subscription counting their events (none
//! missed, none out of order), handlers that fail, dead letters, graceful shutdown and restart,
//! lag, typed decoding; and consumer processes killed with SIGKILL: every event handled at
//! least once, the checkpoint never ahead of what was handled, one active consumer at a time,
//! and a standby that takes over.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL` (see `tests/postgres_store.rs`).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsourcing_kit::backend::{postgres, sqlite};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::subscription::{OnDisorder, Restart, SubscriptionStore, Typed};
use eventsourcing_kit::{AppendSignal, EventEnvelope, EventStore};

/// Set in the consumer processes: `backend location name type after out-file`.
const CHILD_VAR: &str = "EVENTSOURCE_TEST_SUBSCRIBER";

fn unique(label: &str) -> String {
    format!("{label}-{}", Uuid::new_v4().simple())
}

fn event(id: Uuid, ty: &str, version: u64, payload: &str) -> EventEnvelope {
    EventEnvelope::from_json(id, ty, version, "Ticked", 1, payload)
}

/// Appends `count` events of type `ty` in one stream, one at a time; their ids.
async fn append(events: &dyn EventStore, ty: &str, count: u64) -> Vec<Uuid> {
    let id = Uuid::new_v4();
    let mut ids = Vec::new();
    for version in 1..=count {
        let e = event(id, ty, version, &format!(r#"{{"n":{version}}}"#));
        ids.push(e.event_id);
        events.append(id, ty, version - 1, &[e]).await.unwrap();
    }
    ids
}

/// A SQLite event store on the file at `path` and the subscription store on its database.
async fn sqlite_stores(
    path: std::path::PathBuf,
) -> (sqlite::SqliteEventStore, sqlite::SqliteSubscriptionStore) {
    let events = sqlite::SqliteEventStore::open(path).await.unwrap();
    let store = sqlite::SqliteSubscriptionStore::on(events.database().clone())
        .await
        .unwrap();
    (events, store)
}

/// The tests' URL and a migrated event store on a pool of `connections`, or `None` if the
/// PostgreSQL tests are skipped.
async fn postgres_events(test: &str, connections: u32) -> Option<(String, postgres::PostgresEventStore)> {
    let url = common::postgres_url(test)?;
    let pool = common::postgres_pool(test, connections).await?;
    let events = postgres::PostgresEventStore::new(pool);
    events.migrate().await.unwrap();
    Some((url, events))
}

/// What a collecting handler has seen, shared with the test.
type Seen = Arc<Mutex<Vec<StoredEvent>>>;

fn collector(seen: &Seen) -> impl FnMut(&[StoredEvent]) -> Result<(), HandlerError> + Send {
    let seen = seen.clone();
    move |batch: &[StoredEvent]| {
        seen.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
}

/// Completes once `seen` holds `count` events.
async fn until_seen(seen: &Seen, count: usize) {
    for _ in 0..3000 {
        if seen.lock().unwrap().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the subscription saw {} of {count} events",
        seen.lock().unwrap().len()
    );
}

// ---------------------------------------------------------------------------------------
// Many writers, one subscription

async fn many_writers_one_subscription(events: Arc<dyn EventStore>, store: Arc<dyn SubscriptionStore>) {
    let ty = unique("Counted");
    let start = events.head(0).await.unwrap().position;
    let subscription = Subscription::new(&unique("counter"), events.clone(), store)
        .unwrap()
        .aggregate_type(&ty)
        .starting_after(start)
        .batch_size(50)
        .unwrap();
    let seen = Seen::default();
    let writers = (0..8).map(|w| {
        let (events, ty) = (events.clone(), ty.clone());
        tokio::spawn(async move {
            let id = Uuid::new_v4();
            let (mut version, mut ids) = (0, Vec::new());
            for b in 0..20u64 {
                let batch: Vec<_> = (1..=1 + (w + b) % 4)
                    .map(|i| event(id, &ty, version + i, "{}"))
                    .collect();
                ids.extend(batch.iter().map(|e| e.event_id));
                version = events.append(id, &ty, version, &batch).await.unwrap().version;
            }
            ids
        })
    });
    let writers: Vec<_> = writers.collect();
    let mut appended = HashSet::new();
    let expected: usize = (0..8u64)
        .map(|w| (0..20u64).map(|b| 1 + (w + b) % 4).sum::<u64>() as usize)
        .sum();
    let run = subscription.run(collector(&seen), until_seen(&seen, expected));
    let ((), written) = tokio::join!(
        async { run.await.unwrap() },
        futures_util::future::join_all(writers)
    );
    for ids in written {
        appended.extend(ids.unwrap());
    }
    let seen = seen.lock().unwrap().clone();
    let ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), seen.len(), "no event is handed over twice");
    assert_eq!(ids, appended, "every event is handed over");
    assert!(
        seen.windows(2).all(|w| w[0].position < w[1].position),
        "in feed order"
    );
    assert_eq!(
        subscription.checkpoint().await.unwrap(),
        Some(seen.last().unwrap().position)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_and_a_subscription_in_memory() {
    many_writers_one_subscription(
        Arc::new(InMemoryEventStore::new()),
        Arc::new(InMemorySubscriptionStore::new()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_and_a_subscription_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (events, store) = sqlite_stores(dir.path().join("feed.db")).await;
    many_writers_one_subscription(Arc::new(events), Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn many_writers_and_a_subscription_on_postgres() {
    let Some((url, events)) = postgres_events("many_writers_and_a_subscription_on_postgres", 12).await else {
        return;
    };
    // A feed of its own: on the shared one, the subscription's last batch may end with other
    // tests' events, and its checkpoint with them.
    let scratch = common::ScratchSchema::new(&url, "many_writers");
    let events = postgres::PostgresEventStore::with_schema(events.pool().clone(), &scratch.name).unwrap();
    events.migrate().await.unwrap();
    let store = events.subscription_store();
    many_writers_one_subscription(Arc::new(events), Arc::new(store)).await;
}

// ---------------------------------------------------------------------------------------
// Failing handlers, shutdown, lag, typed events

fn quick(subscription: Subscription) -> Subscription {
    subscription
        .retry(3, Duration::from_millis(1), Duration::from_millis(5))
        .unwrap()
}

#[tokio::test]
async fn a_handler_that_fails_a_few_times_is_retried_and_sees_each_event_once_it_succeeds() {
    let events = InMemoryEventStore::new();
    let ids = append(&events, "Flaky", 5).await;
    let subscription = quick(Subscription::new("flaky", events, InMemorySubscriptionStore::new()).unwrap());
    let (mut failures, seen) = (2, Seen::default());
    let mut collect = collector(&seen);
    let handler = move |batch: &[StoredEvent]| {
        if failures > 0 {
            failures -= 1;
            return Err("not yet".into());
        }
        collect(batch)
    };
    subscription.run(handler, until_seen(&seen, 5)).await.unwrap();
    let got: Vec<Uuid> = seen.lock().unwrap().iter().map(|e| e.event_id).collect();
    assert_eq!(got, ids);
    assert_eq!(subscription.metrics().retries(), 2);
    assert_eq!(subscription.metrics().handled(), 5);
}

#[tokio::test]
async fn a_poison_event_is_a_dead_letter_and_the_rest_are_handled() {
    let events = InMemoryEventStore::new();
    let id = Uuid::new_v4();
    let batch: Vec<_> = (1..=5)
        .map(|v| {
            event(
                id,
                "Poisoned",
                v,
                if v == 3 { r#"{"poison":true}"# } else { "{}" },
            )
        })
        .collect();
    events.append(id, "Poisoned", 0, &batch).await.unwrap();
    let store = InMemorySubscriptionStore::new();
    let subscription = quick(Subscription::new("poisoned", events, store.clone()).unwrap())
        .on_failure(OnFailure::DeadLetter);
    let seen = Seen::default();
    let mut collect = collector(&seen);
    let handler = move |batch: &[StoredEvent]| {
        if batch.iter().any(|e| e.payload.contains("poison")) {
            return Err("cannot handle poison".into());
        }
        collect(batch)
    };
    subscription.run(handler, until_seen(&seen, 4)).await.unwrap();
    let handled: Vec<u64> = seen.lock().unwrap().iter().map(|e| e.aggregate_version).collect();
    assert_eq!(handled, [1, 2, 4, 5]);
    let letters = store.dead_letters("poisoned", 0, usize::MAX).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, batch[2].event_id);
    assert_eq!(letters[0].error, "cannot handle poison");
    assert_eq!(subscription.metrics().dead_letters(), 1);
    assert_eq!(
        subscription.lag().await.unwrap(),
        0,
        "the checkpoint is past the dead letter"
    );
}

#[tokio::test]
async fn a_handler_that_keeps_failing_stops_the_subscription_before_its_batch() {
    let events = InMemoryEventStore::new();
    append(&events, "Broken", 3).await;
    let subscription = quick(Subscription::new("broken", events, InMemorySubscriptionStore::new()).unwrap());
    let handler = |_: &[StoredEvent]| -> Result<(), HandlerError> { Err("down".into()) };
    let err = subscription
        .run(handler, std::future::pending())
        .await
        .unwrap_err();
    match err {
        Error::SubscriptionStopped {
            subscription,
            position,
            reason,
        } => {
            assert_eq!(
                (subscription.as_str(), position, reason.as_str()),
                ("broken", 1, "down")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        subscription.checkpoint().await.unwrap(),
        None,
        "nothing was handled"
    );
    assert_eq!(subscription.lag().await.unwrap(), 3);
    assert_eq!(subscription.metrics().failed_batches(), 1);
}

#[tokio::test]
async fn a_stopped_subscription_resumes_from_its_checkpoint() {
    let events = InMemoryEventStore::new();
    let store = InMemorySubscriptionStore::new();
    append(&events, "Resumed", 4).await;
    let subscription = Subscription::new("resumed", events.clone(), store.clone()).unwrap();
    let first = Seen::default();
    subscription
        .run(collector(&first), until_seen(&first, 4))
        .await
        .unwrap();
    assert_eq!(subscription.lag().await.unwrap(), 0);

    append(&events, "Resumed", 3).await;
    assert_eq!(subscription.lag().await.unwrap(), 3);
    let again = Subscription::new("resumed", events, store).unwrap();
    let second = Seen::default();
    again
        .run(collector(&second), until_seen(&second, 3))
        .await
        .unwrap();
    assert_eq!(
        second.lock().unwrap().len(),
        3,
        "only the events after the checkpoint"
    );
    assert!(second.lock().unwrap()[0].position > first.lock().unwrap()[3].position);
}

/// Catch-up on each backend: what the feed holds is handled, then it returns; a second call
/// finds nothing left; a subscription starting at the end has nothing to catch up with.
async fn catching_up(events: Arc<dyn EventStore>, store: Arc<dyn SubscriptionStore>) {
    let ty = unique("CatchUp");
    let name = unique("catch-up");
    let ids = [append(&*events, &ty, 3).await, append(&*events, &ty, 4).await].concat();
    let subscription = Subscription::new(&name, events.clone(), store.clone())
        .unwrap()
        .aggregate_type(&ty)
        .batch_size(2)
        .unwrap();
    let seen = Seen::default();
    assert_eq!(subscription.catch_up(collector(&seen)).await.unwrap(), 7);
    let got: Vec<Uuid> = seen.lock().unwrap().iter().map(|e| e.event_id).collect();
    assert_eq!(got, ids, "every event once, in order");
    assert_eq!(subscription.lag().await.unwrap(), 0);
    assert_eq!(
        subscription.catch_up(collector(&seen)).await.unwrap(),
        0,
        "nothing left"
    );
    let status = store.subscriptions().await.unwrap();
    let status = status.iter().find(|s| s.name == name).unwrap();
    assert_eq!(status.owner, None, "the lease is given up on return");

    let later = Subscription::new(&unique("catch-up-end"), events.clone(), store)
        .unwrap()
        .starting_at_end();
    assert_eq!(later.catch_up(collector(&Seen::default())).await.unwrap(), 0);
}

#[tokio::test]
async fn catch_up_handles_what_the_feed_holds_and_returns() {
    let events = InMemoryEventStore::new();
    catching_up(Arc::new(events), Arc::new(InMemorySubscriptionStore::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let (events, store) = sqlite_stores(dir.path().join("catch-up.db")).await;
    catching_up(Arc::new(events), Arc::new(store)).await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn catch_up_handles_what_the_feed_holds_and_returns_on_postgres() {
    let test = "catch_up_handles_what_the_feed_holds_and_returns_on_postgres";
    let Some(pool) = common::postgres_pool(test, 4).await else {
        return;
    };
    // A feed of the test's own, so that catching up does not read every other test's.
    let url = common::postgres_url(test).unwrap();
    let scratch = common::ScratchSchema::new(&url, "catch_up");
    let events = postgres::PostgresEventStore::with_schema(pool, &scratch.name).unwrap();
    events.migrate().await.unwrap();
    let store = events.subscription_store();
    catching_up(Arc::new(events), Arc::new(store)).await;
}

#[tokio::test]
async fn a_supervised_subscription_starts_again_after_it_stopped_and_counts_its_restarts() {
    let events = InMemoryEventStore::new();
    let ids = append(&events, "Supervised", 4).await;
    let subscription = Subscription::new("supervised", events, InMemorySubscriptionStore::new())
        .unwrap()
        .retry(1, Duration::from_millis(1), Duration::from_millis(1))
        .unwrap();
    // The store's disk is "full" for the first three runs: each stops the subscription.
    let (mut outages, seen) = (3, Seen::default());
    let mut collect = collector(&seen);
    let handler = move |batch: &[StoredEvent]| {
        if outages > 0 {
            outages -= 1;
            return Err("disk full".into());
        }
        collect(batch)
    };
    let restart = Restart::new()
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .unwrap();
    subscription
        .run_supervised(handler, until_seen(&seen, 4), restart)
        .await
        .unwrap();
    let got: Vec<Uuid> = seen.lock().unwrap().iter().map(|e| e.event_id).collect();
    assert_eq!(got, ids);
    assert_eq!(subscription.metrics().restarts(), 3);
    assert_eq!(subscription.metrics().failed_batches(), 3);

    // With restarts bounded, the last error comes back once they are used up.
    let events = InMemoryEventStore::new();
    append(&events, "Supervised", 1).await;
    let hopeless = Subscription::new("hopeless", events, InMemorySubscriptionStore::new())
        .unwrap()
        .retry(1, Duration::from_millis(1), Duration::from_millis(1))
        .unwrap();
    let failing = |_: &[StoredEvent]| -> Result<(), HandlerError> { Err("down".into()) };
    let err = hopeless
        .run_supervised(failing, std::future::pending(), restart.at_most(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SubscriptionStopped { .. }), "{err:?}");
    assert_eq!(hopeless.metrics().restarts(), 2);
}

#[tokio::test]
async fn starting_at_the_end_skips_the_events_already_there() {
    let events = InMemoryEventStore::new();
    append(&events, "Old", 3).await;
    let subscription = Subscription::new("latest", events.clone(), InMemorySubscriptionStore::new())
        .unwrap()
        .starting_at_end();
    let seen = Seen::default();
    let writer = {
        let events = events.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            append(&events, "New", 2).await;
        }
    };
    let ((), ()) = tokio::join!(
        async {
            subscription
                .run(collector(&seen), until_seen(&seen, 2))
                .await
                .unwrap()
        },
        writer
    );
    let types: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.aggregate_type.to_string())
        .collect();
    assert_eq!(types, ["New", "New"]);
}

#[tokio::test]
async fn typed_handlers_get_the_aggregates_events_decoded() {
    let events = InMemoryEventStore::new();
    let repo = Repository::<common::Account>::new(events.clone());
    let mut root = common::opened(Uuid::new_v4(), 3);
    repo.save(&mut root).await.unwrap();
    append(&events, "Other", 2).await;
    let subscription = Subscription::new("balances", events, InMemorySubscriptionStore::new())
        .unwrap()
        .for_aggregate::<common::Account>();
    let total = Arc::new(Mutex::new(0_i64));
    let handler = Typed::<common::Account, _>::new({
        let total = total.clone();
        move |_: &StoredEvent, event: common::AccountEvent| {
            *total.lock().unwrap() += match event {
                common::AccountEvent::AccountOpened(e) => e.initial_balance,
                common::AccountEvent::MoneyDeposited(e) => e.amount,
                common::AccountEvent::MoneyWithdrawn(e) => -e.amount,
            };
            Ok(())
        }
    });
    subscription
        .run(handler, tokio::time::sleep(Duration::from_millis(100)))
        .await
        .unwrap();
    assert_eq!(*total.lock().unwrap(), 10_300);
    assert_eq!(
        subscription.metrics().handled(),
        4,
        "only the account's events are read"
    );
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let new = || Subscription::new("x", InMemoryEventStore::new(), InMemorySubscriptionStore::new()).unwrap();
    assert!(matches!(new().batch_size(0), Err(Error::InvalidConfiguration(_))));
    assert!(matches!(
        new().poll_interval(Duration::ZERO),
        Err(Error::InvalidConfiguration(_))
    ));
    assert!(matches!(
        new().retry(0, Duration::ZERO, Duration::ZERO),
        Err(Error::InvalidConfiguration(_))
    ));
    assert!(matches!(
        new().lease(Duration::from_millis(1)),
        Err(Error::InvalidConfiguration(_))
    ));
    let err = Subscription::new("", InMemoryEventStore::new(), InMemorySubscriptionStore::new()).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
}

/// A read model that counts events, for a projection that is never run.
#[derive(Clone, Default)]
struct Counted(usize);

impl eventsourcing_kit::projection::MemoryProjection for Counted {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        self.0 += events.len();
        Ok(())
    }
}

#[tokio::test]
async fn a_name_that_would_garble_the_text_showing_it_is_refused_before_anything_is_stored() {
    use eventsourcing_kit::projection::{InMemoryReadModel, Projection};
    use eventsourcing_kit::subscription::MAX_NAME_LEN;

    let dir = tempfile::tempdir().unwrap();
    let (events, store) = sqlite_stores(dir.path().join("feed.db")).await;
    let too_long = "x".repeat(MAX_NAME_LEN + 1);
    for name in [
        "",
        "a\0b",
        "evil\n\u{1b}[2J",
        "forged\nrow     42",
        "tab\there",
        "bell\u{7}",
        "delete\u{7f}",
        "c1\u{9b}2J",
        "reversed\u{202e}",
        "line\u{2028}separator",
        too_long.as_str(),
    ] {
        match Subscription::new(name, events.clone(), store.clone()) {
            Err(Error::InvalidInput(message)) => assert!(
                !message.chars().any(|c| c.is_control()),
                "the refusal quotes the name escaped: {message}"
            ),
            other => panic!("a subscription named {name:?}: expected Error::InvalidInput, got {other:?}"),
        }
        match Projection::new(name, events.clone(), InMemoryReadModel::new(Counted::default())) {
            Err(Error::InvalidInput(_)) => {}
            other => panic!(
                "a projection named {name:?}: expected Error::InvalidInput, got {:?}",
                other.map(|p| p.name().to_owned())
            ),
        }
    }
    assert!(
        store.subscriptions().await.unwrap().is_empty(),
        "a refused name leaves nothing behind"
    );

    // Names at the limit, and names of any script, are taken and read back as they are.
    let longest = "y".repeat(MAX_NAME_LEN);
    for name in [longest.as_str(), "read-model v2 (ünïcödé) 勘定 😀", "a\\nb"] {
        let subscription = Subscription::new(name, events.clone(), store.clone()).unwrap();
        assert_eq!(subscription.name(), name);
        assert!(store
            .acquire(name, Uuid::new_v4(), Duration::from_secs(10))
            .await
            .unwrap());
    }
    let listed: Vec<String> = store
        .subscriptions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.contains(&longest));
}

// ---------------------------------------------------------------------------------------
// Consumer processes killed with SIGKILL

/// The consumer process: runs the subscription until killed, writing the position of every
/// event it handled to its file before the handler returns.
async fn consumer_process(spec: String) {
    let words: Vec<&str> = spec.split(' ').collect();
    let [backend, location, name, ty, after, out] = words[..] else {
        panic!("bad {CHILD_VAR}: {spec}")
    };
    let (events, store): (Arc<dyn EventStore>, Arc<dyn SubscriptionStore>) = match backend {
        "sqlite" => {
            let events = sqlite::SqliteEventStore::open(location).await.unwrap();
            let store = sqlite::SqliteSubscriptionStore::on(events.database().clone())
                .await
                .unwrap();
            (Arc::new(events), Arc::new(store))
        }
        _ => {
            let pool = postgres::pool_options()
                .max_connections(4)
                .connect(location)
                .await
                .unwrap();
            let events = postgres::PostgresEventStore::new(pool);
            let store = events.subscription_store();
            (Arc::new(events), Arc::new(store))
        }
    };
    let subscription = Subscription::new(name, events, store)
        .unwrap()
        .aggregate_type(ty)
        .starting_after(after.parse().unwrap())
        .batch_size(10)
        .unwrap()
        .lease(Duration::from_millis(600))
        .unwrap()
        .poll_interval(Duration::from_millis(50))
        .unwrap();
    let out = out.to_owned();
    let handler = move |batch: &[StoredEvent]| -> Result<(), HandlerError> {
        use std::io::Write;
        // Slow enough that a kill lands in the middle of the work.
        std::thread::sleep(Duration::from_millis(50));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&out)?;
        for event in batch {
            writeln!(file, "{}", event.position)?;
        }
        Ok(())
    };
    subscription.run(handler, std::future::pending()).await.unwrap();
}

fn handled(out: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

async fn until_handled(outs: &[&std::path::Path], count: usize) {
    for _ in 0..3000 {
        let union: HashSet<u64> = outs.iter().flat_map(|o| handled(o)).collect();
        if union.len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the consumers never handled {count} events");
}

/// Consumer A, then standby B; A killed part way (B takes over); B killed part way, C started
/// (a restart): every event handled at least once, one consumer active at a time, and the
/// checkpoint never ahead of what was handled.
async fn killed_consumers(
    test: &str,
    backend: &str,
    location: &str,
    events: Arc<dyn EventStore>,
    store: Arc<dyn SubscriptionStore>,
) {
    let (name, ty) = (unique("killed"), unique("Killed"));
    let after = events.head(0).await.unwrap().position;
    let mut positions = HashSet::new();
    let id = Uuid::new_v4();
    for version in 1..=200u64 {
        events
            .append(id, &ty, version - 1, &[event(id, &ty, version, "{}")])
            .await
            .unwrap();
    }
    // The feed may hold the events back a moment while other tests' transactions run.
    for _ in 0..3000 {
        let feed: Vec<StoredEvent> = events.read_all(after).try_collect().await.unwrap();
        positions = feed
            .iter()
            .filter(|e| *e.aggregate_type == *ty)
            .map(|e| e.position)
            .collect();
        if positions.len() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(positions.len(), 200);

    let dir = tempfile::tempdir().unwrap();
    let out = |label: &str| dir.path().join(format!("{label}.txt"));
    let spawn = |label: &str| {
        tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_VAR,
                format!(
                    "{backend} {location} {name} {ty} {after} {}",
                    out(label).display()
                ),
            )
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (a, b, c) = (out("a"), out("b"), out("c"));
    let mut first = spawn("a");
    until_handled(&[&a], 20).await;
    let mut standby = spawn("b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        handled(&b).is_empty(),
        "the standby handled events while the first was active"
    );
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let handled_by_a = handled(&a).len();
    assert!(handled_by_a < 200, "the first consumer was killed part way");
    until_handled(&[&b], 10).await;
    standby.start_kill().unwrap();
    standby.wait().await.unwrap();
    let mut restarted = spawn("c");
    until_handled(&[&a, &b, &c], 200).await;
    // Let the last checkpoint be stored, then stop the last consumer too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    restarted.start_kill().unwrap();
    restarted.wait().await.unwrap();

    let all: Vec<u64> = [&a, &b, &c].iter().flat_map(|o| handled(o)).collect();
    let union: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(union, positions, "every event handled at least once");
    let checkpoint = store
        .checkpoint(&name)
        .await
        .unwrap()
        .expect("a checkpoint is stored");
    // The checkpoint is the last position read, which may be another program's event on a
    // shared database: every event of ours up to it was handled.
    assert!(
        positions
            .iter()
            .filter(|p| **p <= checkpoint)
            .all(|p| union.contains(p)),
        "the checkpoint {checkpoint} is ahead of what was handled"
    );
    assert!(
        checkpoint >= *positions.iter().max().unwrap(),
        "the last consumer stored the end"
    );
    println!(
        "{} handlings of 200 events: {} by the first consumer, {} by the standby that took over, {} after the restart",
        all.len(),
        handled(&a).len(),
        handled(&b).len(),
        handled(&c).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_killed_with_sigkill_on_sqlite() {
    const NAME: &str = "consumers_killed_with_sigkill_on_sqlite";
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return consumer_process(spec).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.db");
    let events = sqlite::SqliteEventStore::open(&path).await.unwrap();
    let store = sqlite::SqliteSubscriptionStore::on(events.database().clone())
        .await
        .unwrap();
    killed_consumers(
        NAME,
        "sqlite",
        path.to_str().unwrap(),
        Arc::new(events),
        Arc::new(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn consumers_killed_with_sigkill_on_postgres() {
    const NAME: &str = "consumers_killed_with_sigkill_on_postgres";
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return consumer_process(spec).await;
    }
    let Some((url, events)) = postgres_events(NAME, 4).await else {
        return;
    };
    let store = events.subscription_store();
    killed_consumers(NAME, "postgres", &url, Arc::new(events), Arc::new(store)).await;
}

// ---------------------------------------------------------------------------------------
// Wake-ups

/// With a poll interval of a minute, an append is still handed over at once: the append
/// signal wakes the subscription (in process for memory and SQLite, by LISTEN/NOTIFY from
/// another pool on PostgreSQL).
async fn an_append_wakes_the_subscription(
    writer: Arc<dyn EventStore>,
    reader: Arc<dyn EventStore>,
    signal: AppendSignal,
    store: Arc<dyn SubscriptionStore>,
) {
    let ty = unique("Woken");
    let start = reader.head(0).await.unwrap().position;
    let subscription = Subscription::new(&unique("woken"), reader, store)
        .unwrap()
        .wake_on(signal)
        .aggregate_type(&ty)
        .starting_after(start)
        .poll_interval(Duration::from_secs(60))
        .unwrap()
        .lease(Duration::from_secs(600))
        .unwrap();
    let seen = Seen::default();
    let shutdown = {
        let seen = seen.clone();
        async move {
            // Both appends come after the subscription has caught up and gone to sleep.
            tokio::time::sleep(Duration::from_millis(300)).await;
            append(&*writer, &ty, 1).await;
            until_seen(&seen, 1).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            append(&*writer, &ty, 1).await;
        }
    };
    let handled = tokio::time::timeout(
        Duration::from_secs(20),
        subscription.run(collector(&seen), async {
            shutdown.await;
            until_seen(&seen, 2).await;
        }),
    )
    .await;
    handled.expect("woken well before the poll interval").unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_wakes_the_subscription_in_memory_and_on_sqlite() {
    let events = InMemoryEventStore::new();
    an_append_wakes_the_subscription(
        Arc::new(events.clone()),
        Arc::new(events.clone()),
        events.append_signal(),
        Arc::new(InMemorySubscriptionStore::new()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (events, store) = sqlite_stores(dir.path().join("woken.db")).await;
    let signal = events.append_signal();
    an_append_wakes_the_subscription(
        Arc::new(events.clone()),
        Arc::new(events),
        signal,
        Arc::new(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn an_append_on_another_pool_wakes_the_subscription_on_postgres() {
    let Some(url) = common::postgres_url("an_append_on_another_pool_wakes_the_subscription_on_postgres")
    else {
        return;
    };
    let pool = || postgres::pool_options().max_connections(4).connect(&url);
    let writer = postgres::PostgresEventStore::new(pool().await.unwrap());
    writer.migrate().await.unwrap();
    let reader = postgres::PostgresEventStore::new(pool().await.unwrap());
    let store = reader.subscription_store();
    let signal = reader.append_signal();
    an_append_wakes_the_subscription(Arc::new(writer), Arc::new(reader), signal, Arc::new(store)).await;
}

/// Whether `waiter` wakes within half a second.
async fn wakes(waiter: &mut eventsourcing_kit::AppendWaiter) -> bool {
    tokio::time::timeout(Duration::from_millis(500), waiter.raised())
        .await
        .is_ok()
}

/// Across processes too, an append wakes only the consumers of its slices: the notification
/// carries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_notification_from_another_pool_wakes_only_the_ranges_of_its_slices() {
    use eventsourcing_kit::slice::{SliceCount, SliceRange};

    let Some(url) =
        common::postgres_url("a_notification_from_another_pool_wakes_only_the_ranges_of_its_slices")
    else {
        return;
    };
    // A schema of its own: appends of other tests notify on another channel.
    let scratch = common::ScratchSchema::new(&url, "notified");
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}schema={}", scratch.name);
    let writer = eventsourcing_kit::backend::open(&url).await.unwrap();
    writer.migrate().await.unwrap();
    let reader = eventsourcing_kit::backend::open(&url).await.unwrap();
    let signal = reader.append_signal.clone().expect("PostgreSQL has the signal");
    let slices = SliceCount::DEFAULT;
    let (low, high) = (
        SliceRange::new(0, 511).unwrap(),
        SliceRange::new(512, 1023).unwrap(),
    );
    let appended = |slice_range: SliceRange| {
        let events = writer.events.clone();
        async move {
            let id = loop {
                let id = Uuid::new_v4();
                if slice_range.contains(slices.slice_of("Account", id)) {
                    break id;
                }
            };
            events
                .append(id, "Account", 0, &[common::envelope(id, 1, "Opened", "{}")])
                .await
                .unwrap();
        }
    };
    // The listener is up once an append from the other pool wakes a waiter of every slice
    // (it wakes every waiter when it connects: what was appended meanwhile is unknown).
    let mut any = signal.waiter();
    let mut listening = false;
    for _ in 0..50 {
        appended(low).await;
        if wakes(&mut any).await {
            listening = true;
            break;
        }
    }
    assert!(listening, "the reader's listener hears the writer's appends");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut lows, mut highs) = (signal.waiter_for(slices, low), signal.waiter_for(slices, high));
    appended(high).await;
    assert!(wakes(&mut highs).await, "an append to 512-1023 wakes that range");
    assert!(!wakes(&mut lows).await, "and leaves the range 0-511 asleep");
    appended(low).await;
    assert!(wakes(&mut lows).await);
    assert!(!wakes(&mut highs).await);
}

#[tokio::test]
async fn event_type_filters_take_only_the_named_types() {
    let events = InMemoryEventStore::new();
    let repo = Repository::<common::Account>::new(events.clone());
    let mut root = common::opened(Uuid::new_v4(), 3);
    repo.save(&mut root).await.unwrap();
    let subscription = Subscription::new("deposits", events, InMemorySubscriptionStore::new())
        .unwrap()
        .for_aggregate::<common::Account>()
        .event_type("MoneyDeposited");
    let seen = Seen::default();
    subscription
        .run(collector(&seen), until_seen(&seen, 3))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let types: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.event_type.to_string())
        .collect();
    assert_eq!(types, ["MoneyDeposited"; 3]);
    assert_eq!(
        subscription.lag().await.unwrap(),
        0,
        "the skipped event is behind the checkpoint"
    );
}

/// A consumer paused past its lease (a handler stuck for longer) loses it to a standby; when it
/// wakes, it does not move the checkpoint back nor handle the standby's events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_paused_past_its_lease_gives_way_and_never_moves_the_checkpoint_back() {
    let events = InMemoryEventStore::new();
    let store = InMemorySubscriptionStore::new();
    append(&events, "Paused", 30).await;
    let make = || {
        Subscription::new("paused", events.clone(), store.clone())
            .unwrap()
            .batch_size(10)
            .unwrap()
            .lease(Duration::from_millis(100))
            .unwrap()
            .poll_interval(Duration::from_millis(10))
            .unwrap()
    };
    let (slow, fast) = (make(), make());
    let (slow_seen, fast_seen) = (Seen::default(), Seen::default());
    let mut first = true;
    let mut collect = collector(&slow_seen);
    let stuck = move |batch: &[StoredEvent]| {
        if first {
            first = false;
            // Stuck, blocking its thread, for three leases.
            std::thread::sleep(Duration::from_millis(300));
        }
        collect(batch)
    };
    let slow_run = tokio::spawn(async move {
        slow.run(stuck, tokio::time::sleep(Duration::from_millis(1500)))
            .await
            .unwrap();
        slow
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fast_run = fast.run(collector(&fast_seen), until_seen(&fast_seen, 30));
    tokio::time::timeout(Duration::from_secs(20), fast_run)
        .await
        .unwrap()
        .unwrap();
    let slow = slow_run.await.unwrap();
    assert_eq!(
        slow.checkpoint().await.unwrap(),
        Some(30),
        "the checkpoint stays at the end"
    );
    assert_eq!(
        slow_seen.lock().unwrap().len(),
        10,
        "the paused consumer handled only its first batch"
    );
    assert_eq!(slow.metrics().handled(), 10);
}

/// A subscription built by the stores wakes on their append signal: with a poll interval of a
/// minute, an append is handled at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_of_the_stores_wakes_on_their_signal() {
    let stores = eventsourcing_kit::backend::Stores::in_memory();
    let ty = unique("StoresWoken");
    let subscription = stores
        .subscription(&unique("stores-woken"))
        .unwrap()
        .aggregate_type(&ty)
        .poll_interval(Duration::from_secs(60))
        .unwrap();
    let seen = Seen::default();
    let events = stores.events.clone();
    let appended = {
        let (seen, ty) = (seen.clone(), ty.clone());
        async move {
            // After the subscription has read the empty feed and gone to sleep.
            tokio::time::sleep(Duration::from_millis(300)).await;
            append(&*events, &ty, 1).await;
            until_seen(&seen, 1).await;
        }
    };
    tokio::time::timeout(
        Duration::from_secs(20),
        subscription.run(collector(&seen), appended),
    )
    .await
    .expect("woken well before the poll interval")
    .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A feed that hands over what it was given, in that order: events of one aggregate out of
/// version order, as a faulty store or wrapper might.
struct PlantedFeed(Vec<StoredEvent>);

#[eventsourcing_kit::async_trait]
impl EventStore for PlantedFeed {
    async fn append(
        &self,
        _: Uuid,
        _: &str,
        _: u64,
        _: &[EventEnvelope],
    ) -> eventsourcing_kit::Result<eventsourcing_kit::Appended> {
        Err(eventsourcing_kit::Error::InvalidInput(
            "a planted feed takes no append".into(),
        ))
    }

    fn read_stream<'a>(&'a self, _: Uuid, _: &'a str, _: u64) -> eventsourcing_kit::EventStream<'a> {
        Box::pin(futures_util::stream::empty())
    }

    async fn stream_version(&self, _: Uuid, _: &str) -> eventsourcing_kit::Result<u64> {
        Ok(0)
    }

    fn read_all(&self, after: u64) -> eventsourcing_kit::EventStream<'_> {
        let events: Vec<_> = self
            .0
            .iter()
            .filter(|e| e.position > after)
            .cloned()
            .map(Ok)
            .collect();
        Box::pin(futures_util::stream::iter(events))
    }

    async fn head(&self, after: u64) -> eventsourcing_kit::Result<eventsourcing_kit::FeedHead> {
        Ok(common::head_of(&self.0, after))
    }
}

/// One aggregate's versions as the planted feed hands them over, with another aggregate's in
/// order between them.
fn planted(versions: &[u64]) -> PlantedFeed {
    let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
    let events = versions
        .iter()
        .enumerate()
        .flat_map(|(i, &version)| {
            [
                StoredEvent::new(
                    2 * i as u64 + 1,
                    eventsourcing_kit::testing::envelope(id, "Planted", version),
                ),
                StoredEvent::new(
                    2 * i as u64 + 2,
                    eventsourcing_kit::testing::envelope(other, "Planted", i as u64 + 1),
                ),
            ]
        })
        .collect();
    PlantedFeed(events)
}

#[tokio::test]
async fn the_delivery_guard_counts_each_kind_of_disorder() {
    // 2 again is a duplicate, 5 after 2 a gap, 3 and 4 late: two reorders, 4 again a duplicate.
    let feed = planted(&[1, 2, 2, 5, 3, 4, 4, 6]);
    let subscription = Subscription::new("guarded", feed, InMemorySubscriptionStore::new())
        .unwrap()
        .batch_size(3)
        .unwrap();
    let seen = Seen::default();
    let handed = subscription.catch_up(collector(&seen)).await.unwrap();
    assert_eq!(handed, 16, "counting hands every event over");
    let metrics = subscription.metrics();
    assert_eq!(
        (metrics.duplicates(), metrics.gaps(), metrics.reorders()),
        (2, 1, 2),
        "duplicates, gaps, reorders"
    );
}

#[tokio::test]
async fn the_delivery_guard_can_stop_the_consumer_before_the_batch() {
    let feed = planted(&[1, 2, 4, 3]);
    let subscription = Subscription::new("stopped-by-guard", feed, InMemorySubscriptionStore::new())
        .unwrap()
        .batch_size(4)
        .unwrap()
        .on_disorder(OnDisorder::Stop);
    let seen = Seen::default();
    match subscription.catch_up(collector(&seen)).await {
        Err(eventsourcing_kit::Error::SubscriptionStopped { position, reason, .. }) => {
            assert_eq!(position, 5, "the first event out of order: version 4 after 2");
            assert!(reason.contains("gap"), "{reason}");
        }
        other => panic!("expected the guard to stop the consumer, got {other:?}"),
    }
    let handed: Vec<u64> = seen.lock().unwrap().iter().map(|e| e.position).collect();
    assert_eq!(handed, [1, 2, 3, 4], "the batch with the gap was not handed over");
    assert_eq!(subscription.checkpoint().await.unwrap(), Some(4));
}

/// A subscription store whose checkpoints are stored only as `permits` allows: each store
/// waits for a permit.
struct HeldCheckpoints {
    inner: InMemorySubscriptionStore,
    permits: Arc<tokio::sync::Semaphore>,
}

#[eventsourcing_kit::async_trait]
impl SubscriptionStore for HeldCheckpoints {
    async fn acquire(&self, name: &str, owner: Uuid, ttl: Duration) -> Result<bool, Error> {
        self.inner.acquire(name, owner, ttl).await
    }
    async fn release(&self, name: &str, owner: Uuid) -> Result<(), Error> {
        self.inner.release(name, owner).await
    }
    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, Error> {
        self.inner.checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, owner: Uuid, position: u64) -> Result<bool, Error> {
        self.permits
            .acquire()
            .await
            .expect("the permits stay open")
            .forget();
        self.inner.save_checkpoint(name, owner, position).await
    }
    async fn reset(&self, name: &str) -> Result<(), Error> {
        self.inner.reset(name).await
    }
    async fn dead_letter(&self, name: &str, event: &StoredEvent, error: &str) -> Result<(), Error> {
        self.inner.dead_letter(name, event, error).await
    }
    async fn dead_letters(
        &self,
        name: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<eventsourcing_kit::subscription::DeadLetter>, Error> {
        self.inner.dead_letters(name, skip, limit).await
    }
    async fn remove_dead_letters(&self, name: &str, event_ids: &[Uuid]) -> Result<u64, Error> {
        self.inner.remove_dead_letters(name, event_ids).await
    }
    async fn redact_dead_letter(
        &self,
        name: &str,
        event_id: Uuid,
        error: &str,
        redacted: &str,
    ) -> Result<u64, Error> {
        self.inner
            .redact_dead_letter(name, event_id, error, redacted)
            .await
    }
    async fn subscriptions(&self) -> Result<Vec<eventsourcing_kit::subscription::SubscriptionStatus>, Error> {
        self.inner.subscriptions().await
    }
}

/// Six events in memory, a subscription store, and the same store holding each checkpoint
/// until a permit is added.
async fn six_events_and_held_checkpoints() -> (
    InMemoryEventStore,
    InMemorySubscriptionStore,
    Arc<tokio::sync::Semaphore>,
    HeldCheckpoints,
) {
    let events = InMemoryEventStore::new();
    append(&events, "Ticker", 6).await;
    let checkpoints = InMemorySubscriptionStore::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let held = HeldCheckpoints {
        inner: checkpoints.clone(),
        permits: permits.clone(),
    };
    (events, checkpoints, permits, held)
}

/// Subscription `name` in batches of two, with a lease of 200 ms.
fn in_pairs(name: &str, events: InMemoryEventStore, store: impl SubscriptionStore + 'static) -> Subscription {
    Subscription::new(name, events, store)
        .unwrap()
        .batch_size(2)
        .unwrap()
        .lease(Duration::from_millis(200))
        .unwrap()
}

#[tokio::test]
async fn a_batch_is_handled_while_the_checkpoint_before_it_is_stored() {
    let (events, checkpoints, _permits, held) = six_events_and_held_checkpoints().await;
    let subscription = in_pairs("pipelined", events.clone(), held);
    let seen = Seen::default();
    let running = tokio::spawn({
        let seen = seen.clone();
        async move { subscription.run(collector(&seen), std::future::pending()).await }
    });
    // The second batch reaches the handler while the first one's checkpoint waits...
    tokio::time::timeout(Duration::from_secs(10), until_seen(&seen, 4))
        .await
        .expect("the second batch is handed over while the first checkpoint is stored");
    // ...but not the third: one checkpoint at a time is left to be stored.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(checkpoints.checkpoint("pipelined").await.unwrap(), None);
    // Killed there, the next consumer starts again at the stored checkpoint: the two batches
    // after it are handed over again.
    running.abort();
    let _ = running.await;
    let again = Seen::default();
    let next = in_pairs("pipelined", events.clone(), checkpoints.clone());
    // The aborted consumer's lease runs out first.
    let handled = tokio::time::timeout(Duration::from_secs(30), next.catch_up(collector(&again)))
        .await
        .expect("the next consumer takes over")
        .unwrap();
    assert_eq!(handled, 6);
    let positions: Vec<u64> = again.lock().unwrap().iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5, 6]);
    assert_eq!(checkpoints.checkpoint("pipelined").await.unwrap(), Some(6));
}

#[tokio::test]
async fn a_graceful_stop_stores_the_checkpoint_left_to_store() {
    let (events, checkpoints, permits, held) = six_events_and_held_checkpoints().await;
    let subscription = in_pairs("pipelined-stop", events, held);
    let seen = Seen::default();
    // Asked to stop while the second batch is handled and the first one's checkpoint waits;
    // then the checkpoints may be stored.
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let stopper = tokio::spawn({
        let seen = seen.clone();
        async move {
            until_seen(&seen, 4).await;
            let _ = stop.send(());
            permits.add_permits(16);
        }
    });
    subscription
        .run(collector(&seen), async move {
            let _ = stopping.await;
        })
        .await
        .unwrap();
    stopper.await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "the third batch was not handed over"
    );
    assert_eq!(
        checkpoints.checkpoint("pipelined-stop").await.unwrap(),
        Some(4),
        "the second batch's checkpoint, left to store, was stored at the stop"
    );
}
