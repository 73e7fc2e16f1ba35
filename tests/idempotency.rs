//! Idempotent commands on every backend, through the stores' request index: a request id sent
//! again finds its first outcome whatever aggregate it created, refusals included, within the
//! retention; a key reused for another request is refused; racing requests with one key
//! decide once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Account, AccountCommands, Refused};
use eventsourcing_kit::backend::{self, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::request::{Fingerprint, RequestId};

#[event(aggregate = "RequestCounter")]
pub struct Counted {
    pub by: u64,
}

/// A second aggregate type, to reuse a key across types.
#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "RequestCounter", events(Counted))]
pub struct Counter {
    pub value: u64,
}

impl Apply<Counted> for Counter {
    fn apply(&mut self, event: &Counted) {
        self.value += event.by;
    }
}

fn key(label: &str) -> RequestId {
    RequestId::new(&format!("{label} {}", Uuid::new_v4())).unwrap()
}

/// A create under a fresh random id, sent again with its key, answers with the first
/// aggregate and creates no second one.
async fn a_create_sent_again_finds_the_first_aggregate(stores: &Stores) {
    let repo = stores.repository::<Account>();
    let request = key("open");
    let open = |id| {
        repo.command(id)
            .create_only()
            .request_id(request.clone())
            .fingerprint(Fingerprint::of_bytes(b"open Ada 1000"))
            .run(|account| account.open("Ada", 1_000))
    };
    let (first_id, second_id) = (Uuid::new_v4(), Uuid::new_v4());
    let first = open(first_id).await.unwrap();
    assert_eq!(
        (first.aggregate_id, first.repeated, first.events),
        (first_id, false, 1)
    );
    let again = open(second_id).await.unwrap();
    assert_eq!(
        (again.aggregate_id, again.version, again.position, again.repeated),
        (first_id, first.version, first.position, true),
        "the first outcome, with the aggregate it created"
    );
    assert!(!repo.exists(second_id).await.unwrap(), "no second account");
}

/// A refusal is the request's first outcome: sent again, it is refused again, even once the
/// aggregate would accept it, without deciding; past the retention it is decided again.
async fn a_refusal_sent_again_is_refused_again_within_the_retention(stores: &Stores) {
    let repo = stores.repository::<Account>();
    let id = Uuid::new_v4();
    repo.execute(id, |a| a.open("Bo", 100)).await.unwrap();
    let request = key("withdraw");
    async fn withdraw(
        repo: &Repository<Account>,
        id: Uuid,
        request: &RequestId,
    ) -> Result<Executed, CommandError<Refused>> {
        repo.command(id)
            .request_id(request.clone())
            .run(|account| account.withdraw(500))
            .await
    }
    let first = withdraw(&repo, id, &request).await.unwrap_err();
    assert!(
        matches!(first, CommandError::Rejected(Refused::InsufficientFunds { .. })),
        "{first}"
    );
    repo.execute(id, |a| a.deposit(1_000)).await.unwrap();
    match withdraw(&repo, id, &request).await {
        Err(CommandError::RejectedEarlier { request_id, reason }) => {
            assert_eq!(request_id, request);
            assert_eq!(reason, first.to_string(), "the first refusal's text");
        }
        other => panic!("expected the first refusal, got {other:?}"),
    }
    assert_eq!(
        repo.load(id).await.unwrap().state().balance,
        1_100,
        "nothing withdrawn"
    );

    let forgetful = stores
        .repository::<Account>()
        .with_request_retention(Duration::ZERO);
    let decided = withdraw(&forgetful, id, &request).await.unwrap();
    assert_eq!(
        (decided.repeated, decided.events),
        (false, 1),
        "decided again past the retention"
    );
    assert_eq!(repo.load(id).await.unwrap().state().balance, 600);
}

/// A key sent again with another fingerprint, or for another aggregate type, is
/// `RequestMismatch`, and nothing is written; with no fingerprint, the key alone decides.
async fn a_key_reused_for_another_request_is_refused(stores: &Stores) {
    let repo = stores.repository::<Account>();
    let id = Uuid::new_v4();
    repo.execute(id, |a| a.open("Cy", 0)).await.unwrap();
    let request = key("deposit");
    let deposit = |amount: i64, fingerprint: Option<Fingerprint>| {
        let command = repo.command(id).request_id(request.clone());
        let command = match fingerprint {
            Some(fingerprint) => command.fingerprint(fingerprint),
            None => command,
        };
        command.run(move |account| account.deposit(amount))
    };
    deposit(500, Some(Fingerprint::of(&500).unwrap())).await.unwrap();
    match deposit(700, Some(Fingerprint::of(&700).unwrap())).await {
        Err(CommandError::RequestMismatch { request_id }) => assert_eq!(request_id, request),
        other => panic!("a key with another fingerprint: expected RequestMismatch, got {other:?}"),
    }
    let unchecked = deposit(700, None).await.unwrap();
    assert!(unchecked.repeated, "without a fingerprint the key alone decides");
    assert_eq!(repo.load(id).await.unwrap().state().balance, 500, "one deposit");

    let other_type = stores.repository::<Counter>();
    match other_type
        .command(Uuid::new_v4())
        .request_id(request.clone())
        .run(|counter| {
            counter.record(Counted { by: 1 });
            Ok::<(), Refused>(())
        })
        .await
    {
        Err(CommandError::RequestMismatch { .. }) => {}
        other => panic!("a key used by another aggregate type: expected RequestMismatch, got {other:?}"),
    }
}

/// Sixteen creates under fresh ids racing with one key: one account is created, and every
/// caller is answered with it.
async fn creates_racing_with_one_key_create_once(stores: &Stores) {
    let repo = Arc::new(stores.repository::<Account>());
    let request = key("race");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (repo, request) = (repo.clone(), request.clone());
            tokio::spawn(async move {
                repo.command(Uuid::new_v4())
                    .create_only()
                    .request_id(request)
                    .run(|account| account.open("Di", 100))
                    .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().unwrap().aggregate_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller is answered with one account: {ids:?}");
    let created = stores.stream_versions(Account::TYPE_NAME).await.unwrap();
    let created = created.iter().filter(|(id, _)| ids.contains(id)).count();
    assert_eq!(created, 1);
}

async fn every_check(stores: Stores) {
    a_create_sent_again_finds_the_first_aggregate(&stores).await;
    a_refusal_sent_again_is_refused_again_within_the_retention(&stores).await;
    a_key_reused_for_another_request_is_refused(&stores).await;
    creates_racing_with_one_key_create_once(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_commands_in_memory() {
    every_check(Stores::in_memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_commands_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("requests.db").display());
    every_check(backend::open(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn idempotent_commands_on_postgres() {
    let Some(url) = common::postgres_url("idempotent_commands_on_postgres") else {
        return;
    };
    let stores = backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    every_check(stores).await;
}

/// Without a request index (stores put together by hand), a key is found among the
/// aggregate's own events: a repeat on the same aggregate is answered, a refusal is decided
/// again.
#[tokio::test]
async fn without_a_request_index_the_aggregate_stream_answers() {
    let events = InMemoryEventStore::new();
    let repo = Repository::<Account>::new(events);
    let id = Uuid::new_v4();
    repo.execute(id, |a| a.open("Ed", 0)).await.unwrap();
    let request = key("plain");
    let deposit = || {
        repo.command(id)
            .request_id(request.clone())
            .run(|a| a.deposit(200))
    };
    assert!(!deposit().await.unwrap().repeated);
    assert!(deposit().await.unwrap().repeated);
    assert_eq!(repo.load(id).await.unwrap().state().balance, 200);
    let withdraw = || {
        repo.command(id)
            .request_id(key("refused"))
            .run(|a| a.withdraw(900))
    };
    assert!(matches!(withdraw().await, Err(CommandError::Rejected(_))));
}

/// The same checks with the event store behind a wrapper that forwards only the required
/// methods, the backend's abilities handed out beside it: every outcome is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_commands_through_a_wrapper_of_the_required_methods() {
    use eventsourcing_kit::testing::RequiredOnly;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("wrapped.db").display());
    let (events, snapshots) = backend::sqlite::open_url(&url).await.unwrap();
    let subscriptions = backend::sqlite::SqliteSubscriptionStore::on(events.database().clone())
        .await
        .unwrap();
    let wrapped = Stores::new(RequiredOnly(events.clone()), snapshots.clone(), subscriptions)
        .with_append_signal(events.append_signal())
        .with_stream_listing(Arc::new(events.clone()))
        .with_request_index(Arc::new(events))
        .with_snapshot_listing(Arc::new(snapshots));
    every_check(wrapped).await;
}
