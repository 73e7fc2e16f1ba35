//! Schema evolution on every backend: events of older versions and older names upcast on
//! every read path, a version newer than the program is a typed error, snapshots of an older
//! schema migrate, two schema versions side by side keep their own snapshots, `verify` finds
//! an `Apply` change that no shape shows, and the schema lock names a forgotten bump.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eventsourcing_kit::backend::{memory, postgres, sqlite};
use eventsourcing_kit::evolution::SchemaLock;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::{EventEnvelope, MissReason, Snapshot};
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;

/// Opened under its old name `Opened` until it was renamed.
#[event(aggregate = "Wallet", aliases("Opened"))]
pub struct WalletOpened {
    pub owner: String,
}

/// Version 1 stored `{"cents": 150}`, version 2 `{"amount": "1.50"}`, version 3 is this.
#[event(aggregate = "Wallet", version = 3, upcast(1 => json(deposit_v1_to_v2), 2 => DepositedV2))]
pub struct Deposited {
    pub amount_cents: i64,
}

/// The second version of `Deposited`, kept as its own type.
#[derive(Deserialize)]
pub struct DepositedV2 {
    pub amount: String,
}

impl TryFrom<DepositedV2> for Deposited {
    type Error = String;

    fn try_from(v2: DepositedV2) -> Result<Self, String> {
        let (units, cents) = v2.amount.split_once('.').unwrap_or((&v2.amount, "00"));
        let parse = |s: &str| {
            s.parse::<i64>()
                .map_err(|e| format!("amount {:?}: {e}", v2.amount))
        };
        Ok(Deposited {
            amount_cents: parse(units)? * 100 + parse(cents)?,
        })
    }
}

fn deposit_v1_to_v2(v1: Value) -> Result<Value, String> {
    let cents = v1["cents"].as_i64().ok_or("`cents` is not an integer")?;
    Ok(json!({ "amount": format!("{}.{:02}", cents / 100, cents % 100) }))
}

/// The wallet's state at schema version 2: schema 1 kept the balance as a float of units.
#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(name = "Wallet", schema_version = 2, migrate(1 => wallet_v1_to_v2), events(WalletOpened, Deposited))]
pub struct Wallet {
    pub owner: String,
    pub balance_cents: i64,
}

fn wallet_v1_to_v2(mut v1: Value) -> Result<Value, String> {
    let balance = v1["balance"].as_f64().ok_or("`balance` is not a number")?;
    let fields = v1.as_object_mut().ok_or("the state is not an object")?;
    fields.remove("balance");
    fields.insert("balance_cents".into(), json!((balance * 100.0).round() as i64));
    Ok(v1)
}

impl Apply<WalletOpened> for Wallet {
    fn apply(&mut self, e: &WalletOpened) {
        self.owner = e.owner.clone();
    }
}

impl Apply<Deposited> for Wallet {
    fn apply(&mut self, e: &Deposited) {
        self.balance_cents += e.amount_cents;
    }
}

/// The wallet as the previous release had it, still running during a rolling deploy.
#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename = "Wallet")]
#[aggregate(name = "Wallet", schema_version = 1, events(WalletOpened, Deposited))]
pub struct WalletV1 {
    pub owner: String,
    pub balance: f64,
}

impl Apply<WalletOpened> for WalletV1 {
    fn apply(&mut self, e: &WalletOpened) {
        self.owner = e.owner.clone();
    }
}

impl Apply<Deposited> for WalletV1 {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount_cents as f64 / 100.0;
    }
}

/// The stores of one backend, each test on stores of its own.
struct Backend {
    name: &'static str,
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    /// The PostgreSQL schema of the test, dropped when it is done.
    schema: Option<(postgres::PgPool, String)>,
    /// Drops the schema also when the test fails.
    _scratch: Option<common::ScratchSchema>,
}

impl Backend {
    async fn done(self) {
        if let Some((pool, schema)) = self.schema {
            sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
}

async fn backends(test: &str) -> Vec<Backend> {
    let mut all = vec![Backend {
        name: "memory",
        events: Arc::new(memory::InMemoryEventStore::new()),
        snapshots: Arc::new(memory::InMemorySnapshotStore::new()),
        schema: None,
        _scratch: None,
    }];
    let (events, snapshots) = sqlite::open(":memory:").await.unwrap();
    all.push(Backend {
        name: "sqlite",
        events: Arc::new(events),
        snapshots: Arc::new(snapshots),
        schema: None,
        _scratch: None,
    });
    if let Some(pool) = common::postgres_pool(test, 4).await {
        let scratch = common::ScratchSchema::new(&common::postgres_url(test).unwrap(), "evolution");
        let schema = scratch.name.clone();
        let events = postgres::PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        events.migrate().await.unwrap();
        let snapshots = postgres::PostgresSnapshotStore::with_schema(pool.clone(), &schema).unwrap();
        all.push(Backend {
            name: "postgres",
            events: Arc::new(events),
            snapshots: Arc::new(snapshots),
            schema: Some((pool, schema)),
            _scratch: Some(scratch),
        });
    }
    all
}

fn stored(id: Uuid, version: u64, event_type: &str, event_version: u32, payload: Value) -> EventEnvelope {
    EventEnvelope::from_json(
        id,
        "Wallet",
        version,
        event_type,
        event_version,
        payload.to_string(),
    )
}

/// A wallet written by four releases: opened under the old name, then a deposit of each version.
fn history(id: Uuid) -> Vec<EventEnvelope> {
    vec![
        stored(id, 1, "Opened", 1, json!({ "owner": "Ada" })),
        stored(id, 2, "Deposited", 1, json!({ "cents": 150 })),
        stored(id, 3, "Deposited", 2, json!({ "amount": "2.25" })),
        stored(id, 4, "Deposited", 3, json!({ "amount_cents": 100 })),
    ]
}

#[tokio::test]
async fn old_versions_and_old_names_upcast_on_every_read_path() {
    for backend in backends("old_versions_and_old_names_upcast_on_every_read_path").await {
        let id = Uuid::new_v4();
        backend
            .events
            .append(id, "Wallet", 0, &history(id))
            .await
            .unwrap();

        // The repository's load.
        let repo = Repository::<Wallet>::new(backend.events.clone());
        let wallet = repo.load(id).await.unwrap();
        assert_eq!(
            wallet.state(),
            &Wallet {
                owner: "Ada".into(),
                balance_cents: 475
            },
            "{}",
            backend.name
        );

        // The feed, decoded as a subscription's typed handler does.
        let feed: Vec<StoredEvent> = backend.events.read_all(0).try_collect().await.unwrap();
        let mut decoded = Vec::new();
        let mut handler = Typed::<Wallet, _>::new(|_: &StoredEvent, event: WalletEvent| {
            decoded.push(event);
            Ok(())
        });
        handler.handle(&feed).await.unwrap();
        let amounts: Vec<i64> = decoded
            .iter()
            .filter_map(|e| match e {
                WalletEvent::Deposited(d) => Some(d.amount_cents),
                WalletEvent::WalletOpened(_) => None,
            })
            .collect();
        assert_eq!(
            (decoded.len(), amounts),
            (4, vec![150, 225, 100]),
            "{}",
            backend.name
        );

        // New events are written under the current name and version.
        let mut wallet = wallet;
        wallet.record(Deposited { amount_cents: 5 });
        repo.save(&mut wallet).await.unwrap();
        let last = backend
            .events
            .read_stream(id, "Wallet", 4)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert_eq!((&*last[0].event_type, last[0].event_version), ("Deposited", 3));
        backend.done().await;
    }
}

#[tokio::test]
async fn a_version_newer_than_the_program_is_a_typed_error_naming_both() {
    for backend in backends("a_version_newer_than_the_program_is_a_typed_error_naming_both").await {
        let id = Uuid::new_v4();
        let mut events = history(id);
        events.push(stored(
            id,
            5,
            "Deposited",
            4,
            json!({ "amount_cents": 1, "currency": "EUR" }),
        ));
        backend.events.append(id, "Wallet", 0, &events).await.unwrap();
        let err = Repository::<Wallet>::new(backend.events.clone())
            .load(id)
            .await
            .unwrap_err();
        match &err {
            Error::UnknownEventVersion {
                aggregate_type,
                event_type,
                stored,
                current,
            } => assert_eq!(
                (aggregate_type.as_str(), event_type.as_str(), *stored, *current),
                ("Wallet", "Deposited", 4, 3)
            ),
            other => panic!("{}: expected UnknownEventVersion, got {other:?}", backend.name),
        }
        let message = err.to_string();
        assert!(
            message.contains("version 4") && message.contains("1 to 3"),
            "{message}"
        );
        assert!(matches!(
            WalletEvent::decode("Deposited", 0, "{}"),
            Err(Error::UnknownEventVersion { stored: 0, .. })
        ));
        backend.done().await;
    }
}

#[test]
fn a_failing_upcast_is_a_typed_error_at_its_step() {
    match WalletEvent::decode("Deposited", 1, r#"{"cents": "many"}"#) {
        Err(Error::Upcast {
            what,
            from_version,
            reason,
        }) => {
            assert_eq!((what.as_str(), from_version), ("event Wallet.Deposited", 1));
            assert!(reason.contains("cents"), "{reason}");
        }
        other => panic!("expected Upcast, got {other:?}"),
    }
    match WalletEvent::decode("Deposited", 2, r#"{"amount": "1.x"}"#) {
        Err(Error::Upcast {
            from_version: 2,
            reason,
            ..
        }) => assert!(reason.contains("1.x"), "{reason}"),
        other => panic!("expected Upcast, got {other:?}"),
    }
    // A payload that does not even have the old version's shape.
    assert!(matches!(
        WalletEvent::decode("Deposited", 2, r#"{"value": 1}"#),
        Err(Error::Serialization { .. })
    ));
}

/// The wallet's events, saved through a repository, and the id of its last event.
async fn saved_wallet(events: &Arc<dyn EventStore>, deposits: i64) -> (Uuid, Uuid) {
    let repo = Repository::<Wallet>::new(events.clone());
    let id = Uuid::new_v4();
    let mut wallet = repo.create_new(id);
    wallet.record(WalletOpened { owner: "Ada".into() });
    for _ in 0..deposits {
        wallet.record(Deposited { amount_cents: 110 });
    }
    repo.save(&mut wallet).await.unwrap();
    let last: Vec<StoredEvent> = events.read_stream(id, "Wallet", 0).try_collect().await.unwrap();
    (id, last.last().unwrap().event_id)
}

fn v1_snapshot(id: Uuid, version: u64, event_id: Uuid, state: Value) -> Snapshot {
    Snapshot::new(id, "Wallet", version, 1, state.to_string()).with_event_id(Some(event_id))
}

#[tokio::test]
async fn a_snapshot_of_an_older_schema_migrates_and_is_counted_apart() {
    for backend in backends("a_snapshot_of_an_older_schema_migrates_and_is_counted_apart").await {
        let (id, last) = saved_wallet(&backend.events, 3).await;
        // A planted schema 1 state that differs from the replay, so its use is visible.
        let planted = v1_snapshot(id, 4, last, json!({ "owner": "Ada", "balance": 9.99 }));
        backend.snapshots.save_snapshot(&planted).await.unwrap();
        let repo = Repository::<Wallet>::new(backend.events.clone())
            .with_snapshots(backend.snapshots.clone(), SnapshotPolicy::manual());
        let wallet = repo.load(id).await.unwrap();
        assert_eq!(
            wallet.state().balance_cents,
            999,
            "{}: the migrated state is used",
            backend.name
        );
        let metrics = repo.metrics();
        assert_eq!(
            (
                metrics.migrated("Wallet"),
                metrics.hits("Wallet"),
                metrics.total_misses("Wallet")
            ),
            (1, 0, 0),
            "{}",
            backend.name
        );

        // A state the migration refuses: a counted miss, and the load equals the replay.
        backend.snapshots.delete_snapshot(id, "Wallet").await.unwrap();
        let broken = v1_snapshot(id, 4, last, json!({ "owner": "Ada", "balance": "lots" }));
        backend.snapshots.save_snapshot(&broken).await.unwrap();
        let wallet = repo.load(id).await.unwrap();
        assert_eq!(wallet.state().balance_cents, 330, "{}", backend.name);
        assert_eq!(
            metrics.misses("Wallet", MissReason::MigrationFailed),
            1,
            "{}",
            backend.name
        );
        backend.done().await;
    }
}

#[tokio::test]
async fn two_schema_versions_side_by_side_keep_their_own_snapshots() {
    for backend in backends("two_schema_versions_side_by_side_keep_their_own_snapshots").await {
        let policy = SnapshotPolicy::every(2).unwrap().with_mode(SnapshotMode::Sync);
        let old = Repository::<WalletV1>::new(backend.events.clone())
            .with_snapshots(backend.snapshots.clone(), policy);
        let new = Repository::<Wallet>::new(backend.events.clone())
            .with_snapshots(backend.snapshots.clone(), policy);
        let (id, _) = saved_wallet(&backend.events, 1).await;
        // The old release and the new one take turns on the same wallet, two deposits each,
        // so that every save takes a snapshot.
        for round in 0..10 {
            let mut wallet = old.load(id).await.unwrap();
            wallet.record(Deposited { amount_cents: 100 });
            wallet.record(Deposited { amount_cents: 100 });
            old.save(&mut wallet).await.unwrap();
            let mut wallet = new.load(id).await.unwrap();
            wallet.record(Deposited { amount_cents: 100 });
            wallet.record(Deposited { amount_cents: 100 });
            new.save(&mut wallet).await.unwrap();
            if round == 0 {
                continue;
            }
            let (v1, v2) = (
                backend
                    .snapshots
                    .get_snapshot(id, "Wallet", 1)
                    .await
                    .unwrap()
                    .unwrap(),
                backend
                    .snapshots
                    .get_snapshot(id, "Wallet", 2)
                    .await
                    .unwrap()
                    .unwrap(),
            );
            assert_eq!(
                (v1.schema_version, v2.schema_version),
                (1, 2),
                "{} round {round}",
                backend.name
            );
        }
        let full = Repository::<Wallet>::new(backend.events.clone())
            .load(id)
            .await
            .unwrap();
        assert_eq!(
            new.load(id).await.unwrap().state(),
            full.state(),
            "{}",
            backend.name
        );
        assert_eq!(full.state().balance_cents, 110 + 40 * 100);
        // Neither thrashed the other: after the first round every load started from a snapshot
        // of its own schema (the new release's first load migrated the old one's).
        let (old_metrics, new_metrics) = (old.metrics(), new.metrics());
        assert_eq!(
            old_metrics.total_misses("Wallet"),
            1,
            "{}: {:?}",
            backend.name,
            old_metrics.miss_counts()
        );
        assert_eq!(
            new_metrics.total_misses("Wallet"),
            0,
            "{}: {:?}",
            backend.name,
            new_metrics.miss_counts()
        );
        assert_eq!(new_metrics.migrated("Wallet"), 1, "{}", backend.name);
        // (The new release's last load above is its tenth hit.)
        assert_eq!(
            (old_metrics.hits("Wallet"), new_metrics.hits("Wallet")),
            (9, 10),
            "{}",
            backend.name
        );
        // Once every instance runs the new release, the bulk invalidation cleans up.
        assert_eq!(
            backend
                .snapshots
                .delete_snapshots_by_type("Wallet", Some(2))
                .await
                .unwrap(),
            1
        );
        assert!(backend
            .snapshots
            .get_snapshot(id, "Wallet", 1)
            .await
            .unwrap()
            .is_none());
        backend.done().await;
    }
}

/// How many points a reading is worth: changed by a "deploy" below, without a schema bump.
static POINTS_PER_READING: AtomicU64 = AtomicU64::new(1);

#[event(aggregate = "Meter")]
pub struct Read {
    pub value: u64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Meter", events(Read))]
pub struct Meter {
    pub readings: u64,
    pub points: u64,
}

impl Apply<Read> for Meter {
    fn apply(&mut self, e: &Read) {
        self.readings += 1;
        self.points += e.value * POINTS_PER_READING.load(Ordering::SeqCst);
    }
}

#[tokio::test]
async fn verify_reports_the_drift_an_apply_change_leaves_in_snapshots() {
    for backend in backends("verify_reports_the_drift_an_apply_change_leaves_in_snapshots").await {
        let repo = Repository::<Meter>::new(backend.events.clone()).with_snapshots(
            backend.snapshots.clone(),
            SnapshotPolicy::every(5).unwrap().with_mode(SnapshotMode::Sync),
        );
        let mut ids = Vec::new();
        for readings in [12, 12, 3] {
            let id = Uuid::new_v4();
            let mut meter = repo.create_new(id);
            for _ in 0..readings {
                meter.record(Read { value: 2 });
            }
            repo.save(&mut meter).await.unwrap();
            ids.push(id);
        }
        let clean = repo.verify(ids[0]).await.unwrap();
        assert_eq!(
            (clean.snapshot_version, clean.drifted()),
            (Some(12), false),
            "{}",
            backend.name
        );

        // The new release counts each reading twice; the schema version stayed 1.
        POINTS_PER_READING.store(2, Ordering::SeqCst);
        let drifted = repo.verify(ids[0]).await.unwrap();
        assert!(drifted.drifted(), "{}", backend.name);
        assert_eq!(drifted.drift.len(), 1, "{:?}", drifted.drift);
        assert_eq!(
            drifted.drift[0].to_string(),
            "points: 24 from the snapshot, 48 from a full replay"
        );
        let report = repo.verify_sample(10).await.unwrap();
        assert_eq!(
            (report.verified, report.with_snapshot, report.drifted.len()),
            (3, 2, 2),
            "{}",
            backend.name
        );
        let no_snapshot = repo.verify(ids[2]).await.unwrap();
        assert_eq!(
            (no_snapshot.snapshot_version, no_snapshot.drifted()),
            (None, false)
        );
        POINTS_PER_READING.store(1, Ordering::SeqCst);
        backend.done().await;
    }
}

#[test]
fn the_schema_lock_names_a_forgotten_bump() {
    let program = SchemaLock::of_program();
    let text = program.to_string();
    assert!(
        text.contains(
            "aggregate Wallet schema_version 2\n    Wallet = struct { balance_cents: i64, owner: str }"
        ),
        "{text}"
    );
    assert!(
        text.contains("event Wallet.Deposited version 3\n    Deposited = struct { amount_cents: i64 }"),
        "{text}"
    );
    // The lock as it was before `balance_cents` was added, at the same schema version.
    let before = text.replace(
        "Wallet = struct { balance_cents: i64, owner: str }",
        "Wallet = struct { owner: str }",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.lock");
    std::fs::write(&path, before).unwrap();
    let panic =
        std::panic::catch_unwind(|| eventsourcing_kit::testing::check_schema_lock(&path)).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message
            .contains("the `Wallet` state gained field `balance_cents: i64` but `schema_version` is still 2"),
        "{message}"
    );
    std::fs::write(&path, text).unwrap();
    eventsourcing_kit::testing::check_schema_lock(&path);
}
