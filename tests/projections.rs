//! Projections on every backend: each batch committed with its checkpoint (exactly once,
//! also across SIGKILL), read-your-writes, one active instance per name, projections side
//! by side at their own pace, rebuilds with progress that resume, and a blue/green switch
//! under traffic with no failed query.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventsourcing_kit::async_trait;
use eventsourcing_kit::backend::postgres::{self, PgTransaction, PostgresProjection, PostgresReadModel};
use eventsourcing_kit::backend::sqlite::{self, rusqlite, SqliteProjection, SqliteReadModel};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{
    InMemoryReadModel, MemoryProjection, Progress, Projection, ReadModelStore,
};
use eventsourcing_kit::subscription::HandlerError;

#[allow(dead_code)]
#[path = "common/database.rs"]
mod database;

#[event(aggregate = "Till")]
pub struct Paid {
    pub amount: i64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Till", events(Paid))]
pub struct Till {
    pub total: i64,
}

impl Apply<Paid> for Till {
    fn apply(&mut self, e: &Paid) {
        self.total += e.amount;
    }
}

/// Per till: the total paid and how many payments; a payment counted twice shows in both.
type Takings = BTreeMap<Uuid, (i64, i64)>;

/// The takings of the feed once all `payments` are visible in it (on PostgreSQL the feed
/// holds events back while older transactions anywhere in the database may still commit),
/// and the position of the last.
async fn settled(events: &dyn EventStore, payments: usize) -> (Takings, u64) {
    for _ in 0..500 {
        let all: Vec<StoredEvent> = events.read_all(0).try_collect().await.unwrap();
        if all.len() == payments {
            let mut takings = Takings::new();
            add(&mut takings, &all).unwrap();
            return (takings, all.last().map_or(0, |e| e.position));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the feed never showed all {payments} payments");
}

fn add(takings: &mut Takings, events: &[StoredEvent]) -> Result<(), HandlerError> {
    for event in events {
        let TillEvent::Paid(paid) =
            TillEvent::decode(&event.event_type, event.event_version, &event.payload)?;
        let entry = takings.entry(event.aggregate_id).or_default();
        entry.0 += paid.amount;
        entry.1 += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The read model on each backend

#[derive(Clone, Default)]
struct MemoryTakings(Takings);

impl MemoryProjection for MemoryTakings {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        add(&mut self.0, events)
    }
}

/// The takings in a table of their own; `go_live` points the view `takings` at it.
struct SqlTakings {
    table: String,
    view: String,
    /// Batches applied by this instance, and a pause per batch that widens the window a
    /// kill can land in.
    batches: Arc<AtomicU64>,
    pause: Duration,
    /// Fail the next batch after writing it, once.
    fail_next: Arc<AtomicBool>,
}

impl SqlTakings {
    fn new(table: &str, view: &str) -> Self {
        SqlTakings {
            table: table.to_owned(),
            view: view.to_owned(),
            batches: Arc::default(),
            pause: Duration::ZERO,
            fail_next: Arc::default(),
        }
    }

    fn create(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (till TEXT PRIMARY KEY, total BIGINT NOT NULL, payments BIGINT NOT NULL)",
            self.table
        )
    }

    fn upsert(&self) -> String {
        format!(
            "INSERT INTO {t} (till, total, payments) VALUES ($1, $2, 1)
             ON CONFLICT (till) DO UPDATE SET total = {t}.total + excluded.total, payments = {t}.payments + 1",
            t = self.table
        )
    }

    fn failure(&self) -> Result<(), HandlerError> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err("the read model failed after writing the batch".into());
        }
        Ok(())
    }

    /// Each payment of the batch: its till and amount.
    fn payments(&self, events: &[StoredEvent]) -> Result<Vec<(String, i64)>, HandlerError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.pause);
        events
            .iter()
            .map(|event| {
                let TillEvent::Paid(paid) =
                    TillEvent::decode(&event.event_type, event.event_version, &event.payload)?;
                Ok((event.aggregate_id.to_string(), paid.amount))
            })
            .collect()
    }
}

#[async_trait]
impl PostgresProjection for SqlTakings {
    async fn setup(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(&self.create()).execute(&mut **tx).await?;
        Ok(())
    }

    async fn apply(&mut self, tx: &mut PgTransaction, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for (till, amount) in self.payments(events)? {
            sqlx::query(&self.upsert())
                .bind(till)
                .bind(amount)
                .execute(&mut **tx)
                .await?;
        }
        self.failure()
    }

    async fn reset(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(&format!("DELETE FROM {}", self.table))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn go_live(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        let view = format!(
            "CREATE OR REPLACE VIEW {} AS SELECT * FROM {}",
            self.view, self.table
        );
        sqlx::query(&view).execute(&mut **tx).await?;
        Ok(())
    }
}

impl SqliteProjection for SqlTakings {
    fn setup(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(&self.create())?;
        Ok(())
    }

    fn apply(&mut self, tx: &rusqlite::Transaction<'_>, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for (till, amount) in self.payments(events)? {
            tx.execute(&self.upsert(), rusqlite::params![till, amount])?;
        }
        self.failure()
    }

    fn reset(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(&format!("DELETE FROM {}", self.table))?;
        Ok(())
    }

    fn go_live(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(&format!(
            "DROP VIEW IF EXISTS {v}; CREATE VIEW {v} AS SELECT * FROM {t}",
            v = self.view,
            t = self.table
        ))?;
        Ok(())
    }
}

/// One backend's stores for a test, in a database or schema of its own.
#[derive(Clone)]
enum Backend {
    Sqlite {
        path: String,
        events: sqlite::SqliteEventStore,
        subscriptions: sqlite::SqliteSubscriptionStore,
    },
    Postgres {
        url: String,
        schema: String,
        events: postgres::PostgresEventStore,
        /// Drops the schema when the test is done, also when it fails (the test's own only,
        /// not a child process's).
        _scratch: Option<Arc<database::ScratchSchema>>,
    },
}

impl Backend {
    async fn sqlite(dir: &tempfile::TempDir) -> Self {
        let path = dir.path().join(format!("{}.db", Uuid::new_v4().simple()));
        let events = sqlite::SqliteEventStore::open(&path).await.unwrap();
        let subscriptions = sqlite::SqliteSubscriptionStore::on(events.database().clone())
            .await
            .unwrap();
        Backend::Sqlite {
            path: path.to_str().unwrap().to_owned(),
            events,
            subscriptions,
        }
    }

    async fn postgres(test: &str) -> Option<Self> {
        let url = database::postgres_url(test)?;
        let scratch = database::ScratchSchema::new(&url, "projections");
        let mut backend = Self::postgres_at(&url, &scratch.name).await;
        if let Backend::Postgres { _scratch, .. } = &mut backend {
            *_scratch = Some(Arc::new(scratch));
        }
        Some(backend)
    }

    async fn postgres_at(url: &str, schema: &str) -> Self {
        let pool = postgres::pool_options()
            .max_connections(6)
            .connect(url)
            .await
            .unwrap();
        let events = postgres::PostgresEventStore::with_schema(pool, schema).unwrap();
        events.migrate().await.unwrap();
        Backend::Postgres {
            url: url.to_owned(),
            schema: schema.to_owned(),
            events,
            _scratch: None,
        }
    }

    fn events(&self) -> Arc<dyn EventStore> {
        match self {
            Backend::Sqlite { events, .. } => Arc::new(events.clone()),
            Backend::Postgres { events, .. } => Arc::new(events.clone()),
        }
    }

    /// A table or view name in the backend's namespace.
    fn name(&self, name: &str) -> String {
        match self {
            Backend::Sqlite { .. } => name.to_owned(),
            Backend::Postgres { schema, .. } => format!("\"{schema}\".{name}"),
        }
    }

    fn takings(&self, table: &str) -> SqlTakings {
        SqlTakings::new(&self.name(table), &self.name("takings"))
    }

    fn projection(&self, name: &str, takings: SqlTakings) -> Projection {
        let projection = match self {
            Backend::Sqlite {
                events,
                subscriptions,
                ..
            } => Projection::new(
                name,
                events.clone(),
                SqliteReadModel::new(subscriptions.clone(), takings),
            ),
            Backend::Postgres { events, .. } => Projection::new(
                name,
                events.clone(),
                PostgresReadModel::new(events.subscription_store(), takings),
            ),
        };
        projection
            .unwrap()
            .for_aggregate::<Till>()
            .batch_size(10)
            .unwrap()
            .lease(Duration::from_millis(400))
            .unwrap()
            .poll_interval(Duration::from_millis(50))
            .unwrap()
    }

    /// The rows of a table or view of takings.
    async fn read(&self, table: &str) -> Takings {
        let sql = format!("SELECT till, total, payments FROM {}", self.name(table));
        let rows: Vec<(String, i64, i64)> = match self {
            Backend::Sqlite { events, .. } => events
                .database()
                .call(move |c| {
                    let mut statement = c.prepare(&sql)?;
                    let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                    rows.collect()
                })
                .await
                .unwrap(),
            Backend::Postgres { events, .. } => sqlx::query_as(&sql).fetch_all(events.pool()).await.unwrap(),
        };
        rows.into_iter()
            .map(|(till, total, payments)| (till.parse().unwrap(), (total, payments)))
            .collect()
    }

    async fn done(self) {
        if let Backend::Postgres { schema, events, .. } = self {
            sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(events.pool())
                .await
                .unwrap();
        }
    }
}

/// Pays `amount` into `till` through a command; the command's outcome.
async fn pay(repo: &Repository<Till>, till: Uuid, amount: i64) -> eventsourcing_kit::repository::Executed {
    repo.command(till)
        .run(|t| {
            t.record(Paid { amount });
            Ok::<_, Error>(())
        })
        .await
        .unwrap()
}

/// Runs `projection` in a task until the returned switch is flipped.
fn running(
    projection: Arc<Projection>,
) -> (
    Arc<tokio::sync::Notify>,
    tokio::task::JoinHandle<eventsourcing_kit::Result<()>>,
) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let task = tokio::spawn(async move { projection.run(async move { stopped.notified().await }).await });
    (stop, task)
}

// ---------------------------------------------------------------------------------------
// Exactly once, and read-your-writes

async fn read_your_writes(backend: &Backend) {
    let projection = Arc::new(backend.projection("takings", backend.takings("takings_v1")));
    let (stop, task) = running(projection.clone());
    let repo = Repository::<Till>::new(backend.events());
    let tills: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut expected = Takings::new();
    for round in 0..10i64 {
        for till in &tills {
            let done = pay(&repo, *till, round + 1).await;
            let entry = expected.entry(*till).or_default();
            entry.0 += round + 1;
            entry.1 += 1;
            assert!(projection
                .wait_for(done.position, Duration::from_secs(10))
                .await
                .unwrap());
            // The caller's own payment shows at once.
            assert_eq!(backend.read("takings_v1").await.get(till), expected.get(till));
        }
    }
    stop.notify_one();
    task.await.unwrap().unwrap();
    assert_eq!(backend.read("takings_v1").await, expected);
    assert_eq!(settled(&*backend.events(), 40).await.0, expected);
    assert_eq!(projection.lag().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    read_your_writes(&Backend::sqlite(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn read_your_writes_on_postgres() {
    if let Some(backend) = Backend::postgres("read_your_writes_on_postgres").await {
        read_your_writes(&backend).await;
        backend.done().await;
    }
}

#[tokio::test]
async fn read_your_writes_in_memory() {
    let events = InMemoryEventStore::new();
    let model = InMemoryReadModel::new(MemoryTakings::default());
    let projection = Arc::new(Projection::new("takings", events.clone(), model.clone()).unwrap());
    let (stop, task) = running(projection.clone());
    let repo = Repository::<Till>::new(events.clone());
    let till = Uuid::new_v4();
    for amount in 1..=20 {
        let done = pay(&repo, till, amount).await;
        assert!(projection
            .wait_for(done.position, Duration::from_secs(5))
            .await
            .unwrap());
        assert_eq!(model.read(|t| t.0[&till]), ((1..=amount).sum(), amount));
    }
    // A position nobody wrote yet is not reached: the wait ends with its timeout.
    assert!(!projection
        .wait_for(u64::MAX, Duration::from_millis(50))
        .await
        .unwrap());
    stop.notify_one();
    task.await.unwrap().unwrap();
}

/// A batch that fails after writing its rows is rolled back, rows and checkpoint, and tried
/// again: counted once, and nothing is left locked.
async fn a_failing_batch_rolls_back(backend: &Backend) {
    let takings = backend.takings("takings_v1");
    let fail = takings.fail_next.clone();
    let projection = backend
        .projection("takings", takings)
        .retry(3, Duration::from_millis(10), Duration::from_millis(10))
        .unwrap();
    let repo = Repository::<Till>::new(backend.events());
    let till = Uuid::new_v4();
    for _ in 0..5 {
        pay(&repo, till, 3).await;
    }
    fail.store(true, Ordering::SeqCst);
    settled(&*backend.events(), 5).await;
    projection.catch_up(|_| {}).await.unwrap();
    assert!(!fail.load(Ordering::SeqCst), "the failure was not reached");
    assert_eq!(projection.metrics().retries(), 1);
    assert_eq!(backend.read("takings_v1").await[&till], (15, 5));
    // Nothing left locked: the next batch commits.
    let done = pay(&repo, till, 3).await;
    settled(&*backend.events(), 6).await;
    projection.catch_up(|_| {}).await.unwrap();
    assert!(projection
        .wait_for(done.position, Duration::from_secs(5))
        .await
        .unwrap());
    assert_eq!(backend.read("takings_v1").await[&till], (18, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_rolls_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_failing_batch_rolls_back(&Backend::sqlite(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_failing_batch_rolls_back_on_postgres() {
    if let Some(backend) = Backend::postgres("a_failing_batch_rolls_back_on_postgres").await {
        a_failing_batch_rolls_back(&backend).await;
        backend.done().await;
    }
}

/// A commit made again after its first try committed (its answer lost), by a consumer that
/// lost its lease, or from a checkpoint a reset forgot, changes nothing.
async fn a_stale_commit_changes_nothing(backend: &Backend) {
    let takings = backend.takings("takings_v1");
    let model: Box<dyn ReadModelStore> = match backend {
        Backend::Sqlite { subscriptions, .. } => {
            Box::new(SqliteReadModel::new(subscriptions.clone(), takings))
        }
        Backend::Postgres { events, .. } => {
            Box::new(PostgresReadModel::new(events.subscription_store(), takings))
        }
    };
    model.setup().await.unwrap();
    let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(model
        .subscriptions()
        .acquire("takings", owner, Duration::from_secs(10))
        .await
        .unwrap());
    let repo = Repository::<Till>::new(backend.events());
    let till = Uuid::new_v4();
    for _ in 0..3 {
        pay(&repo, till, 4).await;
    }
    settled(&*backend.events(), 3).await;
    let events: Vec<StoredEvent> = backend.events().read_all(0).try_collect().await.unwrap();
    let last = events.last().unwrap().position;
    assert!(model.commit("takings", owner, None, &events, last).await.unwrap());
    assert!(
        !model.commit("takings", owner, None, &events, last).await.unwrap(),
        "the same batch again"
    );
    assert!(
        !model
            .commit("takings", other, Some(last), &events, last + 1)
            .await
            .unwrap(),
        "another owner"
    );
    assert_eq!(backend.read("takings_v1").await[&till], (12, 3), "counted once");
    model.reset("takings").await.unwrap();
    assert!(
        !model
            .commit("takings", owner, Some(last), &events[..1], last + 1)
            .await
            .unwrap(),
        "after a reset"
    );
    assert!(backend.read("takings_v1").await.is_empty());
    assert_eq!(model.checkpoint("takings").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_commit_changes_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_stale_commit_changes_nothing(&Backend::sqlite(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_stale_commit_changes_nothing_on_postgres() {
    if let Some(backend) = Backend::postgres("a_stale_commit_changes_nothing_on_postgres").await {
        a_stale_commit_changes_nothing(&backend).await;
        backend.done().await;
    }
}

// ---------------------------------------------------------------------------------------
// Side by side, rebuilds

/// A projection that takes its time over every batch.
#[derive(Clone, Default)]
struct Slow(MemoryTakings);

impl MemoryProjection for Slow {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        std::thread::sleep(Duration::from_millis(30));
        self.0.apply(events)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_side_by_side_each_go_at_their_own_pace() {
    let events = InMemoryEventStore::new();
    let repo = Repository::<Till>::new(events.clone());
    let (fast_model, slow_model) = (
        InMemoryReadModel::new(MemoryTakings::default()),
        InMemoryReadModel::new(Slow::default()),
    );
    let fast = Arc::new(Projection::new("fast", events.clone(), fast_model.clone()).unwrap());
    let slow = Arc::new(
        Projection::new("slow", events.clone(), slow_model.clone())
            .unwrap()
            .batch_size(1)
            .unwrap(),
    );
    let (stop_fast, fast_task) = running(fast.clone());
    let (stop_slow, slow_task) = running(slow.clone());
    let till = Uuid::new_v4();
    let mut last = 0;
    for _ in 0..40 {
        last = pay(&repo, till, 1).await.position;
    }
    assert!(fast.wait_for(last, Duration::from_secs(5)).await.unwrap());
    // The slow one, a batch of one event every 30 ms, is still behind: it held nobody back.
    assert!(slow.lag().await.unwrap() > 0, "the slow projection kept up");
    assert!(slow.wait_for(last, Duration::from_secs(10)).await.unwrap());
    assert_eq!(
        fast_model.read(|t| t.0.clone()),
        slow_model.read(|t| t.0 .0.clone())
    );
    stop_fast.notify_one();
    stop_slow.notify_one();
    fast_task.await.unwrap().unwrap();
    slow_task.await.unwrap().unwrap();
}

async fn rebuild_reports_progress_and_resumes(backend: &Backend) {
    let repo = Repository::<Till>::new(backend.events());
    let tills: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for i in 0..200 {
        pay(&repo, tills[i % 5], i as i64).await;
    }
    let (expected, _) = settled(&*backend.events(), 200).await;
    let projection = backend.projection("takings", backend.takings("takings_v1"));
    let mut reports: Vec<Progress> = Vec::new();
    let done = projection.rebuild(|p| reports.push(p)).await.unwrap();
    assert_eq!((done.done, done.remaining), (200, 0));
    assert_eq!(reports.len(), 20, "one report per batch of 10");
    assert!(reports
        .windows(2)
        .all(|w| w[0].done < w[1].done && w[0].remaining > w[1].remaining));
    assert_eq!(backend.read("takings_v1").await, expected);

    // A rebuild interrupted after three batches goes on from there with catch_up.
    let interrupted = Arc::new(AtomicU64::new(0));
    let counted = interrupted.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = stop.clone();
    let rebuild = projection.rebuild(move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 2 {
            stopping.notify_one();
        }
    });
    tokio::select! {
        _ = rebuild => panic!("the rebuild finished before it was interrupted"),
        _ = stop.notified() => {}
    }
    let checkpoint = projection.checkpoint().await.unwrap().unwrap();
    let rest = projection.catch_up(|_| {}).await.unwrap();
    assert!(
        rest.done < 200 && rest.done >= 200 - 40,
        "went on from checkpoint {checkpoint}: {rest:?}"
    );
    assert_eq!(backend.read("takings_v1").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_reports_progress_and_resumes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    rebuild_reports_progress_and_resumes(&Backend::sqlite(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn rebuild_reports_progress_and_resumes_on_postgres() {
    if let Some(backend) = Backend::postgres("rebuild_reports_progress_and_resumes_on_postgres").await {
        rebuild_reports_progress_and_resumes(&backend).await;
        backend.done().await;
    }
}

// ---------------------------------------------------------------------------------------
// One active instance

async fn one_instance_active(backend: &Backend) {
    let (first_model, second_model) = (backend.takings("takings_v1"), backend.takings("takings_v1"));
    let (first_batches, second_batches) = (first_model.batches.clone(), second_model.batches.clone());
    // A lease long enough that a slow renewal on a loaded machine does not hand it over.
    let lease = Duration::from_secs(2);
    let first = Arc::new(backend.projection("takings", first_model).lease(lease).unwrap());
    let second = Arc::new(backend.projection("takings", second_model).lease(lease).unwrap());
    let (_stop_first, first_task) = running(first.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (stop_second, second_task) = running(second.clone());
    let repo = Repository::<Till>::new(backend.events());
    let till = Uuid::new_v4();
    let mut last = 0;
    for _ in 0..30 {
        last = pay(&repo, till, 2).await.position;
    }
    assert!(second.wait_for(last, Duration::from_secs(10)).await.unwrap());
    assert_eq!(
        second_batches.load(Ordering::SeqCst),
        0,
        "the standby applied batches while the first was active"
    );
    // The first instance dies without a word; the standby takes over once its lease runs out.
    first_task.abort();
    let _ = first_task.await;
    let applied_by_first = first_batches.load(Ordering::SeqCst);
    for _ in 0..30 {
        last = pay(&repo, till, 2).await.position;
    }
    assert!(second.wait_for(last, Duration::from_secs(10)).await.unwrap());
    assert!(second_batches.load(Ordering::SeqCst) > 0 && applied_by_first > 0);
    assert_eq!(backend.read("takings_v1").await[&till], (120, 60));
    stop_second.notify_one();
    second_task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_is_active_and_a_standby_takes_over_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    one_instance_active(&Backend::sqlite(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn one_instance_is_active_and_a_standby_takes_over_on_postgres() {
    if let Some(backend) =
        Backend::postgres("one_instance_is_active_and_a_standby_takes_over_on_postgres").await
    {
        one_instance_active(&backend).await;
        backend.done().await;
    }
}

// ---------------------------------------------------------------------------------------
// Blue/green

async fn blue_green_under_traffic(backend: &Backend) {
    let blue = Arc::new(backend.projection("takings-v1", backend.takings("takings_v1")));
    blue.catch_up(|_| {}).await.unwrap();
    blue.go_live().await.unwrap();
    let (stop_blue, blue_task) = running(blue.clone());

    // Writers and readers all along: every query of the view must succeed.
    let writing = Arc::new(AtomicBool::new(true));
    let writers = {
        let (writing, repo) = (writing.clone(), Repository::<Till>::new(backend.events()));
        tokio::spawn(async move {
            let tills: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                pay(&repo, tills[n % 8], 1 + (n % 7) as i64).await;
                n += 1;
            }
            n
        })
    };
    let reading = Arc::new(AtomicBool::new(true));
    let readers = {
        let (reading, backend) = (reading.clone(), backend.clone());
        tokio::spawn(async move {
            let (mut queries, mut failures) = (0u64, Vec::new());
            while reading.load(Ordering::SeqCst) {
                let sql = format!("SELECT count(*) FROM {}", backend.name("takings"));
                let outcome: Result<i64, String> = match &backend {
                    Backend::Sqlite { events, .. } => events
                        .database()
                        .call(move |c| c.query_row(&sql, [], |r| r.get(0)))
                        .await
                        .map_err(|e| e.to_string()),
                    Backend::Postgres { events, .. } => sqlx::query_scalar(&sql)
                        .fetch_one(events.pool())
                        .await
                        .map_err(|e| e.to_string()),
                };
                queries += 1;
                if let Err(e) = outcome {
                    failures.push(e);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (queries, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Version 2 builds into its own table while version 1 serves, then takes over.
    let green = Arc::new(backend.projection("takings-v2", backend.takings("takings_v2")));
    green.catch_up(|_| {}).await.unwrap();
    let (stop_green, green_task) = running(green.clone());
    green.go_live().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_blue.notify_one();
    blue_task.await.unwrap().unwrap();

    writing.store(false, Ordering::SeqCst);
    let payments = writers.await.unwrap();
    let (expected, last) = settled(&*backend.events(), payments).await;
    assert!(green.wait_for(last, Duration::from_secs(10)).await.unwrap());
    reading.store(false, Ordering::SeqCst);
    let (queries, failures) = readers.await.unwrap();
    stop_green.notify_one();
    green_task.await.unwrap().unwrap();

    assert!(
        failures.is_empty(),
        "{} of {queries} queries failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        queries > 20 && payments > 20,
        "{queries} queries, {payments} payments"
    );
    assert_eq!(backend.read("takings_v2").await, expected);
    assert_eq!(
        backend.read("takings").await,
        expected,
        "the view shows version 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rebuild_under_traffic_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    blue_green_under_traffic(&Backend::sqlite(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn blue_green_rebuild_under_traffic_on_postgres() {
    if let Some(backend) = Backend::postgres("blue_green_rebuild_under_traffic_on_postgres").await {
        blue_green_under_traffic(&backend).await;
        backend.done().await;
    }
}

// ---------------------------------------------------------------------------------------
// SIGKILL

/// Set in the projector processes: `sqlite PATH` or `postgres URL SCHEMA`.
const CHILD_VAR: &str = "EVENTSOURCE_TEST_PROJECTOR";

/// The projector process: runs the projection until it is killed.
async fn projector_process(spec: String) {
    let words: Vec<&str> = spec.split(' ').collect();
    let backend = match words.as_slice() {
        ["sqlite", path] => {
            let events = sqlite::SqliteEventStore::open(path).await.unwrap();
            let subscriptions = sqlite::SqliteSubscriptionStore::on(events.database().clone())
                .await
                .unwrap();
            Backend::Sqlite {
                path: (*path).to_owned(),
                events,
                subscriptions,
            }
        }
        ["postgres", url, schema] => Backend::postgres_at(url, schema).await,
        _ => panic!("bad {CHILD_VAR}: {spec}"),
    };
    let mut takings = backend.takings("takings_v1");
    takings.pause = Duration::from_millis(5);
    let projection = backend.projection("takings", takings);
    projection.run(std::future::pending()).await.unwrap();
}

async fn killed_projectors(test: &str, backend: &Backend, rounds: usize) {
    let spec = match backend {
        Backend::Sqlite { path, .. } => format!("sqlite {path}"),
        Backend::Postgres { url, schema, .. } => format!("postgres {url} {schema}"),
    };
    let writing = Arc::new(AtomicBool::new(true));
    let writers = {
        let (writing, repo) = (writing.clone(), Repository::<Till>::new(backend.events()));
        tokio::spawn(async move {
            let tills: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
            let mut n = 0usize;
            while writing.load(Ordering::SeqCst) {
                pay(&repo, tills[n % 10], 1 + (n % 5) as i64).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        })
    };
    let exe = std::env::current_exe().unwrap();
    for _ in 0..rounds {
        let mut child = tokio::process::Command::new(&exe)
            .args(["--exact", test, "--nocapture"])
            .env(CHILD_VAR, &spec)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // A random moment: at start-up, mid-batch, between commits.
        let ms = 100 + (Uuid::new_v4().as_u128() % 600) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    writing.store(false, Ordering::SeqCst);
    let payments = writers.await.unwrap();
    // After the last kill, one more consumer brings the read model to the head.
    let (expected, _) = settled(&*backend.events(), payments).await;
    let projection = backend.projection("takings", backend.takings("takings_v1"));
    let partial = backend.read("takings_v1").await;
    projection.catch_up(|_| {}).await.unwrap();
    assert!(
        partial.values().map(|(_, n)| n).sum::<i64>() > 0,
        "the killed projectors committed nothing"
    );
    assert_eq!(
        backend.read("takings_v1").await,
        expected,
        "the read model equals a full rebuild"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_killed_with_sigkill_on_sqlite() {
    const NAME: &str = "projectors_killed_with_sigkill_on_sqlite";
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return projector_process(spec).await;
    }
    let dir = tempfile::tempdir().unwrap();
    killed_projectors(NAME, &Backend::sqlite(&dir).await, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn projectors_killed_with_sigkill_on_postgres() {
    const NAME: &str = "projectors_killed_with_sigkill_on_postgres";
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return projector_process(spec).await;
    }
    if let Some(backend) = Backend::postgres(NAME).await {
        killed_projectors(NAME, &backend, 10).await;
        backend.done().await;
    }
}
