//! Consumer groups: subscriptions and projections split into ranges of slices, run by
//! workers that join and leave, and rescaled, under traffic, on every backend. Each check
//! records every event each handler is given and asserts, per aggregate, every version once
//! and in order, and no aggregate in two batches at once.
//!
//! The PostgreSQL checks run against `EVENTSOURCE_TEST_POSTGRES_URL`, each in a schema of its
//! own; without it they say they are skipped, or fail under `EVENTSOURCE_REQUIRE_POSTGRES=1`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventsourcing_kit::backend::{self, Stores};
use eventsourcing_kit::group::ConsumerGroup;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection};
use eventsourcing_kit::subscription::{Handler, HandlerError, Subscription};
use tokio::sync::oneshot;

#[event(aggregate = "Parcel")]
pub struct Scanned {
    pub at: u32,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Parcel", events(Scanned))]
pub struct Parcel {
    pub scans: u32,
}

impl Apply<Scanned> for Parcel {
    fn apply(&mut self, _: &Scanned) {
        self.scans += 1;
    }
}

#[event(aggregate = "Tally")]
pub struct Counted {}

/// A count kept per parcel by a process that reacts to each scan with a command.
#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Tally", events(Counted))]
pub struct Tally {
    pub count: u64,
}

impl Apply<Counted> for Tally {
    fn apply(&mut self, _: &Counted) {
        self.count += 1;
    }
}

/// A process manager's handler: each scan counted on the parcel's tally by a command whose
/// request id is derived from the scan, so that a scan handed over again counts once.
struct Tallying(Repository<Tally>);

#[async_trait]
impl Handler for Tallying {
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            let request = eventsourcing_kit::request::RequestId::new(&format!("tally {}", event.event_id))?;
            self.0
                .command(event.aggregate_id)
                .request_id(request)
                .run(|tally| {
                    tally.record(Counted {});
                    Ok::<_, Error>(())
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// What the handlers of a group were given: each aggregate's versions in the order handed
/// over, and the aggregates in a batch being handled now.
#[derive(Clone, Default)]
struct Record {
    seen: Arc<Mutex<HashMap<Uuid, Vec<u64>>>>,
    busy: Arc<Mutex<HashSet<Uuid>>>,
    /// Aggregates handed to two batches at once.
    overlaps: Arc<Mutex<Vec<Uuid>>>,
}

impl Record {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Every aggregate's versions, each once, in order: `1..=n` for the `n` it has.
    fn assert_each_once_in_order(&self, expected: &HashMap<Uuid, u64>) {
        let seen = self.seen.lock().unwrap();
        for (id, versions) in expected {
            let got = seen.get(id).cloned().unwrap_or_default();
            assert_eq!(
                got,
                (1..=*versions).collect::<Vec<_>>(),
                "the versions of {id} as handed over"
            );
        }
        assert_eq!(seen.len(), expected.len(), "no other aggregate");
        assert!(
            self.overlaps.lock().unwrap().is_empty(),
            "an aggregate in two batches at once"
        );
    }
}

/// A handler that records what it is given, taking a moment over each batch (an I/O-bound
/// handler), so that batches of other ranges run meanwhile.
struct Recording(Record, Duration);

/// The handlers of a group's ranges: the range that holds slice 0 takes `slow` over each
/// batch, the others 2 ms, so that its checkpoint falls behind theirs.
fn recording(
    record: &Record,
    slow: Duration,
) -> impl Fn(eventsourcing_kit::slice::SliceRange) -> Recording + Send + Sync {
    let record = record.clone();
    move |range| {
        let pause = if range.contains(0) {
            slow
        } else {
            Duration::from_millis(2)
        };
        Recording(record.clone(), pause)
    }
}

#[async_trait]
impl Handler for Recording {
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        let ids: HashSet<Uuid> = events.iter().map(|e| e.aggregate_id).collect();
        {
            let mut busy = self.0.busy.lock().unwrap();
            for id in &ids {
                if !busy.insert(*id) {
                    self.0.overlaps.lock().unwrap().push(*id);
                }
            }
        }
        tokio::time::sleep(self.1).await;
        {
            let mut seen = self.0.seen.lock().unwrap();
            for event in events {
                seen.entry(event.aggregate_id)
                    .or_default()
                    .push(event.aggregate_version);
            }
        }
        let mut busy = self.0.busy.lock().unwrap();
        for id in &ids {
            busy.remove(id);
        }
        Ok(())
    }
}

/// Appends `scans` events to each of `parcels` new parcels from four writers, a few at a
/// time; the versions of each parcel.
async fn traffic(stores: &Stores, parcels: usize, scans: u32) -> HashMap<Uuid, u64> {
    let ids: Vec<Uuid> = (0..parcels).map(|_| Uuid::new_v4()).collect();
    let writers = ids.chunks(parcels.div_ceil(4)).map(|chunk| {
        let repo = stores.repository::<Parcel>();
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            for at in 0..scans {
                for id in &chunk {
                    repo.execute(*id, |p| {
                        p.record(Scanned { at });
                        Ok::<_, Error>(())
                    })
                    .await
                    .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    ids.into_iter().map(|id| (id, u64::from(scans))).collect()
}

/// Waits until `done` holds, at most 60 s.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not done within 60 s");
}

/// A worker process, as far as the group can tell: a `run` of its own, stopped by a signal.
struct Worker {
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Worker {
    fn start(group: &Arc<ConsumerGroup<Subscription>>, workers: usize, record: &Record) -> Self {
        Self::with_slow_range(group, workers, record, Duration::from_millis(2))
    }

    fn with_slow_range(
        group: &Arc<ConsumerGroup<Subscription>>,
        workers: usize,
        record: &Record,
        slow: Duration,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let handlers = recording(record, slow);
        let group = group.clone();
        let run = tokio::spawn(async move {
            group
                .run(workers, handlers, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Worker { stop, run }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.run)
            .await
            .expect("the workers stop within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// A plain subscription hands a batch over again when its range's lease is lost (at least
/// once): its lease is long enough that a loaded machine (tests in parallel on a shared
/// server) does not lose it, so that the checks can ask for every event exactly once.
fn subscription(stores: &Stores, name: &str) -> Subscription {
    stores
        .subscription(name)
        .unwrap()
        .for_aggregate::<Parcel>()
        .batch_size(20)
        .unwrap()
        .poll_interval(Duration::from_millis(20))
        .unwrap()
        .lease(Duration::from_secs(3))
        .unwrap()
}

/// Workers join and leave while events are appended: every event is handed over once, each
/// aggregate's in order and never in two batches at once, and the ranges end up shared.
async fn workers_join_and_leave_under_traffic(stores: Stores) {
    let name = format!("parcels-{}", Uuid::new_v4().simple());
    let group = Arc::new(subscription(&stores, &name).group(8).unwrap());
    let record = Record::default();
    let first = Worker::start(&group, 1, &record);
    let writing = {
        let stores = stores.clone();
        tokio::spawn(async move { traffic(&stores, 40, 15).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Worker::start(&group, 1, &record);
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.stop().await;
    let third = Worker::start(&group, 2, &record);
    let expected = writing.await.unwrap();
    let total: u64 = expected.values().sum();
    until(|| record.count() as u64 >= total).await;
    // The three workers that stayed come to hold a slot each, and every range is held.
    let mut status = None;
    for _ in 0..500 {
        let now = group.status().await.unwrap().expect("the group has a layout");
        let settled = now.workers == 3 && now.ranges.iter().all(|r| r.owner.is_some());
        status = Some(now);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = status.unwrap();
    assert_eq!(status.ranges.len(), 8);
    assert_eq!(status.workers, 3, "{status:?}");
    assert!(status.ranges.iter().all(|r| r.owner.is_some()), "{status:?}");
    second.stop().await;
    third.stop().await;
    record.assert_each_once_in_order(&expected);
    let status = group.status().await.unwrap().unwrap();
    assert!(
        status.ranges.iter().all(|r| r.owner.is_none()),
        "every range let go at the stop"
    );
    assert_eq!(status.workers, 0, "every worker gave its slot up");
}

/// A worker whose run is cancelled (its task aborted, its future dropped mid-batch) leaves
/// its ranges' leases to run out; another worker then takes them over. Every event is handed
/// over at least once, and each aggregate's versions first reach a handler in order.
async fn a_cancelled_worker_is_taken_over(stores: Stores) {
    let name = format!("cancelled-{}", Uuid::new_v4().simple());
    let short = subscription(&stores, &name)
        .lease(Duration::from_millis(500))
        .unwrap();
    let group = Arc::new(short.group(4).unwrap());
    let record = Record::default();
    let first = Worker::start(&group, 1, &record);
    let writing = {
        let stores = stores.clone();
        tokio::spawn(async move { traffic(&stores, 20, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.run.abort();
    assert!(first.run.await.unwrap_err().is_cancelled());
    // Its ranges' leases run out without being let go: the ranges are abandoned.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = group.status().await.unwrap().unwrap();
    assert!(
        status.ranges.iter().all(|r| r.owner.is_none()) && status.ranges.iter().any(|r| r.abandoned),
        "{status:?}"
    );
    let second = Worker::start(&group, 1, &record);
    let expected = writing.await.unwrap();
    let all_seen = || {
        let seen = record.seen.lock().unwrap();
        expected.iter().all(|(id, n)| {
            seen.get(id)
                .is_some_and(|versions| (1..=*n).all(|v| versions.contains(&v)))
        })
    };
    until(all_seen).await;
    second.stop().await;
    let seen = record.seen.lock().unwrap();
    for id in expected.keys() {
        let mut first_seen: Vec<u64> = Vec::new();
        for version in &seen[id] {
            if !first_seen.contains(version) {
                first_seen.push(*version);
            }
        }
        assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "{id}: {:?}", seen[id]);
    }
}

/// The number of ranges changes from 4 to 8 to 2 while events are appended and two workers
/// run, one range far behind the others: no event is handed over twice or skipped.
async fn rescaling_under_traffic(stores: Stores) {
    let name = format!("rescaled-{}", Uuid::new_v4().simple());
    let slow = subscription(&stores, &name).batch_size(5).unwrap();
    let group = Arc::new(slow.group(4).unwrap());
    let record = Record::default();
    let workers = Worker::with_slow_range(&group, 2, &record, Duration::from_millis(40));
    let writing = {
        let stores = stores.clone();
        tokio::spawn(async move { traffic(&stores, 30, 20).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(group.rescale(8).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(group.rescale(2).await.unwrap(), 3);
    let expected = writing.await.unwrap();
    let total: u64 = expected.values().sum();
    until(|| record.count() as u64 >= total).await;
    let status = group.status().await.unwrap().unwrap();
    assert_eq!((status.layout, status.ranges.len()), (3, 2));
    workers.stop().await;
    record.assert_each_once_in_order(&expected);
}

/// A subscription that ran as a single consumer becomes a group from its checkpoint, and a
/// single consumer of the group's name refuses to run.
async fn a_single_consumer_grows_into_a_group(stores: Stores) {
    let name = format!("grown-{}", Uuid::new_v4().simple());
    let before = traffic(&stores, 10, 3).await;
    let single = subscription(&stores, &name);
    let mut handled_alone = 0;
    single
        .catch_up(|batch: &[StoredEvent]| {
            handled_alone += batch.len();
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(handled_alone, 30);

    let group = Arc::new(subscription(&stores, &name).group(4).unwrap());
    let record = Record::default();
    let workers = Worker::start(&group, 1, &record);
    let after = traffic(&stores, 10, 2).await;
    until(|| record.count() >= 20).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    workers.stop().await;
    record.assert_each_once_in_order(&after);
    assert!(before.keys().all(|id| !after.contains_key(id)));

    let refused = subscription(&stores, &name)
        .run(|_: &[StoredEvent]| Ok(()), std::future::pending())
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidConfiguration(_))),
        "{refused:?}"
    );
}

/// A handler that issues commands runs as a group as it is: four ranges, a worker that
/// leaves and one that joins under traffic, and every scan counted once on its tally.
async fn a_process_manager_runs_partitioned_unchanged(stores: Stores) {
    let name = format!("tallies-{}", Uuid::new_v4().simple());
    let group = Arc::new(subscription(&stores, &name).group(4).unwrap());
    let start = |group: &Arc<ConsumerGroup<Subscription>>| {
        let (stop, stopped) = oneshot::channel::<()>();
        let (group, stores) = (group.clone(), stores.clone());
        let run = tokio::spawn(async move {
            let handlers = |_range| Tallying(stores.repository::<Tally>());
            group
                .run(1, handlers, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Worker { stop, run }
    };
    let first = start(&group);
    let writing = {
        let stores = stores.clone();
        tokio::spawn(async move { traffic(&stores, 20, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = start(&group);
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.stop().await;
    let expected = writing.await.unwrap();
    let head = stores.events.head(0).await.unwrap().position;
    assert!(group.wait_for(head, Duration::from_secs(60)).await.unwrap());
    second.stop().await;
    let tallies = stores.repository::<Tally>();
    for (id, scans) in expected {
        assert_eq!(
            tallies.load(id).await.unwrap().state().count,
            scans,
            "the tally of {id}"
        );
    }
}

/// The total of scans per parcel, and every version applied, in a read model in memory.
#[derive(Clone, Default)]
struct Applied(HashMap<Uuid, Vec<u64>>);

impl MemoryProjection for Applied {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        // The range of slice 0 falls behind the others.
        if events.iter().any(|e| {
            eventsourcing_kit::slice::SliceCount::DEFAULT.slice_of(&e.aggregate_type, e.aggregate_id) < 100
        }) {
            std::thread::sleep(Duration::from_millis(15));
        }
        for event in events {
            self.0
                .entry(event.aggregate_id)
                .or_default()
                .push(event.aggregate_version);
        }
        Ok(())
    }
}

/// A projection run as a group and rescaled under traffic: its read model holds every event
/// once, as a full rebuild would.
async fn a_projection_rescaled_under_traffic_applies_each_event_once(stores: Stores) {
    let name = format!("applied-{}", Uuid::new_v4().simple());
    let model = InMemoryReadModel::new(Applied::default());
    let projection = stores
        .projection(&name, model.clone())
        .unwrap()
        .for_aggregate::<Parcel>()
        .batch_size(15)
        .unwrap()
        .poll_interval(Duration::from_millis(20))
        .unwrap()
        .lease(Duration::from_millis(600))
        .unwrap();
    let group = Arc::new(projection.group(3).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = {
        let group = group.clone();
        tokio::spawn(async move {
            group
                .run(2, async move {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let writing = {
        let stores = stores.clone();
        tokio::spawn(async move { traffic(&stores, 24, 20).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    group.rescale(7).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    group.rescale(2).await.unwrap();
    let expected = writing.await.unwrap();
    let head = stores.events.head(0).await.unwrap().position;
    let caught_up = group.wait_for(head, Duration::from_secs(60)).await.unwrap();
    assert!(
        caught_up,
        "the read model caught up to {head}: {:?}",
        group.status().await
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let applied = model.read(|a| a.0.clone());
    for (id, versions) in &expected {
        assert_eq!(
            applied.get(id).cloned().unwrap_or_default(),
            (1..=*versions).collect::<Vec<_>>()
        );
    }
    assert_eq!(applied.len(), expected.len());
}

/// An append wakes only the range that holds its stream, and waiting for its position does not
/// wait for the others: they poll rarely here (every 20 s), and their checkpoints stay where
/// they were.
async fn an_append_wakes_only_its_range(stores: Stores) {
    let name = format!("woken-{}", Uuid::new_v4().simple());
    let group = Arc::new(
        subscription(&stores, &name)
            .poll_interval(Duration::from_secs(60))
            .unwrap()
            .lease(Duration::from_secs(60))
            .unwrap()
            .group(4)
            .unwrap(),
    );
    let repo = stores.repository::<Parcel>();
    let scan = |id: Uuid| {
        let repo = repo.clone();
        async move {
            repo.execute(id, |p| {
                p.record(Scanned { at: 0 });
                Ok::<_, Error>(())
            })
            .await
            .unwrap()
            .position
        }
    };
    let first = scan(Uuid::new_v4()).await;
    let record = Record::default();
    let worker = Worker::start(&group, 1, &record);
    // Every range catches up and moves its checkpoint to the head it read.
    let settled = || async {
        let status = group.status().await.unwrap();
        status.is_some_and(|s| s.ranges.len() == 4 && s.ranges.iter().all(|r| r.checkpoint >= Some(first)))
    };
    let mut tries = 0;
    while !settled().await {
        tries += 1;
        assert!(tries < 3000, "the ranges catch up within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = group.status().await.unwrap().unwrap();
    let id = Uuid::new_v4();
    let position = scan(id).await;
    assert!(
        group.wait_for(position, Duration::from_secs(10)).await.unwrap(),
        "the range of the append hands it over, and the idle ones do not hold the wait back"
    );
    assert_eq!(record.seen.lock().unwrap().get(&id), Some(&vec![1]));
    let slices = stores.slice_parts().await.unwrap().count();
    let after = group.status().await.unwrap().unwrap();
    for (was, is) in before.ranges.iter().zip(&after.ranges) {
        if is.range.contains(slices.slice_of("Parcel", id)) {
            assert!(is.checkpoint >= Some(position), "{is:?}");
        } else {
            assert_eq!(
                is.checkpoint, was.checkpoint,
                "a range that holds none of the append stays asleep"
            );
        }
    }
    worker.stop().await;
}

/// Runs every check, each on new, empty stores from `stores`.
async fn every_check<F: std::future::Future<Output = Stores>>(stores: impl Fn() -> F) {
    workers_join_and_leave_under_traffic(stores().await).await;
    rescaling_under_traffic(stores().await).await;
    a_single_consumer_grows_into_a_group(stores().await).await;
    a_projection_rescaled_under_traffic_applies_each_event_once(stores().await).await;
    a_process_manager_runs_partitioned_unchanged(stores().await).await;
    a_cancelled_worker_is_taken_over(stores().await).await;
    an_append_wakes_only_its_range(stores().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_in_memory() {
    every_check(|| async { Stores::in_memory() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let files = std::sync::atomic::AtomicUsize::new(0);
    every_check(|| {
        let file = files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("sqlite:{}", dir.path().join(format!("groups{file}.db")).display());
        async move { backend::open(&url).await.unwrap() }
    })
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn consumer_groups_on_postgres() {
    let Some(url) = common::postgres_url("consumer_groups_on_postgres") else {
        return;
    };
    let schemas = Mutex::new(Vec::new());
    every_check(|| {
        let scratch = common::ScratchSchema::new(&url, "groups");
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}schema={}", scratch.name);
        schemas.lock().unwrap().push(scratch);
        async move {
            let stores = backend::open(&url).await.unwrap();
            stores.migrate().await.unwrap();
            stores
        }
    })
    .await;
}
