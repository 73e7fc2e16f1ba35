//! The lifecycle of streams on memory, SQLite and PostgreSQL (and a sharded store of two
//! SQLite files):
//!
//! - closed streams take no more events through any writer of the library, a writer that
//!   loaded one before meets the error after a conflict, a snapshot keeps it closed, and
//!   consumers see the closing event while typed handlers skip it;
//! - a deleted stream is gone (events, snapshots, request ids) behind its tombstone, which
//!   consumers see;
//! - an archived stream loads exactly as its full replay did before, reads whole, leaves the
//!   feed, and comes back with a restore, also while writers and readers keep going.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{opened, Account, AccountOpened, MoneyDeposited};
use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::lifecycle::{self, CLOSED, DELETED};
use eventsourcing_kit::multi_stream::MultiStreamSave;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::repository::CommandError;
use futures_util::TryStreamExt;

/// An account of three events, saved; its id.
async fn account(repository: &Repository<Account>) -> Uuid {
    let id = Uuid::new_v4();
    let mut root = opened(id, 2);
    repository.save(&mut root).await.unwrap();
    id
}

fn closed(e: &Error) -> bool {
    matches!(e, Error::StreamClosed { aggregate_type, .. } if aggregate_type == "Account")
}

async fn a_closed_stream_takes_no_more_events(stores: Stores) {
    let accounts = stores.repository::<Account>();
    let id = account(&accounts).await;
    assert_eq!(
        accounts.close(id).await.unwrap(),
        4,
        "the closing event is the stream's last"
    );
    assert_eq!(
        accounts.close(id).await.unwrap(),
        4,
        "closing again changes nothing"
    );
    let mut root = accounts.load(id).await.unwrap();
    assert!(root.is_closed());
    assert_eq!(
        (root.version(), root.state().balance),
        (4, 10_200),
        "the state is as it was"
    );
    root.record(MoneyDeposited { amount: 1 });
    let error = accounts.save(&mut root).await.unwrap_err();
    assert!(closed(&error), "{error}");
    assert!(root.has_pending_events(), "the root keeps its events");
    assert_eq!(
        stores.events.stream_version(id, "Account").await.unwrap(),
        4,
        "nothing was written"
    );

    // Through a save over several streams too, and the command loop.
    let mut other = opened(Uuid::new_v4(), 0);
    let error = MultiStreamSave::new()
        .write(&mut root)
        .write(&mut other)
        .save(&*stores.multi_stream().unwrap())
        .await
        .unwrap_err();
    assert!(closed(&error), "{error}");
    let refused = accounts
        .execute(id, |root| {
            root.record(MoneyDeposited { amount: 1 });
            Ok::<_, String>(())
        })
        .await;
    match refused {
        Err(CommandError::Failed(e)) => assert!(closed(&e), "{e}"),
        other => panic!("expected the closed stream's error, got {other:?}"),
    }
    match accounts.close(Uuid::new_v4()).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("closing a stream without events: expected NotFound, got {other:?}"),
    }
}

async fn a_writer_that_loaded_before_the_close_meets_it_after_a_conflict(stores: Stores) {
    let accounts = stores.repository::<Account>();
    let id = account(&accounts).await;
    let mut early = accounts.load(id).await.unwrap();
    accounts.close(id).await.unwrap();
    early.record(MoneyDeposited { amount: 1 });
    let error = accounts.save(&mut early).await.unwrap_err();
    assert!(error.is_conflict(), "{error}");
    let mut again = accounts.load(id).await.unwrap();
    again.record(MoneyDeposited { amount: 1 });
    assert!(closed(&accounts.save(&mut again).await.unwrap_err()));
}

async fn a_snapshot_of_a_closed_stream_keeps_it_closed(stores: Stores) {
    let accounts = stores.repository_with_snapshots::<Account>(SnapshotPolicy::manual());
    let id = account(&accounts).await;
    accounts.close(id).await.unwrap();
    let snapshot = accounts.warm_snapshot(id).await.unwrap().unwrap();
    assert_eq!(snapshot.version, 4, "the snapshot stands for the closed stream");
    let before = accounts.metrics().hits("Account");
    let root = accounts.load(id).await.unwrap();
    assert!(root.is_closed(), "loaded from the snapshot, the stream is closed");
    assert_eq!(root.state().balance, 10_200);
    assert_eq!(
        accounts.metrics().hits("Account"),
        before + 1,
        "the load used the snapshot"
    );
}

/// Notes the event types of one stream as they come, and hands every batch to `typed`.
struct Noting<H> {
    id: Uuid,
    seen: Arc<Mutex<Vec<String>>>,
    typed: H,
}

#[eventsourcing_kit::async_trait]
impl<H: Handler> Handler for Noting<H> {
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events.iter().filter(|e| e.aggregate_id == self.id) {
            self.seen.lock().unwrap().push(event.event_type.to_string());
        }
        self.typed.handle(events).await
    }
}

async fn consumers_see_the_closing_event_and_typed_handlers_skip_it(stores: Stores) {
    let accounts = stores.repository::<Account>();
    let id = account(&accounts).await;
    accounts.close(id).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let decoded = Arc::new(Mutex::new(0));
    let counted = decoded.clone();
    let handler = Noting {
        id,
        seen: seen.clone(),
        typed: Typed::<Account, _>::new(move |event: &StoredEvent, _| {
            if event.aggregate_id == id {
                *counted.lock().unwrap() += 1;
            }
            Ok(())
        }),
    };
    let subscription = stores
        .subscription(&format!("closing-{}", Uuid::new_v4().simple()))
        .unwrap()
        .for_aggregate::<Account>()
        .poll_interval(Duration::from_millis(20))
        .unwrap();
    common::run_until(subscription, handler, || seen.lock().unwrap().len() >= 4).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last().map(String::as_str), Some(CLOSED), "{seen:?}");
    assert!(lifecycle::is_system_event(&seen[3]));
    assert_eq!(
        *decoded.lock().unwrap(),
        3,
        "the typed handler took the account's own events only"
    );
}

fn deleted(e: &Error) -> bool {
    matches!(e, Error::StreamDeleted { aggregate_type, .. } if aggregate_type == "Account")
}

/// The stream's events as a whole-stream read gives them: version and event id.
async fn stream_of(stores: &Stores, id: Uuid) -> Vec<(u64, Uuid)> {
    let events: Vec<StoredEvent> = stores
        .events
        .read_stream(id, "Account", 0)
        .try_collect()
        .await
        .unwrap();
    events.iter().map(|e| (e.aggregate_version, e.event_id)).collect()
}

/// The versions of the stream's events that the feed holds.
async fn in_feed(stores: &Stores, id: Uuid) -> Vec<u64> {
    let events: Vec<StoredEvent> = stores.events.read_all(0).try_collect().await.unwrap();
    events
        .iter()
        .filter(|e| e.aggregate_id == id)
        .map(|e| e.aggregate_version)
        .collect()
}

async fn a_deleted_stream_is_gone_behind_its_tombstone(stores: Stores) {
    let accounts = stores.repository_with_snapshots::<Account>(SnapshotPolicy::manual());
    let (id, kept) = (Uuid::new_v4(), account(&accounts).await);
    let request = eventsourcing_kit::request::RequestId::from(Uuid::new_v4());
    accounts
        .command(id)
        .request_id(request.clone())
        .run(|root| {
            root.record(AccountOpened {
                owner_name: "Ada".into(),
                initial_balance: 10_000,
            });
            root.record(MoneyDeposited { amount: 100 });
            root.record(MoneyDeposited { amount: 100 });
            Ok::<_, String>(())
        })
        .await
        .unwrap();
    accounts.warm_snapshot(id).await.unwrap();
    let index = stores.request_index.clone().unwrap();
    assert!(index.find_request(&request).await.unwrap().is_some());

    let gone = accounts.delete(id).await.unwrap();
    assert_eq!(
        (gone.version, gone.now),
        (4, true),
        "the tombstone takes the next version"
    );
    let error = accounts.load(id).await.unwrap_err();
    assert!(deleted(&error), "{error}");
    let tombstone: Vec<StoredEvent> = stores
        .events
        .read_stream(id, "Account", 0)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(tombstone.len(), 1, "the stream reads as its tombstone alone");
    assert_eq!(
        (&*tombstone[0].event_type, tombstone[0].aggregate_version),
        (DELETED, 4)
    );
    assert_eq!(
        in_feed(&stores, id).await,
        [4],
        "the feed holds the tombstone only"
    );
    assert!(
        !stores.snapshots.snapshot_exists(id, "Account").await.unwrap(),
        "snapshots gone"
    );
    assert_eq!(
        index.find_request(&request).await.unwrap(),
        None,
        "the request id went with the events"
    );

    // The id stays taken: a new stream under it conflicts, a command fails.
    let mut again = opened(id, 0);
    let error = accounts.save(&mut again).await.unwrap_err();
    assert!(error.is_conflict(), "{error}");
    let refused = accounts
        .execute(id, |root| {
            root.record(MoneyDeposited { amount: 1 });
            Ok::<_, String>(())
        })
        .await;
    match refused {
        Err(CommandError::Failed(e)) => assert!(deleted(&e), "{e}"),
        other => panic!("expected the deleted stream's error, got {other:?}"),
    }
    assert!(deleted(&accounts.close(id).await.unwrap_err()));

    let again = accounts.delete(id).await.unwrap();
    assert_eq!(
        (again.version, again.now),
        (4, false),
        "deleting again changes nothing"
    );
    assert_eq!(
        accounts.load(kept).await.unwrap().version(),
        3,
        "other streams stay"
    );
    match accounts.delete(Uuid::new_v4()).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("deleting a stream without events: expected NotFound, got {other:?}"),
    }
}

async fn a_writer_that_loaded_before_the_deletion_meets_a_conflict(stores: Stores) {
    let accounts = stores.repository::<Account>();
    let id = account(&accounts).await;
    let mut early = accounts.load(id).await.unwrap();
    accounts.close(id).await.unwrap();
    accounts.delete(id).await.unwrap();
    early.record(MoneyDeposited { amount: 1 });
    let error = accounts.save(&mut early).await.unwrap_err();
    assert!(error.is_conflict(), "{error}");
    assert_eq!(stores.events.stream_version(id, "Account").await.unwrap(), 5);
}

async fn consumers_see_the_tombstone(stores: Stores) {
    let accounts = stores.repository::<Account>();
    let id = account(&accounts).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Noting {
        id,
        seen: seen.clone(),
        typed: Typed::<Account, _>::new(|_: &StoredEvent, _| Ok(())),
    };
    let name = format!("deleting-{}", Uuid::new_v4().simple());
    let subscription = stores
        .subscription(&name)
        .unwrap()
        .for_aggregate::<Account>()
        .poll_interval(Duration::from_millis(20))
        .unwrap();
    common::run_until(subscription, handler, || seen.lock().unwrap().len() >= 3).await;
    accounts.delete(id).await.unwrap();
    let handler = Noting {
        id,
        seen: seen.clone(),
        typed: Typed::<Account, _>::new(|_: &StoredEvent, _| Ok(())),
    };
    let subscription = stores
        .subscription(&name)
        .unwrap()
        .for_aggregate::<Account>()
        .poll_interval(Duration::from_millis(20))
        .unwrap();
    common::run_until(subscription, handler, || seen.lock().unwrap().len() >= 4).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[3], DELETED, "the consumer sees the deletion next");
}

/// An account of `deposits` deposits saved one command at a time, and the state a full
/// replay gives.
async fn long_account(stores: &Stores, deposits: usize) -> (Uuid, AggregateRoot<Account>) {
    let accounts = stores.repository::<Account>();
    let id = account(&accounts).await;
    for _ in 0..deposits {
        accounts
            .execute(id, |root| {
                root.record(MoneyDeposited { amount: 1 });
                Ok::<_, String>(())
            })
            .await
            .unwrap();
    }
    (id, accounts.load(id).await.unwrap())
}

async fn an_archived_stream_loads_as_its_full_replay(stores: Stores) {
    let plain = stores.repository::<Account>();
    let accounts = stores.repository_with_snapshots::<Account>(SnapshotPolicy::manual());
    let (id, full) = long_account(&stores, 20).await;
    let whole = stream_of(&stores, id).await;
    let lifecycle = stores.stream_lifecycle.clone().unwrap();

    let archived = accounts.archive(id).await.unwrap();
    assert_eq!((archived.before_version, archived.moved), (23, 22));
    assert_eq!(lifecycle.archived(id, "Account").await.unwrap(), 22);
    let loaded = accounts.load(id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state()), (full.version(), full.state()));
    assert_eq!(
        accounts.metrics().hits("Account"),
        1,
        "the load started from the snapshot"
    );
    let replayed = plain.load(id).await.unwrap();
    assert_eq!(
        (replayed.version(), replayed.state()),
        (full.version(), full.state()),
        "a full replay reads the archive"
    );
    assert_eq!(stream_of(&stores, id).await, whole, "the stream reads whole");
    assert!(
        stores
            .events
            .position_of(id, "Account", 1)
            .await
            .unwrap()
            .is_some(),
        "an archived event keeps its position"
    );
    assert_eq!(
        in_feed(&stores, id).await,
        [23],
        "the feed holds the live events only"
    );
    let feed: Vec<StoredEvent> = stores.events.read_all(0).try_collect().await.unwrap();
    assert_eq!(
        stores.events.head(0).await.unwrap().events_after,
        feed.len() as u64,
        "the head counts what the feed holds"
    );

    // Writes go on; archiving again moves what came before the new snapshot.
    let mut root = accounts.load(id).await.unwrap();
    root.record(MoneyDeposited { amount: 5 });
    accounts.save(&mut root).await.unwrap();
    let again = accounts.archive(id).await.unwrap();
    assert_eq!((again.before_version, again.moved), (24, 1));
    assert_eq!(
        accounts.archive(id).await.unwrap().moved,
        0,
        "nothing left to move"
    );

    assert_eq!(accounts.restore(id).await.unwrap(), 23);
    assert_eq!(lifecycle.archived(id, "Account").await.unwrap(), 0);
    assert_eq!(
        in_feed(&stores, id).await,
        (1..=24).collect::<Vec<u64>>(),
        "back in the feed"
    );
    assert_eq!(
        plain.load(id).await.unwrap().state().balance,
        full.state().balance + 5
    );

    // What the store refuses.
    let error = lifecycle.archive_stream(id, "Account", 25).await.unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error}");
    let bare = account(&plain).await;
    let error = lifecycle::archive(&*stores.events, &*stores.snapshots, &*lifecycle, bare, "Account")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "no snapshot: {error}");
    let error = Repository::<Account>::new(InMemoryEventStore::new())
        .restore(id)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidConfiguration(_)), "{error}");

    // A deleted stream takes its archive with it.
    accounts.archive(id).await.unwrap();
    accounts.delete(id).await.unwrap();
    assert_eq!(lifecycle.archived(id, "Account").await.unwrap(), 0);
    assert_eq!(stream_of(&stores, id).await.len(), 1);
}

async fn archive_and_restore_round_trip_under_traffic(stores: Stores) {
    let accounts = stores.repository_with_snapshots::<Account>(SnapshotPolicy::manual());
    let plain = stores.repository::<Account>();
    let (id, _) = long_account(&stores, 5).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (accounts, stop) = (plain.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                accounts
                    .execute(id, |root| {
                        root.record(MoneyDeposited { amount: 1 });
                        Ok::<_, String>(())
                    })
                    .await
                    .unwrap();
                written += 1;
                // The in-memory store never waits: give the runtime a turn (its timers too).
                tokio::task::yield_now().await;
            }
            written
        })
    };
    let reader = {
        let (accounts, plain, stop) = (accounts.clone(), plain.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for repository in [&accounts, &plain] {
                    let root = repository.load(id).await.unwrap();
                    let state = root.state();
                    assert!(root.version() >= last, "versions never go back");
                    assert_eq!(
                        state.balance,
                        10_200 + root.version() as i64 - 3,
                        "every deposit is in the state, once"
                    );
                    last = root.version();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for _ in 0..5 {
        accounts.archive(id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        accounts.restore(id).await.unwrap();
    }
    accounts.archive(id).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    reader.await.unwrap();
    let version = 8 + written;
    let whole = stream_of(&stores, id).await;
    assert_eq!(
        whole.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (1..=version).collect::<Vec<_>>(),
        "the stream reads whole, in order"
    );
    let loaded = accounts.load(id).await.unwrap();
    let replayed = plain.load(id).await.unwrap();
    assert_eq!(
        (loaded.version(), loaded.state()),
        (replayed.version(), replayed.state())
    );
    accounts.restore(id).await.unwrap();
    assert_eq!(
        in_feed(&stores, id).await,
        (1..=version).collect::<Vec<_>>(),
        "after the last restore the feed holds every event, once"
    );
}

crate::on_every_backend! {
    "lifecycle":
    a_deleted_stream_is_gone_behind_its_tombstone => a_deleted_stream_is_gone_behind_its_tombstone;
    a_writer_that_loaded_before_the_deletion_meets_a_conflict => a_writer_that_loaded_before_the_deletion_meets_a_conflict;
    consumers_see_the_tombstone => consumers_see_the_tombstone;
    an_archived_stream_loads_as_its_full_replay => an_archived_stream_loads_as_its_full_replay;
    archive_and_restore_round_trip_under_traffic => archive_and_restore_round_trip_under_traffic;
    a_closed_stream_takes_no_more_events => a_closed_stream_takes_no_more_events;
    a_writer_that_loaded_before_the_close_meets_it_after_a_conflict => a_writer_that_loaded_before_the_close_meets_it_after_a_conflict;
    a_snapshot_of_a_closed_stream_keeps_it_closed => a_snapshot_of_a_closed_stream_keeps_it_closed;
    consumers_see_the_closing_event_and_typed_handlers_skip_it => consumers_see_the_closing_event_and_typed_handlers_skip_it;
}

/// `admin streams close ID --type Account --yes` on a SQLite file closes the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_closes_a_stream() {
    use eventsourcing_kit::admin::{Admin, AdminArgs, AdminCommand, Outcome, StreamsCommand};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("close.db").display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    let accounts = stores.repository::<Account>();
    let id = account(&accounts).await;
    let args = AdminArgs {
        url: url.clone(),
        json: true,
        migrate: false,
        command: AdminCommand::Streams(StreamsCommand::Close {
            id,
            aggregate_type: "Account".into(),
            yes: true,
        }),
    };
    let mut out = Vec::new();
    assert_eq!(
        Admin::new().run_with(args, &mut out).await.unwrap(),
        Outcome::Clean
    );
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["version"], 4);
    assert!(accounts.load(id).await.unwrap().is_closed());
}

/// Deleting, archiving and restoring through a sharded store (of one shard, so that its feed
/// can be read whole): each goes to the shard of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_sharded_store() {
    use eventsourcing_kit::backend::sharded::{self, ShardMap};
    use eventsourcing_kit::slice::SliceCount;

    let (_dir, shard) = common::sqlite_stores().await;
    let map = ShardMap::even(SliceCount::DEFAULT, 1).unwrap();
    let stores = sharded::open(map, vec![shard]).await.unwrap();
    assert!(stores.stream_lifecycle.is_some());
    an_archived_stream_loads_as_its_full_replay(stores.clone()).await;
    a_deleted_stream_is_gone_behind_its_tombstone(stores).await;
}

/// `admin streams archive|restore|delete ID --type Account --yes` on a SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_archives_restores_and_deletes_a_stream() {
    use eventsourcing_kit::admin::{Admin, AdminArgs, AdminCommand, Outcome, StreamsCommand};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("archive.db").display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    let (id, full) = long_account(&stores, 4).await;
    let run = |command| {
        let url = url.clone();
        async move {
            let args = AdminArgs {
                url,
                json: true,
                migrate: false,
                command: AdminCommand::Streams(command),
            };
            let mut out = Vec::new();
            let outcome = Admin::new().run_with(args, &mut out).await;
            (outcome, out)
        }
    };
    let archive = || StreamsCommand::Archive {
        id,
        aggregate_type: "Account".into(),
        yes: true,
    };
    let (outcome, _) = run(archive()).await;
    assert!(outcome.is_err(), "no snapshot yet: refused");
    stores
        .repository_with_snapshots::<Account>(SnapshotPolicy::manual())
        .warm_snapshot(id)
        .await
        .unwrap();
    let (outcome, out) = run(archive()).await;
    assert_eq!(outcome.unwrap(), Outcome::Clean);
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (report["outcome"].as_str(), report["moved"].as_u64()),
        (Some("archived"), Some(6))
    );
    assert_eq!(in_feed(&stores, id).await, [7]);
    assert_eq!(
        stores.repository::<Account>().load(id).await.unwrap().state(),
        full.state()
    );

    let (outcome, out) = run(StreamsCommand::Restore {
        id,
        aggregate_type: "Account".into(),
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Clean);
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["moved"], 6);
    assert_eq!(in_feed(&stores, id).await.len(), 7);

    let (outcome, out) = run(StreamsCommand::Delete {
        id,
        aggregate_type: "Account".into(),
        yes: true,
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Clean);
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (report["outcome"].as_str(), report["version"].as_u64()),
        (Some("deleted"), Some(8))
    );
    let error = stores.repository::<Account>().load(id).await.unwrap_err();
    assert!(deleted(&error), "{error}");
    assert!(!stores.snapshots.snapshot_exists(id, "Account").await.unwrap());
}
