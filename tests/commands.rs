//! Commands through `Repository::command`: decisions that record or refuse, create-only and
//! must-exist commands, conflicts retried and outlasting the attempts, a lost answer saved
//! again without deciding again, the per-aggregate queue; and the given/when/then kit on the
//! seed's account.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Account, AccountCommands, AccountOpened, MoneyDeposited, MoneyWithdrawn, Refused};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::repository::{CommandError, Executed};
use eventsourcing_kit::request::RequestId;
use eventsourcing_kit::testing::given;
use eventsourcing_kit::{async_trait, EventEnvelope, EventStream};

async fn opened_account(repo: &Repository<Account>, balance: i64) -> Uuid {
    let id = Uuid::new_v4();
    repo.command(id)
        .create_only()
        .run(|account| account.open("Ada", balance))
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_command_records_or_refuses_with_the_programs_own_error() {
    let repo = Repository::<Account>::new(InMemoryEventStore::new());
    let id = opened_account(&repo, 10_000).await;
    let done = repo.execute(id, |account| account.deposit(2_500)).await.unwrap();
    assert_eq!((done.version, done.events, done.attempts), (2, 1, 1));

    match repo.execute(id, |account| account.withdraw(50_000)).await {
        Err(CommandError::Rejected(Refused::InsufficientFunds { balance, requested })) => {
            assert_eq!((balance, requested), (12_500, 50_000));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        repo.load(id).await.unwrap().version(),
        2,
        "a refusal writes nothing"
    );

    let nothing = repo.execute(id, |_| Ok::<(), Refused>(())).await.unwrap();
    assert_eq!((nothing.version, nothing.events), (2, 0));
}

#[tokio::test]
async fn the_commands_context_reaches_every_event_it_records() {
    let events = InMemoryEventStore::new();
    let repo = Repository::<Account>::new(events.clone());
    let id = opened_account(&repo, 1_000).await;
    let context = EventContext::new()
        .with_correlation_id(Uuid::new_v4())
        .with_causation_id(Uuid::new_v4())
        .with_metadata(serde_json::json!({ "user": "ada" }));
    repo.command(id)
        .context(context.clone())
        .run(|account| {
            account.deposit(100)?;
            account.deposit(200)
        })
        .await
        .unwrap();
    let stored: Vec<_> = events.read_stream(id, "Account", 1).try_collect().await.unwrap();
    assert_eq!(stored.len(), 2);
    for event in stored {
        assert_eq!(event.correlation_id, context.correlation_id);
        assert_eq!(event.causation_id, context.causation_id);
        assert_eq!(event.metadata, context.metadata);
    }
}

#[tokio::test]
async fn create_only_and_must_exist_commands_refuse_the_wrong_aggregate() {
    let repo = Repository::<Account>::new(InMemoryEventStore::new());
    let id = opened_account(&repo, 1_000).await;
    match repo.command(id).create_only().run(|a| a.open("Bob", 100)).await {
        // The decision sees a new aggregate, so it records; the save finds the stream taken.
        Err(CommandError::AlreadyExists { aggregate_id, .. }) => assert_eq!(aggregate_id, id),
        other => panic!("{other:?}"),
    }
    match repo
        .command(Uuid::new_v4())
        .must_exist()
        .run(|a| a.deposit(100))
        .await
    {
        Err(CommandError::Failed(e)) => assert!(e.is_not_found(), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(repo.load(id).await.unwrap().state().owner_name, "Ada");
}

#[tokio::test]
async fn a_conflict_is_decided_again_on_the_new_state_until_the_attempts_run_out() {
    let events = InMemoryEventStore::new();
    let repo = Repository::<Account>::new(events.clone());
    let id = opened_account(&repo, 10_000).await;
    // Another writer saves while each decision is made, the first time only.
    let sneaky = Repository::<Account>::new(events.clone());
    let decisions = AtomicUsize::new(0);
    let done = repo
        .execute(id, |account| {
            if decisions.fetch_add(1, Ordering::SeqCst) == 0 {
                let (sneaky, id) = (sneaky.clone(), account.id());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    runtime
                        .block_on(sneaky.execute(id, |a| a.withdraw(6_000)))
                        .unwrap();
                })
                .join()
                .unwrap();
            }
            account.withdraw(5_000)
        })
        .await;
    // Decided again on a balance of 4_000 cents: refused, and nothing of the first decision stored.
    match done {
        Err(CommandError::Rejected(Refused::InsufficientFunds { balance, .. })) => assert_eq!(balance, 4_000),
        other => panic!("{other:?}"),
    }
    assert_eq!(decisions.load(Ordering::SeqCst), 2);

    // A writer that wins every time outlasts the attempts.
    let done = repo
        .command(id)
        .retry(3, Duration::from_millis(1), Duration::from_millis(2))
        .run(|account| {
            let (sneaky, id) = (sneaky.clone(), account.id());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                runtime.block_on(sneaky.execute(id, |a| a.deposit(100))).unwrap();
            })
            .join()
            .unwrap();
            account.deposit(100)
        })
        .await;
    match done {
        Err(CommandError::Contended { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
}

/// An event store whose first append is stored but answered with a lost connection.
struct LostAnswer {
    inner: InMemoryEventStore,
    lost: AtomicUsize,
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl EventStore for LostAnswer {
    async fn append(
        &self,
        id: Uuid,
        ty: &str,
        expected: u64,
        events: &[EventEnvelope],
    ) -> eventsourcing_kit::Result<eventsourcing_kit::Appended> {
        let stored = self.inner.append(id, ty, expected, events).await?;
        if self.lost.fetch_add(1, Ordering::SeqCst) == 1 {
            return Err(Error::Store {
                backend: "test",
                message: "connection reset after the commit".into(),
                transient: true,
                source: None,
            });
        }
        Ok(stored)
    }
    fn read_stream<'a>(&'a self, id: Uuid, ty: &'a str, after: u64) -> EventStream<'a> {
        self.inner.read_stream(id, ty, after)
    }
    async fn stream_version(&self, id: Uuid, ty: &str) -> eventsourcing_kit::Result<u64> {
        self.inner.stream_version(id, ty).await
    }
    fn read_all(&self, after: u64) -> EventStream<'_> {
        self.inner.read_all(after)
    }
    async fn head(&self, after: u64) -> eventsourcing_kit::Result<eventsourcing_kit::FeedHead> {
        self.inner.head(after).await
    }
    async fn position_of(&self, id: Uuid, ty: &str, version: u64) -> eventsourcing_kit::Result<Option<u64>> {
        self.inner.position_of(id, ty, version).await
    }
    fn load_stream<'a>(&'a self, id: Uuid, ty: &'a str, after: u64) -> EventStream<'a> {
        self.inner.load_stream(id, ty, after)
    }
}

#[tokio::test]
async fn a_save_whose_answer_was_lost_is_saved_again_not_decided_again() {
    let inner = InMemoryEventStore::new();
    let repo = Repository::<Account>::new(LostAnswer {
        inner: inner.clone(),
        lost: AtomicUsize::new(0),
    });
    let id = opened_account(&repo, 1_000).await;
    let decisions = AtomicUsize::new(0);
    let done = repo
        .execute(id, |account| {
            decisions.fetch_add(1, Ordering::SeqCst);
            account.deposit(500)
        })
        .await
        .unwrap();
    assert_eq!((done.version, done.attempts), (2, 1));
    assert_eq!(decisions.load(Ordering::SeqCst), 1, "decided once");
    assert_eq!(inner.len(), 2, "the deposit is stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_one_aggregate_all_land_with_or_without_the_queue() {
    for queued in [false, true] {
        let mut repo = Repository::<Account>::new(InMemoryEventStore::new());
        if queued {
            repo = repo.with_command_queue();
        }
        let id = opened_account(&repo, 0).await;
        let commands: Vec<_> = (0..32)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move {
                    repo.command(id)
                        .retry(100, Duration::from_micros(50), Duration::from_millis(2))
                        .run(|account| account.deposit(100))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut attempts = 0;
        for command in commands {
            attempts += command.await.unwrap().attempts;
        }
        let account = repo.load(id).await.unwrap();
        assert_eq!(account.state().balance, 3_200, "queued: {queued}");
        assert_eq!(account.version(), 33);
        if queued {
            assert_eq!(attempts, 32, "commands that wait their turn never conflict");
        }
    }
}

/// Commands waiting their turn in the queue, on one aggregate, started together.
async fn queued_commands<F>(
    repo: &Repository<Account>,
    id: Uuid,
    n: usize,
    decide: F,
) -> Vec<Result<Executed, CommandError<Refused>>>
where
    F: Fn(usize, &mut AggregateRoot<Account>) -> Result<(), Refused> + Send + Sync + Copy + 'static,
{
    let commands: Vec<_> = (0..n)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.command(id)
                    .retry(100, Duration::from_micros(50), Duration::from_millis(2))
                    .run(|account| decide(i, account))
                    .await
            })
        })
        .collect();
    let mut done = Vec::new();
    for command in commands {
        done.push(command.await.unwrap());
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_commands_are_decided_together_and_saved_in_one_append() {
    // Saves that take a while, so that the next commands queue behind each.
    let repo = Repository::<Account>::new(Interfering::default()).with_command_queue();
    let id = opened_account(&repo, 0).await;
    let done = queued_commands(&repo, id, 64, |_, account| account.deposit(100)).await;
    let done: Vec<Executed> = done.into_iter().map(Result::unwrap).collect();
    assert_eq!(repo.load(id).await.unwrap().state().balance, 6_400);
    let mut versions: Vec<u64> = done.iter().map(|d| d.version).collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=65).collect::<Vec<_>>(),
        "each command has its own version"
    );
    let batches: std::collections::BTreeSet<u64> = done.iter().map(|d| d.position).collect();
    assert!(
        batches.len() < done.len(),
        "commands that waited were saved together: {} appends for {} commands",
        batches.len(),
        done.len()
    );
    for command in &done {
        let event_position = repo.position(id, command.version).await.unwrap();
        assert!(
            command.position >= event_position,
            "the position is at or past the command's event"
        );
        assert_eq!(command.attempts, 1);
    }
}

/// An event store whose appends take a while (so that commands queue behind a save), and
/// whose next append, once armed, finds that another writer appended a deposit of 1 first.
#[derive(Clone, Default)]
struct Interfering {
    inner: InMemoryEventStore,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl EventStore for Interfering {
    async fn append(
        &self,
        id: Uuid,
        ty: &str,
        expected: u64,
        events: &[EventEnvelope],
    ) -> eventsourcing_kit::Result<eventsourcing_kit::Appended> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            let first =
                EventEnvelope::from_json(id, ty, expected + 1, "MoneyDeposited", 1, r#"{"amount":1}"#);
            self.inner.append(id, ty, expected, &[first]).await?;
        }
        self.inner.append(id, ty, expected, events).await
    }
    fn read_stream<'a>(&'a self, id: Uuid, ty: &'a str, after: u64) -> EventStream<'a> {
        self.inner.read_stream(id, ty, after)
    }
    async fn stream_version(&self, id: Uuid, ty: &str) -> eventsourcing_kit::Result<u64> {
        self.inner.stream_version(id, ty).await
    }
    fn read_all(&self, after: u64) -> EventStream<'_> {
        self.inner.read_all(after)
    }
    async fn head(&self, after: u64) -> eventsourcing_kit::Result<eventsourcing_kit::FeedHead> {
        self.inner.head(after).await
    }
    async fn position_of(&self, id: Uuid, ty: &str, version: u64) -> eventsourcing_kit::Result<Option<u64>> {
        self.inner.position_of(id, ty, version).await
    }
    fn load_stream<'a>(&'a self, id: Uuid, ty: &'a str, after: u64) -> EventStream<'a> {
        self.inner.load_stream(id, ty, after)
    }
}

/// How many appends served `done`'s commands: those that succeeded share the position of
/// their batch's last event.
fn appends(done: &[Result<Executed, CommandError<Refused>>]) -> usize {
    let positions: std::collections::BTreeSet<u64> = done.iter().flatten().map(|d| d.position).collect();
    positions.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_a_batch_leaves_the_other_commands_events() {
    let repo = Repository::<Account>::new(Interfering::default()).with_command_queue();
    let id = opened_account(&repo, 0).await;
    // Every fourth command deposits 1, then asks for more than any balance: refused, with
    // its deposit gone from the batch's root.
    let done = queued_commands(&repo, id, 40, |i, account| match i % 4 {
        3 => {
            account.deposit(1)?;
            account.withdraw(1_000_000)
        }
        _ => account.deposit(100),
    })
    .await;
    let refused = done
        .iter()
        .filter(|d| matches!(d, Err(CommandError::Rejected(Refused::InsufficientFunds { .. }))))
        .count();
    assert_eq!(refused, 10);
    assert!(done
        .iter()
        .all(|d| d.is_ok() || matches!(d, Err(CommandError::Rejected(_)))));
    assert!(
        appends(&done) < 30,
        "the commands were batched: {} appends",
        appends(&done)
    );
    let account = repo.load(id).await.unwrap();
    assert_eq!(
        account.state().balance,
        3_000,
        "the refused commands' deposits are not there"
    );
    assert_eq!(account.version(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_in_a_batch_has_each_command_decide_again() {
    let events = Interfering::default();
    let repo = Repository::<Account>::new(events.clone()).with_command_queue();
    let id = opened_account(&repo, 0).await;
    events.armed.store(true, Ordering::SeqCst);
    let done = queued_commands(&repo, id, 32, |_, account| account.deposit(100)).await;
    let done: Vec<Executed> = done.into_iter().map(Result::unwrap).collect();
    assert!(
        done.iter().any(|d| d.attempts > 1),
        "the first batch met the other writer's deposit and decided again"
    );
    let account = repo.load(id).await.unwrap();
    assert_eq!(
        account.state().balance,
        3_201,
        "every deposit once, the other writer's too"
    );
    assert_eq!(account.version(), 34);
}

/// A command whose decision panics leaves the batch it joined as it found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_panics_in_a_batch_takes_its_events_with_it() {
    let repo = Repository::<Account>::new(Interfering::default()).with_command_queue();
    let id = opened_account(&repo, 0).await;
    let done = queued_commands(&repo, id, 1, |_, account| account.deposit(100)).await;
    assert!(done[0].is_ok());
    let commands: Vec<_> = (0..24)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.command(id)
                    .run(|account| {
                        account.deposit(10)?;
                        assert!(i % 6 != 5, "a decision that panics");
                        Ok::<_, Refused>(())
                    })
                    .await
            })
        })
        .collect();
    let mut panicked = 0;
    for command in commands {
        match command.await {
            Ok(done) => assert!(done.is_ok(), "{done:?}"),
            Err(e) if e.is_panic() => panicked += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(panicked, 4);
    let account = repo.load(id).await.unwrap();
    assert_eq!(
        account.state().balance,
        100 + 20 * 10,
        "the panicked commands' deposits are not there"
    );
}

// ---------------------------------------------------------------------------------------
// The given/when/then kit

fn opened(balance: i64) -> common::AccountEvent {
    AccountOpened {
        owner_name: "Ada".into(),
        initial_balance: balance,
    }
    .into()
}

#[test]
fn an_overdraft_is_refused_and_a_withdrawal_within_the_balance_is_recorded() {
    given::<Account>([opened(10_000), MoneyDeposited { amount: 2_000 }.into()])
        .when(|account| account.withdraw(15_000))
        .then_refused_with(Refused::InsufficientFunds {
            balance: 12_000,
            requested: 15_000,
        });
    given::<Account>([opened(10_000)])
        .when(|account| account.withdraw(3_000))
        .then([MoneyWithdrawn { amount: 3_000 }.into()])
        .then_state(|account| assert_eq!(account.balance, 7_000));
    given::<Account>([])
        .when(|account| account.deposit(100))
        .then_refused_with(Refused::NotOpen);
    given::<Account>([])
        .when(|account| account.open("Ada", 500))
        .then([opened(500)]);
}

#[test]
fn a_failed_expectation_says_what_was_expected_and_what_happened() {
    let panic = std::panic::catch_unwind(|| {
        given::<Account>([opened(10_000)])
            .when(|account| account.withdraw(3_000))
            .then([MoneyWithdrawn { amount: 4_000 }.into()]);
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("expected:\n  1. MoneyWithdrawn {\"amount\":4000}"),
        "{message}"
    );
    assert!(
        message.contains("recorded:\n  1. MoneyWithdrawn {\"amount\":3000}"),
        "{message}"
    );

    let panic = std::panic::catch_unwind(|| {
        given::<Account>([opened(1_000)])
            .when(|account| account.withdraw(3_000))
            .then_nothing();
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("refused with:\n  InsufficientFunds"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------
// Request ids

/// The same request made twice, through two repositories on their own stores (as two
/// instances of a service would be): the second returns the first's outcome, and writes
/// nothing.
async fn a_repeated_request_returns_its_first_outcome(
    first: Arc<dyn EventStore>,
    second: Arc<dyn EventStore>,
) {
    let (one, two) = (
        Repository::<Account>::new(first),
        Repository::<Account>::new(second),
    );
    let id = opened_account(&one, 1_000).await;
    let request = Uuid::new_v4();
    let done = one
        .command(id)
        .request_id(request)
        .run(|a| a.deposit(500))
        .await
        .unwrap();
    assert_eq!((done.version, done.repeated), (2, false));
    let again = two
        .command(id)
        .request_id(request)
        .run(|a| a.deposit(500))
        .await
        .unwrap();
    assert_eq!((again.version, again.events, again.repeated), (2, 0, true));
    let other = two
        .command(id)
        .request_id(Uuid::new_v4())
        .run(|a| a.deposit(500))
        .await
        .unwrap();
    assert_eq!((other.version, other.repeated), (3, false));
    assert_eq!(
        one.load(id).await.unwrap().state().balance,
        2_000,
        "two deposits, not three"
    );
    let stored = one.event_store().read_stream(id, "Account", 1);
    let requests: Vec<Option<RequestId>> = stored
        .map_ok(|e| e.request_id.clone())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        requests[0],
        Some(request.into()),
        "the event carries its request id"
    );
}

#[tokio::test]
async fn a_repeated_request_returns_its_first_outcome_in_memory() {
    let events = InMemoryEventStore::new();
    a_repeated_request_returns_its_first_outcome(Arc::new(events.clone()), Arc::new(events)).await;
}

#[tokio::test]
async fn a_repeated_request_returns_its_first_outcome_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.db");
    let first = eventsourcing_kit::backend::sqlite::SqliteEventStore::open(&path)
        .await
        .unwrap();
    let second = eventsourcing_kit::backend::sqlite::SqliteEventStore::open(&path)
        .await
        .unwrap();
    a_repeated_request_returns_its_first_outcome(Arc::new(first), Arc::new(second)).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_repeated_request_returns_its_first_outcome_on_postgres() {
    let Some(url) = common::postgres_url("a_repeated_request_returns_its_first_outcome_on_postgres") else {
        return;
    };
    let (first, _) = eventsourcing_kit::backend::postgres::connect_url(&url)
        .await
        .unwrap();
    first.migrate().await.unwrap();
    let (second, _) = eventsourcing_kit::backend::postgres::connect_url(&url)
        .await
        .unwrap();
    a_repeated_request_returns_its_first_outcome(Arc::new(first), Arc::new(second)).await;
}

#[tokio::test]
async fn a_request_id_given_in_the_context_or_kept_through_record_with_counts_too() {
    let repo = Repository::<Account>::new(InMemoryEventStore::new());
    let id = opened_account(&repo, 1_000).await;
    let request = Uuid::new_v4();
    let context = {
        let mut value = EventContext::default();
        value.request_id = Some(request.into());
        value
    };
    let first = repo
        .command(id)
        .context(context.clone())
        .run(|account| {
            account.record_with(MoneyDeposited { amount: 100 }, EventContext::default());
            Ok::<(), Refused>(())
        })
        .await
        .unwrap();
    let again = repo
        .command(id)
        .context(context)
        .run(|a| a.deposit(100))
        .await
        .unwrap();
    assert_eq!(
        (first.repeated, again.repeated, again.version),
        (false, true, first.version)
    );

    // A create-only command that records nothing still refuses an existing aggregate.
    let nothing = repo
        .command(id)
        .create_only()
        .run(|_| Ok::<(), Refused>(()))
        .await;
    assert!(
        matches!(nothing, Err(CommandError::AlreadyExists { .. })),
        "{nothing:?}"
    );
}
