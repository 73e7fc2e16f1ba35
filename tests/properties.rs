//! Random sequences of commands, saves, snapshot policies and modes, manual snapshots,
//! invalidations and reloads, on every backend. After every step: a loaded aggregate equals
//! the full replay of its stored events, versions have no gaps, and no snapshot is beyond its
//! stream's head.

mod common;

use common::*;
use eventsourcing_kit::backend::{open, Stores};
use eventsourcing_kit::prelude::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Deposit(usize, u16),
    Withdraw(usize, u16),
    Save(usize),
    Snapshot(usize),
    Invalidate(Option<u32>),
    Reload(usize),
    AwaitBackground,
}

const AGGREGATES: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    let agg = 0..AGGREGATES;
    prop_oneof![
        4 => (agg.clone(), 1..500u16).prop_map(|(a, n)| Step::Deposit(a, n)),
        2 => (agg.clone(), 1..500u16).prop_map(|(a, n)| Step::Withdraw(a, n)),
        4 => agg.clone().prop_map(Step::Save),
        1 => agg.clone().prop_map(Step::Snapshot),
        1 => proptest::option::of(0..3u32).prop_map(Step::Invalidate),
        2 => agg.prop_map(Step::Reload),
        1 => Just(Step::AwaitBackground),
    ]
}

fn policy() -> impl Strategy<Value = SnapshotPolicy> {
    let mode = prop_oneof![
        Just(SnapshotMode::Sync),
        Just(SnapshotMode::Background),
        Just(SnapshotMode::Manual)
    ];
    (1..8u64, mode).prop_map(|(n, mode)| SnapshotPolicy::every(n).unwrap().with_mode(mode))
}

/// Checks every invariant of one aggregate against the stores.
async fn check(stores: &Stores, repo: &Repository<Account>, id: Uuid) {
    let versions: Vec<u64> = stream_versions(&*stores.events, id).await;
    assert_eq!(
        versions,
        (1..=versions.len() as u64).collect::<Vec<_>>(),
        "versions have no gap"
    );
    let snapshot = stores
        .snapshots
        .get_snapshot(id, "Account", u32::MAX)
        .await
        .unwrap();
    if let Some(snapshot) = &snapshot {
        assert!(
            snapshot.version <= versions.len() as u64,
            "snapshot beyond the head"
        );
    }
    if versions.is_empty() {
        assert!(repo.load(id).await.unwrap_err().is_not_found());
        return;
    }
    let truth = stores.repository::<Account>().load(id).await.unwrap();
    let loaded = repo.load(id).await.unwrap();
    assert_eq!(
        (loaded.version(), loaded.state()),
        (truth.version(), truth.state())
    );
}

async fn run(url: &str, policy: SnapshotPolicy, steps: Vec<Step>) {
    let stores = open(url).await.unwrap();
    stores.migrate().await.unwrap();
    let repo = stores.repository_with_snapshots::<Account>(policy);
    let mut roots: Vec<AggregateRoot<Account>> = (0..AGGREGATES).map(|_| opened(Uuid::new_v4(), 0)).collect();
    for step in steps {
        match step {
            Step::Deposit(a, n) => roots[a].record(MoneyDeposited { amount: i64::from(n) }),
            Step::Withdraw(a, n) => roots[a].record(MoneyWithdrawn { amount: i64::from(n) }),
            Step::Save(a) => {
                let pending = roots[a].pending_events().len() as u64;
                let before = roots[a].saved_version();
                repo.save(&mut roots[a]).await.unwrap();
                assert_eq!(roots[a].saved_version(), before + pending);
            }
            Step::Snapshot(a) => match repo.create_snapshot(&roots[a]).await {
                Ok(snapshot) => assert_eq!(snapshot.version, roots[a].version()),
                Err(Error::UnsavedEvents { .. }) => assert!(roots[a].has_pending_events()),
                Err(Error::NotFound { .. }) => assert_eq!(roots[a].version(), 0),
                Err(e) => panic!("{e}"),
            },
            Step::Invalidate(below) => {
                stores
                    .snapshots
                    .delete_snapshots_by_type("Account", below)
                    .await
                    .unwrap();
            }
            Step::Reload(a) => {
                let id = roots[a].id();
                if let Ok(root) = repo.load(id).await {
                    roots[a] = root;
                }
            }
            Step::AwaitBackground => {
                repo.await_pending_snapshots().await;
            }
        }
        for root in &roots {
            check(&stores, &repo, root.id()).await;
        }
    }
    repo.await_pending_snapshots().await;
    for root in &roots {
        check(&stores, &repo, root.id()).await;
    }
}

fn backends() -> Vec<(String, u32)> {
    let mut urls = vec![("memory:".to_owned(), 96)];
    if cfg!(feature = "sqlite") {
        urls.push(("sqlite::memory:".to_owned(), 32));
    }
    if cfg!(feature = "postgres") {
        if let Ok(url) = std::env::var("EVENTSOURCE_TEST_POSTGRES_URL") {
            urls.push((url, 12));
        }
    }
    urls
}

#[test]
fn loads_equal_full_replays_after_every_step_on_every_backend() {
    for (url, cases) in backends() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(policy in policy(), steps in proptest::collection::vec(step(), 1..40))| {
            runtime.block_on(run(&url, policy, steps));
        });
    }
}
