//! `Projection::verify` and `admin projections verify`: a projection's rows compared with
//! what today's code makes of their streams in a scratch copy of the read model, on memory,
//! SQLite and PostgreSQL. The code is changed between two runs (a fee taken from each
//! payment), and the rows it wrote before are found to differ.
//!
//! The PostgreSQL case needs `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventsourcing_kit::admin::{Admin, AdminArgs, AdminCommand, Outcome, ProjectionsCommand};
use eventsourcing_kit::backend::{self, SqlProjection, SqlReadModel, SqlReads, SqlWrites, Stores};
use eventsourcing_kit::projection::verify::VerifyReport;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection, Projection, Row, StreamKey};
use eventsourcing_kit::subscription::{Consumer, HandlerError};
use eventsourcing_kit::testing::envelope;
use eventsourcing_kit::{Error, EventEnvelope, StoredEvent, Uuid};
use serde_json::{json, Value};

const NAME: &str = "tills";

/// The payments of each till, less a fee per payment: the code that changes between runs.
fn amount(event: &StoredEvent, fee: i64) -> Result<i64, HandlerError> {
    let paid: Value = serde_json::from_str(&event.payload)?;
    Ok(paid["amount"].as_i64().ok_or("a payment without an amount")? - fee)
}

/// Takings per till in SQL tables named with `prefix`, and a total over every till (a row
/// no one stream makes, which verifying leaves out).
struct Tills {
    prefix: String,
    fee: i64,
    /// Whether it gives a scratch copy of itself.
    verifiable: bool,
}

impl Tills {
    fn sql(&self, statement: &str) -> String {
        statement.replace("{p}", &self.prefix)
    }
}

impl SqlProjection for Tills {
    fn setup(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        writes.execute(
            &self.sql(
                "CREATE TABLE IF NOT EXISTS {p}verify_tills (
                    till TEXT PRIMARY KEY, total BIGINT NOT NULL, payments BIGINT NOT NULL,
                    mean DOUBLE PRECISION NOT NULL, note TEXT)",
            ),
            [],
        );
        writes.execute(
            &self.sql(
                "CREATE TABLE IF NOT EXISTS {p}verify_all (one BIGINT PRIMARY KEY, total BIGINT NOT NULL)",
            ),
            [],
        );
        Ok(())
    }

    fn apply(&mut self, writes: &mut SqlWrites, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            let amount = amount(event, self.fee)?;
            writes.execute(
                &self.sql(
                    "INSERT INTO {p}verify_tills (till, total, payments, mean) VALUES ($1, $2, 1, $2)
                     ON CONFLICT (till) DO UPDATE SET total = {p}verify_tills.total + excluded.total,
                     payments = {p}verify_tills.payments + 1,
                     mean = CAST({p}verify_tills.total + excluded.total AS DOUBLE PRECISION) / ({p}verify_tills.payments + 1)",
                ),
                [event.aggregate_id.into(), amount.into()],
            );
            writes.execute(
                &self.sql(
                    "INSERT INTO {p}verify_all (one, total) VALUES (1, $1)
                     ON CONFLICT (one) DO UPDATE SET total = {p}verify_all.total + excluded.total",
                ),
                [amount.into()],
            );
        }
        Ok(())
    }

    fn reset(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        writes.execute(&self.sql("DELETE FROM {p}verify_tills"), []);
        writes.execute(&self.sql("DELETE FROM {p}verify_all"), []);
        Ok(())
    }

    fn scratch(&self, schema: &str) -> Option<Self> {
        self.verifiable.then(|| Tills {
            prefix: format!("{schema}."),
            fee: self.fee,
            verifiable: true,
        })
    }

    fn stream_rows(&self, stream: &StreamKey, reads: &mut SqlReads) {
        reads.query(
            "verify_tills",
            &self.sql("SELECT till, total, payments, mean, note FROM {p}verify_tills WHERE till = $1"),
            [stream.aggregate_id.into()],
        );
    }
}

/// The same in memory. The fee is the code, shared by the live state and its scratch copies:
/// changing it stands for a new version of the program.
#[derive(Clone, Default)]
struct MemoryTills {
    tills: BTreeMap<Uuid, (i64, i64)>,
    fee: Arc<AtomicI64>,
}

impl MemoryProjection for MemoryTills {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            let till = self.tills.entry(event.aggregate_id).or_default();
            till.0 += amount(event, self.fee.load(Ordering::SeqCst))?;
            till.1 += 1;
        }
        Ok(())
    }

    fn stream_rows(&self, stream: &StreamKey) -> Option<Vec<Row>> {
        let row = self.tills.get(&stream.aggregate_id).map(|(total, payments)| {
            Row::new(
                "tills",
                json!({"till": stream.aggregate_id, "total": total, "payments": payments}),
            )
        });
        Some(row.into_iter().collect())
    }
}

/// The prefix of the stores' PostgreSQL schema, or nothing.
fn prefix(stores: &Stores) -> String {
    stores
        .postgres()
        .and_then(|events| events.schema())
        .map_or(String::new(), |schema| format!("\"{schema}\"."))
}

/// The projection `NAME` with the code of `fee`, on the stores' own database (in memory for
/// in-memory stores, whose read model is `memory`, shared by every version: the fee it takes
/// is then `fee` for every projection on it).
fn tills(stores: &Stores, fee: i64, memory: &InMemoryReadModel<MemoryTills>) -> Projection {
    let projection = if stores.sqlite().is_some() || stores.postgres().is_some() {
        let tills = Tills {
            prefix: prefix(stores),
            fee,
            verifiable: true,
        };
        stores
            .projection(NAME, SqlReadModel::on(stores, tills).unwrap())
            .unwrap()
    } else {
        memory.read(|tills| tills.fee.store(fee, Ordering::SeqCst));
        stores.projection(NAME, memory.clone()).unwrap()
    };
    projection.aggregate_type("Till")
}

/// Appends `amounts` as payments of one till; its id and the position of its last event.
async fn pay(stores: &Stores, till: Uuid, version: u64, amounts: &[i64]) -> u64 {
    let batch: Vec<EventEnvelope> = amounts
        .iter()
        .enumerate()
        .map(|(i, amount)| {
            let mut value = envelope(till, "Till", version + i as u64 + 1);
            value.payload = Arc::from(format!(r#"{{"amount":{amount}}}"#));
            value
        })
        .collect();
    stores
        .events
        .append(till, "Till", version, &batch)
        .await
        .unwrap()
        .position
}

fn keys(tills: &[Uuid]) -> Vec<StreamKey> {
    tills.iter().map(|t| StreamKey::new("Till", *t)).collect()
}

fn drifted(report: &VerifyReport) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = report.drifted.iter().map(|d| d.stream.aggregate_id).collect();
    ids.sort();
    ids
}

async fn code_changed_between_two_runs(stores: Stores) {
    let memory = InMemoryReadModel::new(MemoryTills::default());
    let tills_ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for (i, till) in tills_ids.iter().enumerate() {
        pay(&stores, *till, 0, &vec![10; i + 1]).await;
    }
    let v1 = tills(&stores, 0, &memory);
    v1.catch_up(|_| {}).await.unwrap();

    // The code that wrote the rows finds them as it would write them.
    let clean = v1.verify(&keys(&tills_ids)).await.unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!(clean.verified, 5);
    assert_eq!(clean.rows, 10, "one row per till, live and rebuilt");
    // A stream the projection never saw has no rows, live or rebuilt.
    let unseen = v1.verify(&keys(&[Uuid::new_v4()])).await.unwrap();
    assert_eq!((unseen.verified, unseen.rows), (1, 0));

    // Today's code takes a fee from each payment: every till's row differs from a rebuild,
    // by the fee times its payments, and nothing was written anywhere by verifying.
    let v2 = tills(&stores, 1, &memory);
    let changed = v2.verify(&keys(&tills_ids)).await.unwrap();
    let mut expected = tills_ids.clone();
    expected.sort();
    assert_eq!(drifted(&changed), expected);
    for drift in &changed.drifted {
        let payments = tills_ids
            .iter()
            .position(|t| *t == drift.stream.aggregate_id)
            .unwrap() as i64
            + 1;
        assert_eq!(drift.events, payments as usize);
        assert_eq!(drift.live_only.len(), 1, "{drift:?}");
        assert_eq!(drift.rebuilt_only.len(), 1, "{drift:?}");
        assert_eq!(drift.live_only[0].values["total"], json!(10 * payments));
        assert_eq!(drift.rebuilt_only[0].values["total"], json!(9 * payments));
        assert!(drift.failed.is_none());
    }
    let v1 = tills(&stores, 0, &memory);
    let again = v1.verify(&keys(&tills_ids)).await.unwrap();
    assert!(again.is_clean(), "verifying changed the live rows: {again:?}");

    // Verifying follows each stream's checkpoint: events the projection has not applied yet
    // are not rebuilt either.
    pay(&stores, tills_ids[0], 1, &[50]).await;
    let behind = v1.verify(&keys(&tills_ids)).await.unwrap();
    assert!(behind.is_clean(), "{behind:?}");
    let first = behind.verified;
    assert_eq!(first, 5);

    // A range of the feed names the streams with events in it.
    let head = stores.events.head(0).await.unwrap().position;
    let last = v1.streams_between(head - 1, head).await.unwrap();
    assert_eq!(last, keys(&tills_ids[..1]));
    let all = v1.streams_between(0, head).await.unwrap();
    assert_eq!(all, keys(&tills_ids));

    // The projection keeps running while verifying: no false drift.
    let stop = Arc::new(tokio::sync::Notify::new());
    let running = {
        let (v1, stop) = (Arc::new(v1), stop.clone());
        let runner = v1.clone();
        let task = tokio::spawn(async move { runner.run(stop.notified()).await });
        (v1, task)
    };
    let (v1, task) = running;
    // Till i was paid i + 1 times, and the first once more.
    let mut versions: Vec<u64> = (1..=5).collect();
    versions[0] += 1;
    for round in 0..8 {
        for (i, till) in tills_ids.iter().enumerate() {
            pay(&stores, *till, versions[i], &[round + 1]).await;
            versions[i] += 1;
        }
        let live = v1.verify(&keys(&tills_ids)).await.unwrap();
        assert!(live.is_clean(), "a running projection drifted: {live:?}");
        assert_eq!(live.verified + live.moving.len(), 5);
    }
    let head = stores.events.head(0).await.unwrap().position;
    assert!(v1.wait_for(head, Duration::from_secs(20)).await.unwrap());
    stop.notify_one();
    task.await.unwrap().unwrap();
    let settled = v1.verify(&keys(&tills_ids)).await.unwrap();
    assert!(settled.is_clean() && settled.verified == 5, "{settled:?}");
}

#[tokio::test]
async fn verify_finds_rows_that_todays_code_would_write_otherwise_in_memory() {
    code_changed_between_two_runs(backend::open("memory:").await.unwrap()).await;
}

#[tokio::test]
async fn verify_finds_rows_that_todays_code_would_write_otherwise_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("tills.db").display());
    code_changed_between_two_runs(backend::open(&url).await.unwrap()).await;
}

/// The tests' PostgreSQL URL with a schema of the test's own, dropped at the end.
fn postgres_scratch(test: &str) -> Option<(common::ScratchSchema, String)> {
    let url = common::postgres_url(test)?;
    let scratch = common::ScratchSchema::new(&url, "verify");
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}schema={}", scratch.name);
    Some((scratch, url))
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn verify_finds_rows_that_todays_code_would_write_otherwise_on_postgres() {
    let Some((_scratch, url)) = postgres_scratch("verify_on_postgres") else {
        return;
    };
    let stores = backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    code_changed_between_two_runs(stores).await;
}

/// A consumer group's ranges each keep their checkpoint: a stream is rebuilt up to its
/// range's.
async fn group_ranges(stores: Stores) {
    let memory = InMemoryReadModel::new(MemoryTills::default());
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        pay(&stores, *id, 0, &[3, 4]).await;
    }
    let group = Arc::new(tills(&stores, 0, &memory).group(4).unwrap());
    let stop = Arc::new(tokio::sync::Notify::new());
    let task = {
        let (group, stop) = (group.clone(), stop.clone());
        tokio::spawn(async move { group.run(2, stop.notified()).await })
    };
    let head = stores.events.head(0).await.unwrap().position;
    assert!(group.wait_for(head, Duration::from_secs(20)).await.unwrap());
    stop.notify_one();
    task.await.unwrap().unwrap();
    // Later payments, not applied by anyone: the ranges' checkpoints are before them.
    for id in &ids {
        pay(&stores, *id, 2, &[100]).await;
    }
    let report = group.projection().verify(&keys(&ids)).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.verified, 12);
    let changed = tills(&stores, 2, &memory).verify(&keys(&ids)).await.unwrap();
    assert_eq!(changed.drifted.len(), 12);
    assert!(changed
        .drifted
        .iter()
        .all(|d| d.events == 2 && d.applied_up_to <= head));
}

#[tokio::test]
async fn a_consumer_groups_ranges_are_verified_up_to_their_checkpoints_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("group.db").display());
    group_ranges(backend::open(&url).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_consumer_groups_ranges_are_verified_up_to_their_checkpoints_on_postgres() {
    let Some((_scratch, url)) = postgres_scratch("verify_group_on_postgres") else {
        return;
    };
    let stores = backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    group_ranges(stores).await;
}

#[tokio::test]
async fn a_consumer_groups_ranges_are_verified_up_to_their_checkpoints_in_memory() {
    group_ranges(backend::open("memory:").await.unwrap()).await;
}

#[tokio::test]
async fn a_projection_without_a_scratch_copy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("plain.db").display());
    let stores = backend::open(&url).await.unwrap();
    let plain = Tills {
        prefix: String::new(),
        fee: 0,
        verifiable: false,
    };
    let projection = stores
        .projection(NAME, SqlReadModel::on(&stores, plain).unwrap())
        .unwrap();
    let refused = projection.verify(&keys(&[Uuid::new_v4()])).await;
    assert!(
        matches!(&refused, Err(Error::InvalidInput(why)) if why.contains("cannot be verified")),
        "{refused:?}"
    );
    let memory = InMemoryReadModel::new(Plain);
    let memory = stores.projection("plain", memory).unwrap();
    assert!(matches!(memory.verify(&[]).await, Err(Error::InvalidInput(_))));
}

/// A memory projection that does not list a stream's rows.
#[derive(Clone)]
struct Plain;

impl MemoryProjection for Plain {
    fn apply(&mut self, _: &[StoredEvent]) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// `admin projections verify`, in the program's own process: exit 0 on the code that wrote
/// the rows, 1 with the differences on changed code.
async fn admin_verify(url: &str) {
    let stores = backend::open(url).await.unwrap();
    stores.migrate().await.unwrap();
    let memory = InMemoryReadModel::new(MemoryTills::default());
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let mut first = 0;
    for id in &ids {
        let position = pay(&stores, *id, 0, &[7, 8]).await;
        first = if first == 0 { position } else { first };
    }
    tills(&stores, 0, &memory).catch_up(|_| {}).await.unwrap();

    let run = |fee: i64, command: ProjectionsCommand| {
        let url = url.to_owned();
        async move {
            let admin = Admin::new().projection(move |stores| {
                let memory = InMemoryReadModel::new(MemoryTills::default());
                Ok(Arc::new(tills(stores, fee, &memory)))
            });
            let args = AdminArgs {
                url,
                json: true,
                migrate: false,
                command: AdminCommand::Projections(command),
            };
            let mut out = Vec::new();
            let outcome = admin.run_with(args, &mut out).await;
            (outcome, serde_json::from_slice::<Value>(&out).ok())
        }
    };
    let sample = |n| ProjectionsCommand::Verify {
        name: NAME.to_owned(),
        sample: n,
        after: None,
        until: None,
        show: 2,
    };
    let (outcome, report) = run(0, sample(100)).await;
    let report = report.unwrap();
    assert!(matches!(outcome, Ok(Outcome::Clean)), "{outcome:?} {report}");
    assert_eq!(
        (report["verified"].clone(), report["drifted"].clone()),
        (json!(6), json!(0))
    );

    let (outcome, report) = run(1, sample(4)).await;
    let report = report.unwrap();
    assert!(matches!(outcome, Ok(Outcome::Findings)), "{outcome:?} {report}");
    assert_eq!(report["verified"], 4);
    assert_eq!(report["drifted"], 4);
    assert_eq!(report["shown"].as_array().unwrap().len(), 2, "--show 2");
    assert_eq!(report["shown"][0]["live_only"][0]["values"]["total"], 15);
    assert_eq!(report["shown"][0]["rebuilt_only"][0]["values"]["total"], 13);

    // The streams of a range of the feed: the first till's two events.
    let range = ProjectionsCommand::Verify {
        name: NAME.to_owned(),
        sample: 100,
        after: Some(0),
        until: Some(first),
        show: 10,
    };
    let (outcome, report) = run(1, range).await;
    let report = report.unwrap();
    assert!(matches!(outcome, Ok(Outcome::Findings)));
    assert_eq!(report["verified"], 1);
    assert_eq!(report["shown"][0]["stream"]["aggregate_id"], ids[0].to_string());

    let unknown = ProjectionsCommand::Verify {
        name: "no-such".to_owned(),
        sample: 1,
        after: None,
        until: None,
        show: 1,
    };
    assert!(run(0, unknown).await.0.is_err());
}

#[tokio::test]
async fn admin_verify_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    admin_verify(&format!("sqlite:{}", dir.path().join("admin.db").display())).await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn admin_verify_on_postgres() {
    let Some((_scratch, url)) = postgres_scratch("admin_verify_on_postgres") else {
        return;
    };
    admin_verify(&url).await;
}
