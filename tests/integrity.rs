//! Integrity under faults, driven as a program would drive the library, on every backend:
//! snapshots bound to their history (a shared snapshot store, a planted snapshot later
//! reached, an event store rolled back behind its snapshots), saves cancelled at random
//! points and made again, a sync snapshot write that hangs or is cancelled, and a background
//! queue whose store panics or whose runtime shuts down.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL` (see `tests/postgres_store.rs`);
//! without it they are skipped, unless `EVENTSOURCE_REQUIRE_POSTGRES=1`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{opened, Account, AccountOpened, HangingSnapshotStore, MoneyDeposited, ObservedSnapshotStore};
use eventsourcing_kit::backend::{postgres, sqlite};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::snapshot::DEFAULT_STORE_TIMEOUT;
use eventsourcing_kit::{async_trait, EventEnvelope, EventStore, MissReason, Snapshot, SnapshotStore};

// ---------------------------------------------------------------------------------------
// The backends

/// Two event stores that know nothing of each other, and one snapshot store.
struct Wiring {
    a: Arc<dyn EventStore>,
    b: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
}

fn memory() -> Wiring {
    Wiring {
        a: Arc::new(InMemoryEventStore::new()),
        b: Arc::new(InMemoryEventStore::new()),
        snapshots: Arc::new(InMemorySnapshotStore::new()),
    }
}

async fn sqlite_files(dir: &tempfile::TempDir) -> Wiring {
    let (a, snapshots) = sqlite::open(dir.path().join("a.db")).await.unwrap();
    let b = sqlite::SqliteEventStore::open(dir.path().join("b.db"))
        .await
        .unwrap();
    Wiring {
        a: Arc::new(a),
        b: Arc::new(b),
        snapshots: Arc::new(snapshots),
    }
}

/// Two event stores in schemas of their own on one pool (so loads take the one-statement
/// path that reads snapshot and events together), one snapshot store in the default schema,
/// and the names of the two schemas.
async fn postgres_schemas(pool: &postgres::PgPool, url: &str) -> (Wiring, [common::ScratchSchema; 2]) {
    let scratch = ["integrity_a", "integrity_b"].map(|label| common::ScratchSchema::new(url, label));
    let names = [scratch[0].name.clone(), scratch[1].name.clone()];
    let a = postgres::PostgresEventStore::with_schema(pool.clone(), &names[0]).unwrap();
    let b = postgres::PostgresEventStore::with_schema(pool.clone(), &names[1]).unwrap();
    a.migrate().await.unwrap();
    b.migrate().await.unwrap();
    let snapshots = postgres::PostgresSnapshotStore::new(pool.clone());
    snapshots.migrate().await.unwrap();
    let wiring = Wiring {
        a: Arc::new(a),
        b: Arc::new(b),
        snapshots: Arc::new(snapshots),
    };
    (wiring, scratch)
}

// ---------------------------------------------------------------------------------------
// Snapshots bound to their history

fn repo(events: &Arc<dyn EventStore>, snapshots: &Arc<dyn SnapshotStore>, every: u64) -> Repository<Account> {
    Repository::new(events.clone()).with_snapshots(snapshots.clone(), SnapshotPolicy::every(every).unwrap())
}

/// Saves an account with `deposits` deposits of `amount` each, one save per event.
async fn account(repo: &Repository<Account>, id: Uuid, deposits: usize, amount: i64) {
    let mut root = repo.create_new(id);
    root.record(AccountOpened {
        owner_name: "Ada".into(),
        initial_balance: 0,
    });
    repo.save(&mut root).await.unwrap();
    for _ in 0..deposits {
        root.record(MoneyDeposited { amount });
        repo.save(&mut root).await.unwrap();
    }
}

/// The same aggregate id in two event stores that share one snapshot store: a load from one
/// never uses the snapshot of the other's history, counts the miss, and removes the foreign
/// snapshot so that its own can be written.
async fn a_shared_snapshot_store_never_mixes_histories(w: &Wiring) {
    let id = Uuid::new_v4();
    let (in_a, in_b) = (repo(&w.a, &w.snapshots, 5), repo(&w.b, &w.snapshots, 100));
    account(&in_a, id, 4, 100_000_000).await; // 5 events: snapshot at version 5
    assert_eq!(
        w.snapshots
            .get_snapshot(id, "Account", u32::MAX)
            .await
            .unwrap()
            .unwrap()
            .version,
        5
    );
    account(&in_b, id, 6, 100).await; // 7 events, no snapshot of B's own

    let loaded = in_b.load(id).await.unwrap();
    assert_eq!(loaded.state().balance, 600, "B's own history, not A's snapshot");
    assert_eq!(loaded.version(), 7);
    assert_eq!(in_b.metrics().misses("Account", MissReason::HistoryMismatch), 1);
    assert_eq!(in_b.metrics().hits("Account"), 0);
    assert!(
        w.snapshots
            .get_snapshot(id, "Account", u32::MAX)
            .await
            .unwrap()
            .is_none(),
        "the foreign snapshot is removed"
    );

    let snapshot = in_b.create_snapshot(&loaded).await.unwrap();
    assert_eq!(snapshot.version, 7);
    let again = in_b.load(id).await.unwrap();
    assert_eq!(again.state(), loaded.state());
    assert_eq!(in_b.metrics().hits("Account"), 1, "B's own snapshot is used");
    let from_a = in_a.load(id).await.unwrap();
    assert_eq!(
        from_a.state().balance,
        400_000_000,
        "A is not fooled by B's either"
    );
}

/// A snapshot planted beyond the stream's head is a miss, and does not come true when real
/// saves reach its version: it is removed at the first miss, and a correct snapshot takes
/// its place.
async fn a_planted_snapshot_is_never_used_once_reached(w: &Wiring) {
    for planted_event in [None, Some(Uuid::new_v4())] {
        let id = Uuid::new_v4();
        let repo = repo(&w.a, &w.snapshots, 8);
        account(&repo, id, 5, 100).await; // 6 events
        let planted = Snapshot::new(
            id,
            "Account",
            8,
            1,
            serde_json::to_string(&Account {
                owner_name: "Mallory".into(),
                balance: 100_000_000_000,
                transaction_count: 7,
            })
            .unwrap(),
        )
        .with_event_id(planted_event);
        assert!(w.snapshots.save_snapshot(&planted).await.unwrap());
        assert_eq!(repo.load(id).await.unwrap().state().balance, 500);
        assert_eq!(repo.metrics().misses("Account", MissReason::BeyondStreamHead), 1);

        let mut root = repo.load(id).await.unwrap();
        for _ in 0..2 {
            root.record(MoneyDeposited { amount: 100 });
            repo.save(&mut root).await.unwrap();
        }
        let stored = w
            .snapshots
            .get_snapshot(id, "Account", u32::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.version, 8);
        assert_eq!(
            stored.event_id,
            root.last_event_id(),
            "the correct snapshot took its place"
        );
        let loaded = repo.load(id).await.unwrap();
        assert_eq!(loaded.state().balance, 700);
        assert_eq!(loaded.state().owner_name, "Ada");
        assert_eq!(repo.metrics().hits("Account"), 1);
    }
}

/// An event store restored from a backup older than its snapshot store, then written on: the
/// snapshots of the lost history are never used.
async fn an_event_store_rolled_back_behind_its_snapshots(w: &Wiring) {
    let id = Uuid::new_v4();
    let before = repo(&w.a, &w.snapshots, 10);
    account(&before, id, 9, 1_000).await; // 10 events: snapshot at 10, balance 9_000
                                          // The backup: the first 6 events, copied into the other store.
    let backup: Vec<_> = {
        use futures_util::TryStreamExt;
        let events: Vec<eventsourcing_kit::StoredEvent> =
            w.a.read_stream(id, "Account", 0).try_collect().await.unwrap();
        events.into_iter().take(6).map(|e| e.envelope).collect()
    };
    w.b.append(id, "Account", 0, &backup).await.unwrap();
    // New events take the versions the lost ones had, and pass the snapshot's version.
    let written: Vec<_> = (7..=12)
        .map(|version| {
            EventEnvelope::new(
                id,
                "Account",
                version,
                &common::AccountEvent::from(MoneyDeposited { amount: 100 }),
            )
            .unwrap()
        })
        .collect();
    w.b.append(id, "Account", 6, &written).await.unwrap();
    let after = repo(&w.b, &w.snapshots, 1000);
    let loaded = after.load(id).await.unwrap();
    assert_eq!(loaded.version(), 12);
    assert_eq!(
        loaded.state().balance,
        5_600,
        "the restored history, not the snapshot of the lost one"
    );
    assert_eq!(after.metrics().misses("Account", MissReason::HistoryMismatch), 1);
    assert_eq!(after.metrics().hits("Account"), 0);
}

async fn every_binding_check(w: &Wiring) {
    a_shared_snapshot_store_never_mixes_histories(w).await;
    a_planted_snapshot_is_never_used_once_reached(w).await;
    an_event_store_rolled_back_behind_its_snapshots(w).await;
}

#[tokio::test]
async fn snapshots_are_bound_to_their_history_in_memory() {
    every_binding_check(&memory()).await;
}

#[tokio::test]
async fn snapshots_are_bound_to_their_history_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    every_binding_check(&sqlite_files(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn snapshots_are_bound_to_their_history_on_postgres() {
    let Some(pool) = common::postgres_pool("snapshots_are_bound_to_their_history_on_postgres", 8).await
    else {
        return;
    };
    let url = common::postgres_url("snapshots_are_bound_to_their_history_on_postgres").unwrap();
    // Dropped at the end, also when a check fails.
    let (wiring, _scratch) = postgres_schemas(&pool, &url).await;
    every_binding_check(&wiring).await;
}

// ---------------------------------------------------------------------------------------
// Saves cancelled at random points, then made again

/// A small deterministic generator, so a failing round can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Saves deposits one by one, each first under a deadline drawn at random (so many are
/// cancelled part way, some after their commit), then made again until it succeeds. Every
/// retry must succeed: never `InvalidInput`, never a `Conflict` for its own batch; and the
/// stream ends with each deposit exactly once.
async fn cancelled_saves_made_again(
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    rounds: usize,
    max_micros: u64,
) {
    let repo = Repository::<Account>::new(events.clone())
        .with_snapshots(snapshots, SnapshotPolicy::every(3).unwrap());
    let id = Uuid::new_v4();
    let mut root = opened(id, 0);
    repo.save(&mut root).await.unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut cancelled, mut committed_anyway) = (0, 0);
    for round in 0..rounds {
        root.record(MoneyDeposited { amount: 100 });
        let deadline = Duration::from_micros(rng.below(max_micros));
        if tokio::time::timeout(deadline, repo.save(&mut root))
            .await
            .is_err()
        {
            cancelled += 1;
            let before = events.stream_version(id, "Account").await.unwrap();
            if before == root.version() {
                committed_anyway += 1;
            }
        }
        // The retry: the same root, the same event ids.
        match repo.save(&mut root).await {
            Ok(version) => assert_eq!(version, round as u64 + 2, "round {round}"),
            Err(e) => panic!("round {round}: the save made again failed: {e:?}"),
        }
    }
    let loaded = repo.load(id).await.unwrap();
    assert_eq!(loaded.version(), rounds as u64 + 1, "each deposit stored once");
    assert_eq!(loaded.state().balance, 10_000 + 100 * rounds as i64);
    let replayed = Repository::<Account>::new(events).load(id).await.unwrap();
    assert_eq!(
        replayed.state(),
        loaded.state(),
        "the snapshots agree with the events"
    );
    println!("{rounds} rounds: {cancelled} saves cancelled, {committed_anyway} of them committed before the cancellation");
    assert!(cancelled > 0, "the deadlines cancel some saves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_cancelled_at_random_points_are_made_again_exactly_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (events, snapshots) = sqlite::open(dir.path().join("cancel.db")).await.unwrap();
    cancelled_saves_made_again(Arc::new(events), Arc::new(snapshots), 400, 600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn saves_cancelled_at_random_points_are_made_again_exactly_once_on_postgres() {
    let Some(pool) = common::postgres_pool(
        "saves_cancelled_at_random_points_are_made_again_exactly_once_on_postgres",
        8,
    )
    .await
    else {
        return;
    };
    let events = postgres::PostgresEventStore::new(pool.clone());
    events.migrate().await.unwrap();
    let snapshots = events.snapshot_store();
    cancelled_saves_made_again(Arc::new(events), Arc::new(snapshots), 400, 2_000).await;
}

// ---------------------------------------------------------------------------------------
// Sync snapshot writes that hang or are cancelled

#[tokio::test]
async fn a_hanging_snapshot_store_cannot_hang_a_save_by_default() {
    assert_eq!(
        SnapshotPolicy::every(1).unwrap().store_timeout(),
        Some(DEFAULT_STORE_TIMEOUT)
    );
    assert_eq!(
        SnapshotPolicy::manual().store_timeout(),
        Some(DEFAULT_STORE_TIMEOUT)
    );
    assert_eq!(
        SnapshotPolicy::every(1)
            .unwrap()
            .without_store_timeout()
            .store_timeout(),
        None
    );

    // The default bound in effect: the save returns after it, its snapshot given up.
    let events = InMemoryEventStore::new();
    let repo = Repository::<Account>::new(events.clone())
        .with_snapshots(HangingSnapshotStore, SnapshotPolicy::every(1).unwrap());
    let mut root = opened(Uuid::new_v4(), 2);
    let save = tokio::spawn(async move {
        let version = repo.save(&mut root).await;
        (version, repo)
    });
    let (version, repo) = tokio::time::timeout(Duration::from_secs(60), save)
        .await
        .expect("the save returns once the snapshot write is given up")
        .unwrap();
    assert_eq!(version.unwrap(), 3);
    assert_eq!(repo.metrics().write_failures("Account"), 1);
    assert_eq!(events.len(), 3);
}

#[tokio::test]
async fn a_save_cancelled_during_its_snapshot_write_has_saved() {
    let events = InMemoryEventStore::new();
    let repo = Repository::<Account>::new(events.clone()).with_snapshots(
        HangingSnapshotStore,
        SnapshotPolicy::every(1).unwrap().without_store_timeout(),
    );
    let mut root = opened(Uuid::new_v4(), 1);
    let cancelled = tokio::time::timeout(Duration::from_millis(50), repo.save(&mut root)).await;
    assert!(
        cancelled.is_err(),
        "the snapshot write hangs, so the save is cancelled in it"
    );
    assert!(!root.has_pending_events(), "the events are saved");
    assert_eq!(events.len(), 2);
    assert_eq!(
        repo.save(&mut root).await.unwrap(),
        2,
        "saving again has nothing to do"
    );
}

// ---------------------------------------------------------------------------------------
// The background queue

/// A snapshot store that panics on its first `panics` writes, then stores.
#[derive(Default)]
struct PanickingSnapshotStore {
    inner: InMemorySnapshotStore,
    panics: AtomicUsize,
    /// How many writes, from the first, wait a while before they store.
    slow: AtomicUsize,
}

/// Takes one from `counter` if it is above zero; whether it did.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl SnapshotStore for PanickingSnapshotStore {
    async fn get_snapshot(
        &self,
        id: Uuid,
        t: &str,
        schema: u32,
    ) -> eventsourcing_kit::Result<Option<Snapshot>> {
        self.inner.get_snapshot(id, t, schema).await
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> eventsourcing_kit::Result<bool> {
        if take_one(&self.slow) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if take_one(&self.panics) {
            panic!("the snapshot store broke");
        }
        self.inner.save_snapshot(snapshot).await
    }
    async fn delete_snapshot(&self, id: Uuid, t: &str) -> eventsourcing_kit::Result<bool> {
        self.inner.delete_snapshot(id, t).await
    }
    async fn snapshot_exists(&self, id: Uuid, t: &str) -> eventsourcing_kit::Result<bool> {
        self.inner.snapshot_exists(id, t).await
    }
    async fn delete_snapshots_by_type(&self, t: &str, below: Option<u32>) -> eventsourcing_kit::Result<u64> {
        self.inner.delete_snapshots_by_type(t, below).await
    }
}

fn background(store: impl SnapshotStore + 'static) -> Repository<Account> {
    let policy = SnapshotPolicy::every(1)
        .unwrap()
        .with_mode(SnapshotMode::Background);
    Repository::new(InMemoryEventStore::new()).with_snapshots(store, policy)
}

async fn save_new_accounts(repo: &Repository<Account>, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let mut root = opened(Uuid::new_v4(), 0);
        repo.save(&mut root).await.unwrap();
        ids.push(root.id());
    }
    ids
}

#[tokio::test]
async fn the_background_queue_survives_a_panicking_store() {
    let store = Arc::new(PanickingSnapshotStore {
        panics: AtomicUsize::new(1),
        ..Default::default()
    });
    let repo = background(store.clone());
    save_new_accounts(&repo, 1).await;
    assert_eq!(repo.await_pending_snapshots().await, 0, "the one write panicked");
    assert_eq!(repo.metrics().write_failures("Account"), 1);

    let ids = save_new_accounts(&repo, 20).await;
    assert_eq!(repo.await_pending_snapshots().await, 20);
    for id in ids {
        assert!(store.inner.snapshot_exists(id, "Account").await.unwrap());
    }
}

#[test]
fn the_background_queue_survives_the_runtime_of_its_worker() {
    let store = Arc::new(PanickingSnapshotStore {
        slow: AtomicUsize::new(1),
        ..Default::default()
    });
    let repo = background(store.clone());
    // The first runtime schedules a snapshot and shuts down while its worker writes it.
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        save_new_accounts(&repo, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    drop(first);

    // A clone of the repository lives on in another runtime.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let written = second.block_on(async {
        let ids = save_new_accounts(&repo, 20).await;
        let written = repo.await_pending_snapshots().await;
        for id in ids {
            assert!(store.inner.snapshot_exists(id, "Account").await.unwrap());
        }
        written
    });
    assert_eq!(written, 20, "every later snapshot is written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_pending_snapshots_waits_for_what_was_scheduled_before_it() {
    let store = ObservedSnapshotStore::default();
    let repo = background(store.clone());
    store.close_gate();
    let ids = save_new_accounts(&repo, 10).await;

    // Steady traffic from another task while two callers wait: they wait for the ten
    // scheduled before them, not for the queue to be empty.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (first, second, traffic) = tokio::join!(
        repo.await_pending_snapshots(),
        repo.await_pending_snapshots(),
        async {
            // Both callers are registered once they have been polled, before this runs.
            let traffic = tokio::spawn({
                let (repo, stop) = (repo.clone(), stop.clone());
                async move {
                    while !stop.load(Ordering::SeqCst) {
                        save_new_accounts(&repo, 1).await;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            store.open_gate();
            Some(traffic)
        }
    );
    assert_eq!(
        (first, second),
        (10, 10),
        "each caller counts the ten it waited for"
    );
    for id in &ids {
        assert!(store.inner.snapshot_exists(*id, "Account").await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    traffic.unwrap().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Whatever a save accepts, a load accepts

#[event(aggregate = "Nested")]
pub struct Grew {
    pub value: serde_json::Value,
}

/// Its state nests one level deeper than its event: some values fit in an event and not in
/// a snapshot.
#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(name = "Nested", events(Grew))]
pub struct Nested {
    pub history: Vec<serde_json::Value>,
}

impl Apply<Grew> for Nested {
    fn apply(&mut self, e: &Grew) {
        self.history.push(e.value.clone());
    }
}

/// A JSON value `depth` levels deep, its levels arrays or objects as `shape` says.
fn nested_value(depth: usize, shape: &[bool]) -> serde_json::Value {
    let mut value = serde_json::json!("leaf");
    for level in 0..depth {
        value = if shape[level % shape.len()] {
            serde_json::Value::Array(vec![value, serde_json::json!(level)])
        } else {
            serde_json::json!({ "k": value })
        };
    }
    value
}

async fn save_then_load(
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    value: serde_json::Value,
    depth: usize,
) {
    let repo = Repository::<Nested>::new(events.clone())
        .with_snapshots(snapshots, SnapshotPolicy::every(1).unwrap());
    let id = Uuid::new_v4();
    let mut root = repo.create_new(id);
    root.record(Grew { value });
    // serde_json refuses the 128th level; the event's payload wraps the value in one object,
    // the snapshot's state in an object and an array.
    match repo.save(&mut root).await {
        Ok(_) => {
            assert!(depth < 127, "a value {depth} levels deep was saved");
            let loaded = repo
                .load(id)
                .await
                .unwrap_or_else(|e| panic!("saved at depth {depth}, cannot load: {e}"));
            assert_eq!(loaded.state(), root.state());
            let snapshotted = repo.metrics().written("Nested") == 1;
            assert_eq!(
                snapshotted,
                depth < 126,
                "snapshot of a state {} levels deep",
                depth + 2
            );
            assert_eq!(repo.metrics().write_failures("Nested"), u64::from(!snapshotted));
        }
        Err(Error::Serialization { .. }) => {
            assert!(depth >= 127, "a value {depth} levels deep was refused");
            assert_eq!(
                events.stream_version(id, "Nested").await.unwrap(),
                0,
                "nothing is written"
            );
            assert!(root.has_pending_events());
        }
        Err(e) => panic!("depth {depth}: {e:?}"),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    #[test]
    fn every_saved_value_loads_and_what_would_not_is_refused(
        depth in proptest::prop_oneof![0..140usize, 120..135usize],
        shape in proptest::collection::vec(proptest::bool::ANY, 1..5),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let value = nested_value(depth, &shape);
            save_then_load(Arc::new(InMemoryEventStore::new()), Arc::new(InMemorySnapshotStore::new()), value.clone(), depth).await;
            let (events, snapshots) = sqlite::open(":memory:").await.unwrap();
            save_then_load(Arc::new(events), Arc::new(snapshots), value, depth).await;
        });
    }
}
