//! A projection and a plain subscription, each run as a consumer group by several worker
//! processes, while events are appended: one worker is killed (SIGKILL), one is paused past
//! its lease (SIGSTOP, on PostgreSQL most likely inside a read-model transaction, which takes
//! 10 ms a batch there) and resumed, one joins and one leaves. The read model must end up
//! holding every event exactly once, each aggregate's in version order: as a full rebuild
//! would; the subscription must have handed every event over at least once.
//!
//! Each test starts its workers as copies of this test binary (the variable `WORKER` set).
//! The PostgreSQL one runs against `EVENTSOURCE_TEST_POSTGRES_URL`, in a schema of its own;
//! without it, it says it is skipped, or fails under `EVENTSOURCE_REQUIRE_POSTGRES=1`.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsourcing_kit::backend::{self, SqlProjection, SqlReadModel, SqlWrites, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::Projection;
use eventsourcing_kit::subscription::HandlerError;
use futures_util::FutureExt;

/// Set in a worker process: the stores' URL.
const WORKER: &str = "EVENTSOURCE_TEST_GROUP_WORKER";
/// Set in a worker process: the read model's table (its own in each run, as read models go
/// to the connection's `search_path` whatever the stores' schema).
const TABLE: &str = "EVENTSOURCE_TEST_GROUP_TABLE";
/// The lease of each range: a paused worker loses its ranges after it.
const LEASE: Duration = Duration::from_millis(800);

#[event(aggregate = "Crate")]
pub struct Loaded {
    pub items: u32,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Crate", events(Loaded))]
pub struct Crate {
    pub items: u32,
}

impl Apply<Loaded> for Crate {
    fn apply(&mut self, event: &Loaded) {
        self.items += event.items;
    }
}

/// Each event applied as a row, with the version its aggregate had in the read model when it
/// was applied: a row applied twice, or out of order, shows.
struct Applied {
    table: String,
    /// Whether each batch takes 10 ms in the database (PostgreSQL).
    slow: bool,
}

impl SqlProjection for Applied {
    fn setup(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        let table = &self.table;
        writes.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    aggregate_id TEXT NOT NULL, version BIGINT NOT NULL, previous BIGINT NOT NULL)"
            ),
            [],
        );
        Ok(())
    }

    fn apply(&mut self, writes: &mut SqlWrites, events: &[StoredEvent]) -> Result<(), HandlerError> {
        let table = &self.table;
        if self.slow {
            writes.execute("SELECT pg_sleep(0.01)", []);
        }
        for event in events {
            writes.execute(
                &format!(
                    "INSERT INTO {table} (aggregate_id, version, previous)
                     SELECT $1, CAST($2 AS BIGINT), coalesce(max(version), 0)
                     FROM {table} WHERE aggregate_id = $1"
                ),
                [event.aggregate_id.into(), (event.aggregate_version as i64).into()],
            );
        }
        Ok(())
    }

    fn reset(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        writes.execute(&format!("DELETE FROM {}", self.table), []);
        Ok(())
    }
}

fn projection(stores: &Stores, table: &str) -> Projection {
    let applied = Applied {
        table: table.to_owned(),
        slow: stores.backend_name() == "postgres",
    };
    let model = SqlReadModel::on(stores, applied).unwrap();
    configured(stores.projection("crates", model).unwrap())
}

/// A consumer of the crates' events as every worker runs them.
fn configured<C: Consumer>(consumer: C) -> C {
    consumer
        .for_aggregate::<Crate>()
        .batch_size(20)
        .unwrap()
        .poll_interval(Duration::from_millis(50))
        .unwrap()
        .lease(LEASE)
        .unwrap()
}

/// A worker process: one worker of each group until its standard input closes; the plain
/// subscription's handler prints each event it is given, `SEEN id version`.
async fn work(url: &str) {
    let stores = backend::open(url).await.unwrap();
    let table = std::env::var(TABLE).unwrap();
    let projection = projection(&stores, &table).group(6).unwrap();
    let subscription = configured(stores.subscription("crates-seen").unwrap())
        .group(5)
        .unwrap();
    let stop = common::stdin_closed().shared();
    let until_closed = || stop.clone();
    let print = |_range| {
        |batch: &[StoredEvent]| {
            let mut out = std::io::stdout().lock();
            for event in batch {
                writeln!(out, "SEEN {} {}", event.aggregate_id, event.aggregate_version)?;
            }
            out.flush()?;
            Ok(())
        }
    };
    println!("READY");
    let (projected, seen) = tokio::join!(
        projection.run(1, until_closed()),
        subscription.run(1, print, until_closed())
    );
    projected.unwrap();
    seen.unwrap();
    println!("STOPPED");
}

struct Workers {
    test: &'static str,
    url: String,
    table: String,
    children: Vec<Child>,
    /// What the workers' subscriptions handed over, as they printed it.
    seen: Arc<Mutex<HashSet<(String, u64)>>>,
}

impl Workers {
    fn start(&mut self) -> usize {
        let seen = self.seen.clone();
        let env = [(WORKER, self.url.as_str()), (TABLE, self.table.as_str())];
        let child = common::spawn_worker(self.test, &env, move |line| {
            let mut words = line.split(' ');
            if let (Some("SEEN"), Some(id), Some(version)) = (words.next(), words.next(), words.next()) {
                if let Ok(version) = version.parse() {
                    seen.lock().unwrap().insert((id.to_owned(), version));
                }
            }
        });
        self.children.push(child);
        self.children.len() - 1
    }

    fn signal(&self, worker: usize, signal: &str) {
        let pid = self.children[worker].id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Closes the worker's standard input: it stops as a graceful shutdown does.
    fn leave(&mut self, worker: usize) {
        drop(self.children[worker].stdin.take());
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Appends `loads` events to each of `crates` new crates from four writers; the versions of
/// each crate.
async fn traffic(stores: &Stores, crates: usize, loads: u32) -> HashMap<Uuid, u64> {
    let ids: Vec<Uuid> = (0..crates).map(|_| Uuid::new_v4()).collect();
    let writers: Vec<_> = ids
        .chunks(crates.div_ceil(4))
        .map(|chunk| {
            let (repo, chunk) = (stores.repository::<Crate>(), chunk.to_vec());
            tokio::spawn(async move {
                for items in 0..loads {
                    for id in &chunk {
                        repo.execute(*id, |c| {
                            c.record(Loaded { items });
                            Ok::<_, Error>(())
                        })
                        .await
                        .unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    ids.into_iter().map(|id| (id, u64::from(loads))).collect()
}

/// The read model's rows: aggregate, version, and the version before it when applied.
async fn applied(stores: &Stores, table: &str) -> Vec<(String, i64, i64)> {
    let rows = format!("SELECT aggregate_id, version, previous FROM {table}");
    #[cfg(feature = "postgres")]
    if let Some(events) = stores.postgres() {
        return eventsourcing_kit::backend::postgres::sqlx::query_as(&rows)
            .fetch_all(events.pool())
            .await
            .unwrap();
    }
    let database = stores.sqlite().unwrap().database();
    database
        .call(move |connection| {
            connection
                .prepare(&rows)?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        })
        .await
        .unwrap()
}

/// Runs the workers of `test` on the stores of `url`, the read model in `table`.
async fn workers_killed_paused_joining_and_leaving(test: &'static str, url: String, table: String) {
    let stores = backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    projection(&stores, &table).setup().await.unwrap();
    let mut workers = Workers {
        test,
        url,
        table: table.clone(),
        children: Vec::new(),
        seen: Arc::default(),
    };
    for _ in 0..3 {
        workers.start();
    }
    let writing = {
        let stores = stores.clone();
        tokio::spawn(async move { traffic(&stores, 48, 30).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    workers.signal(0, "-KILL");
    tokio::time::sleep(Duration::from_millis(400)).await;
    workers.signal(1, "-STOP");
    tokio::time::sleep(Duration::from_millis(600)).await;
    workers.start();
    tokio::time::sleep(Duration::from_millis(1400)).await;
    // Paused for more than two leases: its ranges were taken over meanwhile.
    workers.signal(1, "-CONT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers.leave(2);
    let expected = writing.await.unwrap();
    let total: u64 = expected.values().sum();

    for _ in 0..600 {
        if applied(&stores, &table).await.len() as u64 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment more, for any row applied twice to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = applied(&stores, &table).await;
    let mut versions: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for (id, version, previous) in rows {
        versions.entry(id).or_default().push((version, previous));
    }
    assert_eq!(versions.len(), expected.len(), "every crate in the read model");
    for _ in 0..600 {
        if workers.seen.lock().unwrap().len() as u64 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = workers.seen.lock().unwrap().clone();
    for (id, loads) in &expected {
        for version in 1..=*loads {
            assert!(
                seen.contains(&(id.to_string(), version)),
                "{id} {version} handed over by the subscription"
            );
        }
    }
    for (id, loads) in &expected {
        let mut applied = versions.remove(&id.to_string()).unwrap_or_default();
        applied.sort_unstable();
        let wanted: Vec<(i64, i64)> = (1..=*loads as i64).map(|v| (v, v - 1)).collect();
        assert_eq!(
            applied, wanted,
            "crate {id}: each version once, each applied after the one before"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_worker_processes_killed_paused_joining_and_leaving() {
    const TEST: &str = "sqlite_worker_processes_killed_paused_joining_and_leaving";
    if let Ok(url) = std::env::var(WORKER) {
        return work(&url).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("crates.db").display());
    workers_killed_paused_joining_and_leaving(TEST, url, "crates_applied".into()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_worker_processes_killed_paused_joining_and_leaving() {
    const TEST: &str = "postgres_worker_processes_killed_paused_joining_and_leaving";
    if let Ok(url) = std::env::var(WORKER) {
        return work(&url).await;
    }
    let Some(url) = common::postgres_url(TEST) else {
        return;
    };
    let scratch = common::ScratchSchema::new(&url, "group_processes");
    let separator = if url.contains('?') { '&' } else { '?' };
    let table = format!("\"{}\".crates_applied", scratch.name);
    let url = format!("{url}{separator}schema={}", scratch.name);
    workers_killed_paused_joining_and_leaving(TEST, url, table).await;
}
