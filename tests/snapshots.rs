//! Snapshotting: the threshold rule, the three modes, and loads that never trust a bad snapshot.

mod common;

use std::time::Duration;

use common::*;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::{MissReason, Snapshot};

fn repo_with(
    events: &InMemoryEventStore,
    snapshots: impl SnapshotStore + 'static,
    policy: SnapshotPolicy,
) -> Repository<Account> {
    Repository::new(events.clone()).with_snapshots(snapshots, policy)
}

/// Saves batches of deposits of the given sizes (the first also opens the account) and
/// returns the versions at which snapshots were written.
async fn snapshot_versions(n: u64, batches: &[usize]) -> Vec<u64> {
    let store = ObservedSnapshotStore::default();
    let repo = repo_with(
        &InMemoryEventStore::new(),
        store.clone(),
        SnapshotPolicy::every(n).unwrap(),
    );
    let id = Uuid::new_v4();
    let mut account = repo.create_new(id);
    for (i, &size) in batches.iter().enumerate() {
        let deposits = if i == 0 {
            account.record(AccountOpened {
                owner_name: "Ada".into(),
                initial_balance: 0,
            });
            size - 1
        } else {
            size
        };
        for _ in 0..deposits {
            account.record(MoneyDeposited { amount: 100 });
        }
        repo.save(&mut account).await.unwrap();
    }
    store.saved_versions()
}

#[tokio::test]
async fn one_event_per_save_snapshots_at_each_multiple_of_the_threshold() {
    assert_eq!(snapshot_versions(10, &[1; 25]).await, vec![10, 20]);
}

#[tokio::test]
async fn a_save_crossing_multiples_snapshots_once_at_its_final_version() {
    assert_eq!(snapshot_versions(10, &[7, 7, 7, 30]).await, vec![14, 21, 51]);
}

#[tokio::test]
async fn sync_mode_writes_the_snapshot_before_save_returns() {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = repo_with(&events, snapshots.clone(), SnapshotPolicy::every(10).unwrap());
    let id = Uuid::new_v4();
    let mut account = opened(id, 14);
    repo.save(&mut account).await.unwrap();
    let snapshot = snapshots
        .get_snapshot(id, "Account", u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((snapshot.version, snapshot.schema_version), (15, 1));
    let state: Account = serde_json::from_str(&snapshot.state).unwrap();
    assert_eq!(&state, account.state());
    assert_eq!(repo.metrics().written("Account"), 1);
}

#[tokio::test]
async fn a_load_uses_the_snapshot_and_replays_only_later_events() {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = repo_with(&events, snapshots.clone(), SnapshotPolicy::every(10).unwrap());
    let id = Uuid::new_v4();
    let mut account = opened(id, 9);
    repo.save(&mut account).await.unwrap();
    for _ in 0..3 {
        account.record(MoneyWithdrawn { amount: 200 });
    }
    repo.save(&mut account).await.unwrap();

    let loaded = repo.load(id).await.unwrap();
    assert_eq!(loaded.version(), 13);
    assert_eq!(loaded.state(), replayed(&events, id).await.state());
    assert_eq!(repo.metrics().hits("Account"), 1);
    assert_eq!(repo.metrics().total_misses("Account"), 0);
}

#[tokio::test]
async fn a_repository_without_a_policy_takes_no_snapshots() {
    let snapshots = InMemorySnapshotStore::new();
    let repo = repo_with(
        &InMemoryEventStore::new(),
        snapshots.clone(),
        SnapshotPolicy::manual(),
    );
    let id = Uuid::new_v4();
    repo.save(&mut opened(id, 200)).await.unwrap();
    assert_eq!(snapshots.count(), 0);
    let plain = Repository::<Account>::new(InMemoryEventStore::new());
    plain.save(&mut opened(id, 200)).await.unwrap();
    assert_eq!(plain.await_pending_snapshots().await, 0);
}

#[tokio::test]
async fn manual_mode_snapshots_only_on_request_and_refuses_unsaved_events() {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let policy = SnapshotPolicy::every(5).unwrap().with_mode(SnapshotMode::Manual);
    let repo = repo_with(&events, snapshots.clone(), policy);
    let id = Uuid::new_v4();
    let mut account = opened(id, 20);
    repo.save(&mut account).await.unwrap();
    assert!(!snapshots.snapshot_exists(id, "Account").await.unwrap());

    account.record(MoneyDeposited { amount: 100 });
    let err = repo.create_snapshot(&account).await.unwrap_err();
    assert!(matches!(err, Error::UnsavedEvents { count: 1, .. }), "{err}");
    assert!(!snapshots.snapshot_exists(id, "Account").await.unwrap());

    repo.save(&mut account).await.unwrap();
    let snapshot = repo.create_snapshot(&account).await.unwrap();
    assert_eq!(snapshot.version, 22);
    assert_eq!(
        snapshots.get_snapshot(id, "Account", u32::MAX).await.unwrap(),
        Some(snapshot)
    );
}

#[tokio::test]
async fn create_snapshot_needs_a_store_and_saved_events() {
    let repo = Repository::<Account>::new(InMemoryEventStore::new());
    let id = Uuid::new_v4();
    let mut account = opened(id, 1);
    repo.save(&mut account).await.unwrap();
    let err = repo.create_snapshot(&account).await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfiguration(_)), "{err}");

    let repo = repo.with_snapshots(InMemorySnapshotStore::new(), SnapshotPolicy::manual());
    let err = repo
        .create_snapshot(&repo.create_new(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn background_mode_writes_after_save_and_await_counts_the_writes() {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let policy = SnapshotPolicy::every(10)
        .unwrap()
        .with_mode(SnapshotMode::Background);
    let repo = repo_with(&events, snapshots.clone(), policy);
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for &id in &ids {
        repo.save(&mut opened(id, 14)).await.unwrap();
    }
    assert_eq!(repo.await_pending_snapshots().await, 3);
    assert_eq!(repo.await_pending_snapshots().await, 0);
    for &id in &ids {
        assert_eq!(
            snapshots
                .get_snapshot(id, "Account", u32::MAX)
                .await
                .unwrap()
                .unwrap()
                .version,
            15
        );
    }
}

/// Waits, without `await_pending_snapshots`, until the background worker has written `n`
/// snapshots in all. On a current-thread runtime the worker runs only while this yields, and
/// it records a write as finished in the same step as it counts it written, so once this
/// returns the queue holds the write as finished.
async fn until_written(repo: &Repository<Account>, n: u64) {
    while repo.metrics().written("Account") < n {
        tokio::task::yield_now().await;
    }
}

/// A repository on a fresh event store that writes a snapshot every 5 events in the
/// background, into a store the test observes.
fn in_the_background() -> (ObservedSnapshotStore, Repository<Account>) {
    let store = ObservedSnapshotStore::default();
    let policy = SnapshotPolicy::every(5)
        .unwrap()
        .with_mode(SnapshotMode::Background);
    let repo = repo_with(&InMemoryEventStore::new(), store.clone(), policy);
    (store, repo)
}

#[tokio::test]
async fn await_pending_snapshots_counts_a_snapshot_written_before_the_call_once() {
    let (store, repo) = in_the_background();
    repo.save(&mut opened(Uuid::new_v4(), 4)).await.unwrap();
    until_written(&repo, 1).await;
    assert_eq!(repo.pending_snapshots(), 0);
    assert_eq!(
        repo.await_pending_snapshots().await,
        1,
        "written before the call, and counted"
    );
    assert_eq!(repo.await_pending_snapshots().await, 0, "counted once");

    // Three saves: two written before the call, one after a first call gave up waiting
    // for it (a call dropped before it returned counts nothing).
    for _ in 0..2 {
        repo.save(&mut opened(Uuid::new_v4(), 4)).await.unwrap();
    }
    until_written(&repo, 3).await;
    store.close_gate();
    repo.save(&mut opened(Uuid::new_v4(), 4)).await.unwrap();
    let given_up = tokio::time::timeout(Duration::from_millis(20), repo.await_pending_snapshots()).await;
    assert!(given_up.is_err(), "the third is held at the gate");
    store.open_gate();
    assert_eq!(repo.await_pending_snapshots().await, 3);
    assert_eq!(repo.await_pending_snapshots().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_pending_snapshots_counts_a_snapshot_written_while_it_waits() {
    let (store, repo) = in_the_background();
    // One written before the call, one held at the gate until the call waits for it.
    repo.save(&mut opened(Uuid::new_v4(), 4)).await.unwrap();
    while store.saved_versions().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    store.close_gate();
    repo.save(&mut opened(Uuid::new_v4(), 4)).await.unwrap();
    let (counted, ()) = tokio::join!(repo.await_pending_snapshots(), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.saved_versions().len(), 1, "the second waits at the gate");
        store.open_gate();
    });
    assert_eq!(counted, 2);
    assert_eq!(store.saved_versions().len(), 2);
    assert_eq!(repo.await_pending_snapshots().await, 0);
}

#[tokio::test]
async fn a_later_unsaved_change_never_leaks_into_a_background_snapshot() {
    let (store, repo) = in_the_background();
    let id = Uuid::new_v4();
    store.close_gate();
    let mut account = opened(id, 4);
    repo.save(&mut account).await.unwrap();
    let saved_state = account.state().clone();
    account.record(MoneyWithdrawn { amount: 5_000 });
    account.record(MoneyWithdrawn { amount: 5_000 });
    store.open_gate();
    assert_eq!(repo.await_pending_snapshots().await, 1);

    let snapshot = store
        .get_snapshot(id, "Account", u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.version, 5);
    let state: Account = serde_json::from_str(&snapshot.state).unwrap();
    assert_eq!(state, saved_state);
    assert_eq!(repo.load(id).await.unwrap().state(), &saved_state);
}

#[tokio::test]
async fn background_requests_for_one_aggregate_coalesce_to_the_newest() {
    let events = InMemoryEventStore::new();
    let store = ObservedSnapshotStore::default();
    let policy = SnapshotPolicy::every(1)
        .unwrap()
        .with_mode(SnapshotMode::Background);
    let repo = repo_with(&events, store.clone(), policy);
    let (busy, id) = (Uuid::new_v4(), Uuid::new_v4());
    store.close_gate();
    // The worker takes `busy` and waits at the gate; `id`'s requests wait in the queue.
    repo.save(&mut opened(busy, 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut account = opened(id, 0);
    for _ in 0..10 {
        account.record(MoneyDeposited { amount: 100 });
        repo.save(&mut account).await.unwrap();
    }
    assert_eq!(repo.pending_snapshots(), 1);
    store.open_gate();
    assert_eq!(repo.await_pending_snapshots().await, 2);
    let mut saved = store.saved_versions();
    saved.sort();
    assert_eq!(saved, vec![1, 11]);
}

#[tokio::test]
async fn a_full_background_queue_makes_the_save_write_its_own_snapshot() {
    let events = InMemoryEventStore::new();
    let store = ObservedSnapshotStore::default();
    let policy = SnapshotPolicy::every(1)
        .unwrap()
        .with_mode(SnapshotMode::Background)
        .with_queue_capacity(2)
        .unwrap();
    let repo = repo_with(&events, store.clone(), policy);
    store.close_gate();
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let saves: Vec<_> = ids
        .iter()
        .map(|&id| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.save(&mut opened(id, 0)).await.unwrap() })
        })
        .collect();
    for _ in 0..20 {
        assert!(repo.pending_snapshots() <= 2, "the queue stays within its bound");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.open_gate();
    for save in saves {
        save.await.unwrap();
    }
    repo.await_pending_snapshots().await;
    for id in ids {
        assert!(
            store.snapshot_exists(id, "Account").await.unwrap(),
            "no snapshot is dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_queue_stays_bounded_under_sustained_load() {
    const AGGREGATES: usize = 2_000;
    const CAPACITY: usize = 64;
    let events = InMemoryEventStore::new();
    let store = SlowSnapshotStore::default();
    let policy = SnapshotPolicy::every(2)
        .unwrap()
        .with_mode(SnapshotMode::Background)
        .with_queue_capacity(CAPACITY)
        .unwrap();
    let repo = repo_with(&events, store.clone(), policy);
    let watcher = {
        let repo = repo.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..2_000 {
                most = most.max(repo.pending_snapshots());
                tokio::task::yield_now().await;
            }
            most
        })
    };
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let repo = repo.clone();
            tokio::spawn(async move {
                for _ in (w..AGGREGATES).step_by(8) {
                    let mut account = opened(Uuid::new_v4(), 1);
                    repo.save(&mut account).await.unwrap();
                    account.record(MoneyDeposited { amount: 100 });
                    account.record(MoneyDeposited { amount: 100 });
                    repo.save(&mut account).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let most = watcher.await.unwrap();
    assert!(
        most <= CAPACITY,
        "pending snapshots stay within the bound: {most}"
    );
    assert!(most > 0, "the load went through the queue");
    repo.await_pending_snapshots().await;
    assert_eq!(
        repo.pending_snapshots(),
        0,
        "shutdown waits for every pending snapshot"
    );
    assert_eq!(store.0.count(), AGGREGATES, "every aggregate has its snapshot");
    assert!(repo.metrics().written("Account") >= AGGREGATES as u64);
    assert_eq!(repo.metrics().write_failures("Account"), 0);
}

#[tokio::test]
async fn dropping_the_repository_does_not_drop_scheduled_snapshots() {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let policy = SnapshotPolicy::every(1)
        .unwrap()
        .with_mode(SnapshotMode::Background);
    let id = Uuid::new_v4();
    {
        let repo = repo_with(&events, snapshots.clone(), policy);
        repo.save(&mut opened(id, 3)).await.unwrap();
    }
    for _ in 0..100 {
        if snapshots.snapshot_exists(id, "Account").await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the scheduled snapshot was never written");
}

fn snapshot_of(id: Uuid, version: u64, schema_version: u32, state: &str) -> Snapshot {
    Snapshot::new(id, "Account", version, schema_version, state)
}

/// Stores 6 events for a new account, plants `snapshot`, loads, and checks the load equals
/// the full replay and that exactly one miss of `reason` was counted.
async fn load_ignores(snapshot: impl FnOnce(Uuid) -> Snapshot, reason: MissReason) {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = repo_with(&events, snapshots.clone(), SnapshotPolicy::manual());
    let id = Uuid::new_v4();
    repo.save(&mut opened(id, 5)).await.unwrap();
    snapshots.save_snapshot(&snapshot(id)).await.unwrap();

    let loaded = repo.load(id).await.unwrap();
    let truth = replayed(&events, id).await;
    assert_eq!(
        (loaded.version(), loaded.state()),
        (truth.version(), truth.state())
    );
    assert_eq!(repo.metrics().misses("Account", reason), 1, "{reason}");
    assert_eq!(repo.metrics().total_misses("Account"), 1);
    assert_eq!(repo.metrics().hits("Account"), 0);
}

const WRONG_STATE: &str = r#"{"owner_name":"Mallory","balance":100000000000,"transaction_count":0}"#;

#[tokio::test]
async fn a_snapshot_beyond_the_stream_head_is_ignored() {
    load_ignores(
        |id| snapshot_of(id, 100, 1, WRONG_STATE),
        MissReason::BeyondStreamHead,
    )
    .await;
}

#[tokio::test]
async fn a_snapshot_of_another_schema_version_is_ignored() {
    load_ignores(
        |id| snapshot_of(id, 6, 0, WRONG_STATE),
        MissReason::SchemaMismatch,
    )
    .await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_deserialize_is_ignored() {
    load_ignores(
        |id| snapshot_of(id, 6, 1, r#"{"balance":"#),
        MissReason::DeserializationError,
    )
    .await;
    load_ignores(
        |id| snapshot_of(id, 6, 1, r#"{"balance":"high"}"#),
        MissReason::DeserializationError,
    )
    .await;
}

#[tokio::test]
async fn a_missing_snapshot_is_counted() {
    let events = InMemoryEventStore::new();
    let repo = repo_with(&events, InMemorySnapshotStore::new(), SnapshotPolicy::manual());
    let id = Uuid::new_v4();
    repo.save(&mut opened(id, 1)).await.unwrap();
    repo.load(id).await.unwrap();
    assert_eq!(repo.metrics().misses("Account", MissReason::Missing), 1);
    assert_eq!(
        repo.metrics().miss_counts(),
        vec![("Account", MissReason::Missing, 1)]
    );
}

#[tokio::test]
async fn an_older_snapshot_never_replaces_a_newer_one() {
    let snapshots = InMemorySnapshotStore::new();
    let id = Uuid::new_v4();
    assert!(snapshots
        .save_snapshot(&snapshot_of(id, 20, 1, "{}"))
        .await
        .unwrap());
    assert!(!snapshots
        .save_snapshot(&snapshot_of(id, 10, 1, "{}"))
        .await
        .unwrap());
    assert_eq!(
        snapshots
            .get_snapshot(id, "Account", u32::MAX)
            .await
            .unwrap()
            .unwrap()
            .version,
        20
    );
}

#[tokio::test]
async fn a_snapshot_store_that_always_fails_never_fails_a_load_or_a_save() {
    let events = InMemoryEventStore::new();
    for mode in [SnapshotMode::Sync, SnapshotMode::Background] {
        let policy = SnapshotPolicy::every(2).unwrap().with_mode(mode);
        let repo = repo_with(&events, FailingSnapshotStore, policy);
        let id = Uuid::new_v4();
        let mut account = opened(id, 5);
        repo.save(&mut account).await.unwrap();
        // Without this wait a background request could coalesce with the next one.
        assert_eq!(repo.await_pending_snapshots().await, 0);
        account.record(MoneyDeposited { amount: 100 });
        account.record(MoneyDeposited { amount: 100 });
        repo.save(&mut account).await.unwrap();
        assert_eq!(repo.await_pending_snapshots().await, 0);
        let loaded = repo.load(id).await.unwrap();
        assert_eq!(loaded.state(), account.state());
        assert_eq!(repo.metrics().misses("Account", MissReason::StoreError), 1);
        assert_eq!(repo.metrics().write_failures("Account"), 2, "{mode:?}");
    }
    let repo = repo_with(&events, FailingSnapshotStore, SnapshotPolicy::manual());
    let account = opened(Uuid::new_v4(), 0);
    let mut saved = account.clone();
    repo.save(&mut saved).await.unwrap();
    let err = repo.create_snapshot(&saved).await.unwrap_err();
    assert!(
        matches!(err, Error::Store { .. }),
        "an explicit snapshot reports the failure: {err}"
    );
}

#[tokio::test]
async fn a_snapshot_store_that_hangs_costs_at_most_its_timeout() {
    let events = InMemoryEventStore::new();
    let policy = SnapshotPolicy::every(1)
        .unwrap()
        .with_store_timeout(Duration::from_millis(50))
        .unwrap();
    let repo = repo_with(&events, HangingSnapshotStore, policy);
    let id = Uuid::new_v4();
    let mut account = opened(id, 3);
    repo.save(&mut account).await.unwrap();
    let loaded = repo.load(id).await.unwrap();
    assert_eq!(loaded.state(), account.state());
    assert_eq!(repo.metrics().misses("Account", MissReason::StoreError), 1);
    assert_eq!(repo.metrics().write_failures("Account"), 1);
    assert!(matches!(
        SnapshotPolicy::manual().with_store_timeout(Duration::ZERO),
        Err(Error::InvalidConfiguration(_))
    ));
}

#[tokio::test]
async fn repositories_can_share_metrics_whatever_the_order_of_configuration() {
    let events = InMemoryEventStore::new();
    let metrics = std::sync::Arc::new(eventsourcing_kit::SnapshotMetrics::new());
    let policy = SnapshotPolicy::every(1)
        .unwrap()
        .with_mode(SnapshotMode::Background);
    let first = repo_with(&events, InMemorySnapshotStore::new(), policy).with_metrics(metrics.clone());
    let second = Repository::<Account>::new(events.clone())
        .with_metrics(metrics.clone())
        .with_snapshots(InMemorySnapshotStore::new(), policy);
    for repo in [&first, &second] {
        repo.save(&mut opened(Uuid::new_v4(), 0)).await.unwrap();
        repo.await_pending_snapshots().await;
    }
    assert_eq!(metrics.written("Account"), 2);
}

#[test]
fn snapshots_work_on_a_runtime_without_timers() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        for mode in [SnapshotMode::Sync, SnapshotMode::Background] {
            let snapshots = InMemorySnapshotStore::new();
            let policy = SnapshotPolicy::every(2).unwrap().with_mode(mode);
            let repo = repo_with(&InMemoryEventStore::new(), snapshots.clone(), policy);
            let id = Uuid::new_v4();
            repo.save(&mut opened(id, 3)).await.unwrap();
            repo.await_pending_snapshots().await;
            assert_eq!(repo.load(id).await.unwrap().version(), 4);
            assert_eq!(repo.metrics().hits("Account"), 1, "{mode:?}");
        }
    });
}

mod v2 {
    use super::*;

    /// The account after a schema change: it now counts the kinds of transactions.
    #[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[aggregate(
        name = "Account",
        schema_version = 2,
        events(AccountOpened, MoneyDeposited, MoneyWithdrawn)
    )]
    pub struct AccountV2 {
        pub balance: i64,
        pub deposits: u64,
        pub withdrawals: u64,
    }

    impl Apply<AccountOpened> for AccountV2 {
        fn apply(&mut self, e: &AccountOpened) {
            self.balance = e.initial_balance;
        }
    }
    impl Apply<MoneyDeposited> for AccountV2 {
        fn apply(&mut self, e: &MoneyDeposited) {
            self.balance += e.amount;
            self.deposits += 1;
        }
    }
    impl Apply<MoneyWithdrawn> for AccountV2 {
        fn apply(&mut self, e: &MoneyWithdrawn) {
            self.balance -= e.amount;
            self.withdrawals += 1;
        }
    }
}

#[tokio::test]
async fn a_v1_snapshot_is_ignored_by_the_v2_aggregate_and_can_be_invalidated() {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let v1 = repo_with(&events, snapshots.clone(), SnapshotPolicy::every(5).unwrap());
    let id = Uuid::new_v4();
    let mut account = opened(id, 9);
    account.record(MoneyWithdrawn { amount: 300 });
    v1.save(&mut account).await.unwrap();
    assert_eq!(
        snapshots
            .get_snapshot(id, "Account", u32::MAX)
            .await
            .unwrap()
            .unwrap()
            .schema_version,
        1
    );

    let v2 = Repository::<v2::AccountV2>::new(events.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::every(5).unwrap());
    let loaded = v2.load(id).await.unwrap();
    assert_eq!(v2.metrics().misses("Account", MissReason::SchemaMismatch), 1);
    assert_eq!(loaded.version(), 11);
    assert_eq!(
        loaded.state(),
        &v2::AccountV2 {
            balance: 10_600,
            deposits: 9,
            withdrawals: 1
        },
        "the state equals the full replay under the new schema"
    );
    let other = Uuid::new_v4();
    v1.save(&mut opened(other, 5)).await.unwrap();
    assert_eq!(
        snapshots
            .delete_snapshots_by_type("Account", Some(2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(snapshots.count(), 0);
}
