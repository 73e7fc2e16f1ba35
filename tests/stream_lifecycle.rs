//! Closed streams on memory, SQLite and PostgreSQL: a closed stream takes no more events
//! through any writer of the library, a writer that loaded it before meets the error after a
//! conflict, a snapshot keeps it closed, and consumers see the closing event while typed
//! handlers skip it.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{opened, Account, MoneyDeposited};
use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::lifecycle::{self, CLOSED};
use eventsourcing_kit::multi_stream::MultiStreamSave;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::repository::CommandError;

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

crate::on_every_backend! {
    "lifecycle":
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
