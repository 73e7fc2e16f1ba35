//! The sharded store: the conformance suites through the router over SQLite files and over
//! PostgreSQL databases, consumer groups that read each range from its shard, and the checks
//! of `sharded::open` (the map against the shards) and of `shards:` URLs.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use eventsourcing_kit::backend::sharded::{self, ShardMap};
use eventsourcing_kit::backend::{self, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::slice::{SliceCount, SliceRange};
use eventsourcing_kit::Repository;

/// A directory of this test process's own for SQLite shard files.
fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sharded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A map of three ranges over two shards: shard 0 holds the first quarter and the last half.
fn uneven_map() -> ShardMap {
    let range = |first, last| SliceRange::new(first, last).unwrap();
    ShardMap::new(
        SliceCount::DEFAULT,
        vec![(range(0, 255), 0), (range(256, 511), 1), (range(512, 1023), 0)],
    )
    .unwrap()
}

/// A sharded store over two SQLite files shared by the tests of this process.
async fn on_sqlite_files() -> Stores {
    let mut shards = Vec::new();
    for name in ["shard-a.db", "shard-b.db"] {
        let path = scratch_dir().join(name);
        shards.push(
            backend::open(&format!("sqlite:{}", path.display()))
                .await
                .unwrap(),
        );
    }
    sharded::open(uneven_map(), shards).await.unwrap()
}

mod on_sqlite_files {
    eventsourcing_kit::sharded_store_conformance!(super::on_sqlite_files());
    eventsourcing_kit::stream_lifecycle_conformance!(super::on_sqlite_files());
    eventsourcing_kit::snapshot_store_conformance!(async { super::on_sqlite_files().await.snapshots });
}

/// A sharded store over two PostgreSQL schemas of the tests' database (kept between runs, as
/// the conformance checks' events are), or `None` when the PostgreSQL tests are skipped.
async fn on_postgres(test: &str) -> Option<Stores> {
    let url = common::postgres_url(test)?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut shards = Vec::new();
    for schema in ["es_shard_a", "es_shard_b"] {
        let stores = backend::open(&format!("{url}{separator}schema={schema}"))
            .await
            .unwrap();
        stores.migrate().await.unwrap();
        shards.push(stores);
    }
    Some(
        sharded::open(ShardMap::even(SliceCount::DEFAULT, 2).unwrap(), shards)
            .await
            .unwrap(),
    )
}

mod on_postgres {
    eventsourcing_kit::sharded_store_conformance!(
        #[cfg_attr(not(eventsource_postgres_tests), ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests")]
        optional: super::on_postgres("sharded_store_conformance")
    );
    eventsourcing_kit::snapshot_store_conformance!(
        #[cfg_attr(not(eventsource_postgres_tests), ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests")]
        optional: async { Some(super::on_postgres("sharded_snapshot_conformance").await?.snapshots) }
    );
}

#[event(aggregate = "Parcel")]
pub struct Scanned {
    pub n: u64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Parcel", events(Scanned))]
pub struct Parcel {
    pub scans: u64,
}

impl Apply<Scanned> for Parcel {
    fn apply(&mut self, e: &Scanned) {
        self.scans = e.n;
    }
}

/// Fresh in-memory shards under `map`.
async fn in_memory(map: ShardMap) -> Stores {
    let shards = (0..map.shards()).map(|_| Stores::in_memory()).collect();
    sharded::open(map, shards).await.unwrap()
}

#[tokio::test]
async fn commands_and_snapshots_run_on_the_shard_of_their_aggregate() {
    let stores = in_memory(ShardMap::even(SliceCount::DEFAULT, 4).unwrap()).await;
    let map = stores.shard_map().unwrap().clone();
    let repo = stores.repository_with_snapshots::<Parcel>(SnapshotPolicy::every(2).unwrap());
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        for n in 1..=3 {
            repo.command(*id)
                .run(|parcel| {
                    parcel.record(Scanned { n });
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
        }
    }
    for id in &ids {
        assert_eq!(repo.load(*id).await.unwrap().state().scans, 3);
        let home = map.shard_of("Parcel", *id);
        for (index, shard) in stores.shards().unwrap().iter().enumerate() {
            let version = shard.events.stream_version(*id, "Parcel").await.unwrap();
            let snapshot = shard.snapshots.snapshot_exists(*id, "Parcel").await.unwrap();
            if index == home {
                assert_eq!((version, snapshot), (3, true), "shard {index} holds {id}");
            } else {
                assert_eq!(
                    (version, snapshot),
                    (0, false),
                    "shard {index} holds nothing of {id}"
                );
            }
        }
    }
    assert_eq!(stores.backend_name(), "sharded");
    assert_eq!(stores.stream_versions("Parcel").await.unwrap().len(), ids.len());
}

/// Scans each of `ids` once more, as scan `n`.
async fn scan_all(repo: &Repository<Parcel>, ids: &[Uuid], n: u64) {
    for id in ids {
        scan(repo, *id, n).await.unwrap();
    }
}

/// A consumer group over a sharded store handles every event once, each aggregate's in order,
/// its ranges cut at the map's bounds and every one of them run, by one worker, for the events
/// appended before it started and after; a single consumer runs as such a group; what needs
/// one order of every event is refused.
#[tokio::test]
async fn a_consumer_group_reads_each_range_from_its_shard() {
    let stores = in_memory(uneven_map()).await;
    let repo = stores.repository::<Parcel>();
    let ids: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    scan_all(&repo, &ids, 1).await;
    scan_all(&repo, &ids, 2).await;

    // A single consumer runs as a group of one range, cut at the map's bounds, by one worker.
    let single = stores
        .subscription("parcels-single")
        .unwrap()
        .for_aggregate::<Parcel>();
    let single_seen = Seen::default();
    tokio::time::timeout(
        Duration::from_secs(30),
        single.run(recording(&single_seen), handled(&single_seen, &ids, &[1, 2])),
    )
    .await
    .expect("the single consumer handles every event")
    .unwrap();
    let as_group = stores.subscription("parcels-single").unwrap().group(1).unwrap();
    let status = as_group.status().await.unwrap().unwrap();
    assert_eq!(status.ranges.len(), 3, "{status:?}");
    for refused in [
        single.catch_up(|_: &[StoredEvent]| Ok(())).await.unwrap_err(),
        single.lag().await.unwrap_err(),
    ] {
        assert!(matches!(refused, Error::InvalidConfiguration(_)), "{refused}");
    }
    let at_end = stores
        .subscription("parcels-at-end")
        .unwrap()
        .starting_at_end()
        .group(2)
        .unwrap();
    let refused = at_end
        .run(1, |_| |_: &[StoredEvent]| Ok(()), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::InvalidConfiguration(_)), "{refused}");

    let seen = Seen::default();
    let ranges: Arc<Mutex<Vec<SliceRange>>> = Arc::default();
    let group = stores
        .subscription("parcels")
        .unwrap()
        .lease(Duration::from_secs(1))
        .unwrap()
        .for_aggregate::<Parcel>()
        .group(1)
        .unwrap();
    let refused = group.wait_for(1, Duration::from_millis(1)).await.unwrap_err();
    assert!(matches!(refused, Error::InvalidConfiguration(_)), "{refused}");
    let handlers = |range: SliceRange| {
        ranges.lock().unwrap().push(range);
        recording(&seen)
    };
    let more = async {
        handled(&seen, &ids, &[1, 2]).await;
        // Past a few looks at the group, with every worker settled on its share.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        scan_all(&repo, &ids, 3).await;
        handled(&seen, &ids, &[1, 2, 3]).await;
    };
    tokio::time::timeout(Duration::from_secs(60), group.run(1, handlers, more))
        .await
        .expect("the group handles every event")
        .unwrap();
    let mut taken = ranges.lock().unwrap().clone();
    taken.sort();
    taken.dedup();
    let range = |first, last| SliceRange::new(first, last).unwrap();
    assert_eq!(
        taken,
        [range(0, 255), range(256, 511), range(512, 1023)],
        "one range cut at the map's bounds"
    );
}

#[tokio::test]
async fn open_refuses_a_map_the_shards_do_not_fit() {
    let map = ShardMap::even(SliceCount::DEFAULT, 2).unwrap();
    let too_few = sharded::open(map.clone(), vec![Stores::in_memory()])
        .await
        .unwrap_err();
    assert!(matches!(too_few, Error::InvalidConfiguration(_)), "{too_few}");

    let other_count = backend::open("memory:?slices=512").await.unwrap();
    let refused = sharded::open(map.clone(), vec![Stores::in_memory(), other_count])
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("512 slices"), "{refused}");

    // Events written under one map, the shards then given in the other order.
    let (a, b) = (Stores::in_memory(), Stores::in_memory());
    let stores = sharded::open(map.clone(), vec![a.clone(), b.clone()])
        .await
        .unwrap();
    let repo = stores.repository::<Parcel>();
    for _ in 0..8 {
        repo.command(Uuid::new_v4())
            .run(|parcel| {
                parcel.record(Scanned { n: 1 });
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }
    let swapped = sharded::open(map, vec![b, a]).await.unwrap_err();
    assert!(matches!(swapped, Error::InvalidConfiguration(_)), "{swapped}");
    assert!(swapped.to_string().contains("not the one"), "{swapped}");
}

#[tokio::test]
async fn a_shards_url_opens_the_stores_of_a_map_file() {
    let dir = scratch_dir().join(format!("url-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.db"), dir.join("b.db"));
    let map_file = dir.join("shards.map");
    std::fs::write(
        &map_file,
        format!(
            "# two files\n0-511 sqlite:{}\n512-1023 sqlite:{}\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let stores = backend::open(&format!("shards:{}", map_file.display()))
        .await
        .unwrap();
    assert_eq!(stores.shards().unwrap().len(), 2);
    stores.migrate().await.unwrap();
    let id = Uuid::new_v4();
    stores
        .repository::<Parcel>()
        .command(id)
        .run(|parcel| {
            parcel.record(Scanned { n: 7 });
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(
        stores
            .repository::<Parcel>()
            .load(id)
            .await
            .unwrap()
            .state()
            .scans,
        7
    );
    let durability = stores.durability().await.unwrap();
    assert_eq!(durability.backend, "sharded");
    assert!(durability.settings.iter().any(|s| s.value.ends_with("(shard 1)")));

    let missing = backend::open(&format!("shards:{}", dir.join("none.map").display()))
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::InvalidConfiguration(_)), "{missing}");
}

/// The versions of each aggregate's events a handler was handed, in order.
type Seen = Arc<Mutex<HashMap<Uuid, Vec<u64>>>>;

/// A handler that records in `seen` the events it is handed.
fn recording(seen: &Seen) -> impl FnMut(&[StoredEvent]) -> Result<(), HandlerError> + Send + 'static {
    let seen = seen.clone();
    move |batch| {
        let mut seen = seen.lock().unwrap();
        for event in batch {
            seen.entry(event.aggregate_id)
                .or_default()
                .push(event.aggregate_version);
        }
        Ok(())
    }
}

/// Scans `id` once more, trying again while the store's failure is transient, for up to 30 s.
async fn scan(repo: &Repository<Parcel>, id: Uuid, n: u64) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let outcome = repo
            .command(id)
            .run(|parcel| {
                parcel.record(Scanned { n });
                Ok::<_, Error>(())
            })
            .await;
        match outcome {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("scan {n} of {id} failed, trying again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits up to 30 s until `seen` holds `versions` for each of `ids`.
async fn handled(seen: &Seen, ids: &[Uuid], versions: &[u64]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let seen = seen.lock().unwrap();
            ids.iter()
                .all(|id| seen.get(id).map(Vec::as_slice) == Some(versions))
        };
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the consumer group handled {:?}, not {versions:?} for each of {ids:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shard 1, a PostgreSQL server of the test's own, stops: its aggregates fail with a transient
/// store error while shard 0 (a schema of the shared server) goes on serving commands, loads
/// and its consumer ranges; started again, shard 1 serves again and its ranges catch up.
#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn one_shard_down_is_one_shard_down() {
    let Some(url) = common::postgres_url("one_shard_down_is_one_shard_down") else {
        return;
    };
    let Some(cluster) = common::ScratchCluster::start("") else {
        eprintln!("skipped: no PostgreSQL server programs, or no right to run them as postgres");
        return;
    };
    let scratch = common::ScratchSchema::new(&url, "shard_home");
    let separator = if url.contains('?') { '&' } else { '?' };
    let home = backend::open(&format!(
        "{url}{separator}schema={}&acquire_timeout=2s",
        scratch.name
    ))
    .await
    .unwrap();
    let far = backend::open(&format!("{}?acquire_timeout=2s", cluster.url()))
        .await
        .unwrap();
    let stores = sharded::open(ShardMap::even(SliceCount::DEFAULT, 2).unwrap(), vec![home, far])
        .await
        .unwrap();
    stores.migrate().await.unwrap();
    let map = stores.shard_map().unwrap().clone();
    let on = |shard: usize| loop {
        let id = Uuid::new_v4();
        if map.shard_of("Parcel", id) == shard {
            break id;
        }
    };
    let near: Vec<Uuid> = (0..4).map(|_| on(0)).collect();
    let distant: Vec<Uuid> = (0..4).map(|_| on(1)).collect();
    let repo = stores.repository::<Parcel>();
    for id in near.iter().chain(&distant) {
        scan(&repo, *id, 1).await.unwrap();
    }

    let seen = Seen::default();
    let group = stores
        .subscription("parcel-scans")
        .unwrap()
        .lease(Duration::from_secs(2))
        .unwrap()
        .for_aggregate::<Parcel>()
        .group(2)
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let handlers = |_range: SliceRange| recording(&seen);
            group
                .run(1, handlers, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let all: Vec<Uuid> = near.iter().chain(&distant).copied().collect();
    handled(&seen, &all, &[1]).await;

    cluster.stop();
    for id in &distant {
        let failed = repo.load(*id).await.unwrap_err();
        assert!(failed.is_transient(), "a load on the stopped shard: {failed}");
    }
    for id in &near {
        scan(&repo, *id, 2).await.unwrap();
        assert_eq!(repo.load(*id).await.unwrap().state().scans, 2);
    }
    handled(&seen, &near, &[1, 2]).await;

    cluster.start_again();
    for id in &distant {
        scan(&repo, *id, 2).await.unwrap();
    }
    handled(&seen, &distant, &[1, 2]).await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    drop(scratch);
}

/// Resharding offline: a store of two shards copied into four new ones under another map
/// gives the same streams (compared stream by stream), loads the same aggregates, answers a
/// request id sent again with its first outcome, and a copy run again adds nothing; a store
/// of one database copies into shards the same way.
#[tokio::test]
async fn a_store_is_copied_into_a_new_map_and_compared() {
    let source = in_memory(ShardMap::even(SliceCount::DEFAULT, 2).unwrap()).await;
    let repo = source.repository::<Parcel>();
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    scan_all(&repo, &ids, 1).await;
    let (keyed, request) = (ids[7], Uuid::new_v4());
    repo.command(keyed)
        .request_id(request)
        .run(|parcel| {
            parcel.record(Scanned { n: 2 });
            parcel.record(Scanned { n: 3 });
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    let target = in_memory(uneven_map()).await;
    let mut seen = 0;
    let copied = sharded::copy(&source, &target, |done| seen = done).await.unwrap();
    assert_eq!((copied.events, copied.present, copied.requests), (42, 0, 1));
    assert_eq!(seen, 42, "progress reaches every event");
    let comparison = sharded::compare(&source, &target).await.unwrap();
    assert_eq!((comparison.streams, comparison.events), (40, 42));
    comparison.require_same().unwrap();

    let moved = target.repository::<Parcel>();
    assert_eq!(moved.load(keyed).await.unwrap().state().scans, 3);
    assert_eq!(moved.load(ids[0]).await.unwrap().state().scans, 1);
    let again = moved
        .command(keyed)
        .request_id(request)
        .run(|parcel| {
            parcel.record(Scanned { n: 99 });
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert!(again.repeated, "the request id's first outcome was copied");
    assert_eq!(moved.load(keyed).await.unwrap().state().scans, 3);

    let rerun = sharded::copy(&source, &target, |_| ()).await.unwrap();
    assert_eq!((rerun.events, rerun.present), (0, 42));

    // A difference is found and named.
    scan(&moved, ids[3], 2).await.unwrap();
    let drifted = sharded::compare(&source, &target).await.unwrap();
    assert_eq!(drifted.differences.len(), 1);
    assert_eq!(drifted.differences[0].aggregate_id, ids[3]);
    assert_eq!(drifted.differences[0].target.0, 2);
    assert!(matches!(drifted.require_same(), Err(Error::Corrupt { .. })));

    // One database into shards.
    let single = Stores::in_memory();
    scan_all(&single.repository::<Parcel>(), &ids[..5], 1).await;
    let into = in_memory(ShardMap::even(SliceCount::DEFAULT, 4).unwrap()).await;
    sharded::copy(&single, &into, |_| ()).await.unwrap();
    sharded::compare(&single, &into)
        .await
        .unwrap()
        .require_same()
        .unwrap();
}

/// The same copy between SQLite files: one database into two shards.
#[tokio::test]
async fn a_sqlite_file_is_copied_into_shards_and_compared() {
    let dir = scratch_dir().join(format!("copy-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = |name: &str| format!("sqlite:{}", dir.join(name).display());
    let old = backend::open(&url("old.db")).await.unwrap();
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    scan_all(&old.repository::<Parcel>(), &ids, 1).await;
    scan_all(&old.repository::<Parcel>(), &ids, 2).await;
    let shards = vec![
        backend::open(&url("a.db")).await.unwrap(),
        backend::open(&url("b.db")).await.unwrap(),
    ];
    let new = sharded::open(ShardMap::even(SliceCount::DEFAULT, 2).unwrap(), shards)
        .await
        .unwrap();
    let copied = sharded::copy(&old, &new, |_| ()).await.unwrap();
    assert_eq!(copied.events, 24);
    sharded::compare(&old, &new)
        .await
        .unwrap()
        .require_same()
        .unwrap();
    for id in &ids {
        assert_eq!(
            new.repository::<Parcel>().load(*id).await.unwrap().state().scans,
            2
        );
    }
}

/// A projection's read model: the scans of each parcel, in the order handled.
#[derive(Clone, Default)]
struct Scans(HashMap<Uuid, Vec<u64>>);

impl eventsourcing_kit::projection::MemoryProjection for Scans {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            self.0
                .entry(event.aggregate_id)
                .or_default()
                .push(event.aggregate_version);
        }
        Ok(())
    }
}

/// A projection of a sharded store catches up and rebuilds as a consumer group of one range
/// cut at the map's bounds: every event once, each parcel's in order, and again after the
/// rebuild.
#[tokio::test]
async fn a_projection_of_a_sharded_store_catches_up_and_rebuilds() {
    let stores = in_memory(uneven_map()).await;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    scan_all(&stores.repository::<Parcel>(), &ids, 1).await;
    scan_all(&stores.repository::<Parcel>(), &ids, 2).await;
    let model = eventsourcing_kit::projection::InMemoryReadModel::new(Scans::default());
    let projection = stores.projection("scans", model.clone()).unwrap();
    let caught = tokio::time::timeout(Duration::from_secs(30), projection.catch_up(|_| ()))
        .await
        .expect("the catch-up ends")
        .unwrap();
    assert_eq!(caught.done, 40);
    for id in &ids {
        assert_eq!(model.read(|s| s.0[id].clone()), [1, 2], "{id} once, in order");
    }
    scan_all(&stores.repository::<Parcel>(), &ids, 3).await;
    let rebuilt = tokio::time::timeout(Duration::from_secs(30), projection.rebuild(|_| ()))
        .await
        .expect("the rebuild ends")
        .unwrap();
    assert_eq!(rebuilt.done, 60);
    for id in &ids {
        assert_eq!(
            model.read(|s| s.0[id].clone()),
            [1, 2, 3],
            "{id} once, in order, after the rebuild"
        );
    }
}
