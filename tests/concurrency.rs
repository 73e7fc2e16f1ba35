//! Many writers, in tasks and in processes, saving the same aggregates with background
//! snapshots on: the stored events are exactly the successful saves, and every snapshot
//! equals the replay of the events it stands for.

mod common;

use std::collections::HashMap;

use common::*;
use eventsourcing_kit::backend::{open, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::AggregateEvent;
use futures_util::TryStreamExt;

const TASKS: usize = 6;
const ROUNDS: usize = 30;
const AGGREGATES: usize = 3;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// Set in a child process: the store URL and the aggregate ids it writes to.
const CHILD: &str = "EVENTSOURCE_TEST_CONCURRENCY_CHILD";

fn repo(stores: &Stores) -> Repository<Account> {
    let policy = SnapshotPolicy::every(3)
        .unwrap()
        .with_mode(SnapshotMode::Background);
    Repository::new(stores.events.clone()).with_snapshots(stores.snapshots.clone(), policy)
}

/// `TASKS` tasks each saving one deposit per round to the aggregates in turn; returns the
/// successful saves per aggregate and the number of conflicts.
async fn hammer(stores: &Stores, ids: &[Uuid]) -> (HashMap<Uuid, u64>, u64) {
    let repo = repo(stores);
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (repo, ids) = (repo.clone(), ids.to_vec());
            tokio::spawn(async move {
                let mut wins: HashMap<Uuid, u64> = HashMap::new();
                let mut conflicts = 0;
                for round in 0..ROUNDS {
                    let id = ids[(task + round) % ids.len()];
                    let mut account = repo.load(id).await.unwrap();
                    account.record(MoneyDeposited { amount: 100 });
                    match repo.save(&mut account).await {
                        Ok(_) => *wins.entry(id).or_default() += 1,
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => panic!("a save failed with something other than a conflict: {e}"),
                    }
                }
                (wins, conflicts)
            })
        })
        .collect();
    let mut wins: HashMap<Uuid, u64> = HashMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (task_wins, task_conflicts) = task.await.unwrap();
        for (id, n) in task_wins {
            *wins.entry(id).or_default() += n;
        }
        conflicts += task_conflicts;
    }
    repo.await_pending_snapshots().await;
    (wins, conflicts)
}

/// The state after the first `version` stored events, decoded and applied one by one.
async fn state_at(stores: &Stores, id: Uuid, version: u64) -> Account {
    let events: Vec<_> = stores
        .events
        .read_stream(id, "Account", 0)
        .try_collect()
        .await
        .unwrap();
    let mut state = Account::default();
    for stored in events.iter().take(version as usize) {
        let event = AccountEvent::from_json(&stored.event_type, &stored.payload).unwrap();
        eventsourcing_kit::Aggregate::apply_event(&mut state, &event);
    }
    state
}

async fn verify(stores: &Stores, ids: &[Uuid], wins: &HashMap<Uuid, u64>) {
    for &id in ids {
        let won = wins.get(&id).copied().unwrap_or(0);
        let account = stores.repository::<Account>().load(id).await.unwrap();
        assert_eq!(
            account.version(),
            1 + won,
            "stored events are exactly the successful saves"
        );
        assert_eq!(account.state().transaction_count, won);
        let versions: Vec<u64> = stream_versions(&*stores.events, id).await;
        assert_eq!(
            versions,
            (1..=1 + won).collect::<Vec<_>>(),
            "no gap, no duplicate"
        );
        if let Some(snapshot) = stores
            .snapshots
            .get_snapshot(id, "Account", u32::MAX)
            .await
            .unwrap()
        {
            let state: Account = serde_json::from_str(&snapshot.state).unwrap();
            assert_eq!(
                state,
                state_at(stores, id, snapshot.version).await,
                "snapshot equals its replay"
            );
        }
        assert_eq!(repo(stores).load(id).await.unwrap().state(), account.state());
    }
}

async fn create(stores: &Stores) -> Vec<Uuid> {
    let repo = repo(stores);
    let mut ids = vec![];
    for _ in 0..AGGREGATES {
        let id = Uuid::new_v4();
        repo.save(&mut opened(id, 0)).await.unwrap();
        ids.push(id);
    }
    ids
}

async fn tasks_on(url: &str) {
    let stores = open(url).await.unwrap();
    stores.migrate().await.unwrap();
    let ids = create(&stores).await;
    let (wins, conflicts) = hammer(&stores, &ids).await;
    assert_eq!(wins.values().sum::<u64>() + conflicts, (TASKS * ROUNDS) as u64);
    verify(&stores, &ids, &wins).await;
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// Runs `hammer` here and in two child processes at once, then verifies the sum of all.
async fn processes_on(url: &str, test_name: &str) {
    if let Ok(spec) = std::env::var(CHILD) {
        let (url, ids) = spec.split_once('|').unwrap();
        let ids: Vec<Uuid> = ids.split(',').map(|s| s.parse().unwrap()).collect();
        let (wins, conflicts) = hammer(&open(url).await.unwrap(), &ids).await;
        let wins: Vec<String> = wins.iter().map(|(id, n)| format!("{id}={n}")).collect();
        println!("CHILD-RESULT {conflicts} {}", wins.join(","));
        return;
    }
    let stores = open(url).await.unwrap();
    stores.migrate().await.unwrap();
    let ids = create(&stores).await;
    let spec = format!(
        "{url}|{}",
        ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",")
    );
    let children: Vec<_> = (0..2)
        .map(|_| {
            tokio::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
                .env(CHILD, &spec)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut wins, mut conflicts) = hammer(&stores, &ids).await;
    for child in children {
        let output = child.wait_with_output().await.unwrap();
        assert!(output.status.success(), "a writer process failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let line = stdout
            .lines()
            // libtest may print the test's name on the same line before the report.
            .find_map(|l| l.split_once("CHILD-RESULT ").map(|(_, report)| report))
            .unwrap_or_else(|| panic!("the child did not report: {stdout}"));
        let (child_conflicts, child_wins) = line.split_once(' ').unwrap_or((line, ""));
        conflicts += child_conflicts.parse::<u64>().unwrap();
        for pair in child_wins.split(',').filter(|p| !p.is_empty()) {
            let (id, n) = pair.split_once('=').unwrap();
            *wins.entry(id.parse().unwrap()).or_default() += n.parse::<u64>().unwrap();
        }
    }
    assert_eq!(
        wins.values().sum::<u64>() + conflicts,
        (3 * TASKS * ROUNDS) as u64
    );
    assert!(
        conflicts > 0,
        "writers in three processes on three aggregates must collide"
    );
    verify(&stores, &ids, &wins).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_lose_nothing_in_memory() {
    tasks_on("memory:").await;
}

#[cfg(feature = "sqlite")]
fn sqlite_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("events.db").display());
    (dir, url)
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_lose_nothing_on_sqlite() {
    let (_dir, url) = sqlite_file();
    tasks_on(&url).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_lose_nothing_on_sqlite() {
    let (_dir, url) = sqlite_file();
    processes_on(&url, "processes_lose_nothing_on_sqlite").await;
}

#[cfg(feature = "postgres")]
fn postgres_url() -> Option<String> {
    match std::env::var("EVENTSOURCE_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("EVENTSOURCE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
            panic!("EVENTSOURCE_REQUIRE_POSTGRES=1 but EVENTSOURCE_TEST_POSTGRES_URL is not set")
        }
        Err(_) => {
            eprintln!("skipped: set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests");
            None
        }
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn tasks_lose_nothing_on_postgres() {
    if let Some(url) = postgres_url() {
        tasks_on(&url).await;
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn processes_lose_nothing_on_postgres() {
    if let Some(url) = postgres_url() {
        processes_on(&url, "processes_lose_nothing_on_postgres").await;
    }
}
