//! Projections against plain subscriptions, on memory, SQLite and PostgreSQL:
//!
//! - **catch-up**: a feed of N events (default 100,000) read from the beginning, by a
//!   projection that upserts one row per event into its table in the transaction of its
//!   checkpoint, and by a subscription whose handler only sums in memory; events per second.
//! - **live**: writers append at a steady rate for some seconds while the projection follows;
//!   the time from an append returning to the projection having committed it (p50, p99).
//!
//! ```text
//! cargo run --release --all-features --example projection_benchmark -- \
//!     [--stores memory,sqlite,postgres] [--events 100000] [--rate 500] [--seconds 4] [--postgres URL]
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsourcing_kit::async_trait;
use eventsourcing_kit::backend::postgres::{
    self, sqlx, PgTransaction, PostgresProjection, PostgresReadModel,
};
use eventsourcing_kit::backend::sqlite::{self, rusqlite, SqliteProjection, SqliteReadModel};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection, Projection};
use eventsourcing_kit::subscription::{HandlerError, Subscription};
use eventsourcing_kit::{EventEnvelope, InMemorySubscriptionStore};

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

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

fn paid(event: &StoredEvent) -> Result<i64, HandlerError> {
    let TillEvent::Paid(p) = TillEvent::decode(&event.event_type, event.event_version, &event.payload)?;
    Ok(p.amount)
}

#[derive(Clone, Default)]
struct Totals(BTreeMap<Uuid, i64>);

impl MemoryProjection for Totals {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            *self.0.entry(event.aggregate_id).or_default() += paid(event)?;
        }
        Ok(())
    }
}

/// One row per till, upserted per event.
struct Table(String);

impl Table {
    fn upsert(&self) -> String {
        format!(
            "INSERT INTO {t} (till, total) VALUES ($1, $2)
             ON CONFLICT (till) DO UPDATE SET total = {t}.total + excluded.total",
            t = self.0
        )
    }
}

impl SqliteProjection for Table {
    fn setup(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (till TEXT PRIMARY KEY, total INTEGER NOT NULL)",
            self.0
        ))?;
        Ok(())
    }
    fn apply(&mut self, tx: &rusqlite::Transaction<'_>, events: &[StoredEvent]) -> Result<(), HandlerError> {
        let mut upsert = tx.prepare_cached(&self.upsert())?;
        for event in events {
            upsert.execute(rusqlite::params![event.aggregate_id.to_string(), paid(event)?])?;
        }
        Ok(())
    }
    fn reset(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(&format!("DELETE FROM {}", self.0))?;
        Ok(())
    }
}

#[async_trait]
impl PostgresProjection for Table {
    async fn setup(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} (till UUID PRIMARY KEY, total BIGINT NOT NULL)",
            self.0
        );
        sqlx::query(&create).execute(&mut **tx).await?;
        Ok(())
    }
    async fn apply(&mut self, tx: &mut PgTransaction, events: &[StoredEvent]) -> Result<(), HandlerError> {
        // One statement per batch: the batch's amounts summed per till, then upserted.
        let mut sums: BTreeMap<Uuid, i64> = BTreeMap::new();
        for event in events {
            *sums.entry(event.aggregate_id).or_default() += paid(event)?;
        }
        let (tills, totals): (Vec<Uuid>, Vec<i64>) = sums.into_iter().unzip();
        let upsert = format!(
            "INSERT INTO {t} (till, total) SELECT * FROM unnest($1::uuid[], $2::bigint[])
             ON CONFLICT (till) DO UPDATE SET total = {t}.total + excluded.total",
            t = self.0
        );
        sqlx::query(&upsert)
            .bind(tills)
            .bind(totals)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
    async fn reset(&mut self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(&format!("DELETE FROM {}", self.0))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

struct Options {
    stores: Vec<String>,
    events: usize,
    rate: u64,
    seconds: u64,
    postgres: String,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        stores: vec!["memory".into(), "sqlite".into(), "postgres".into()],
        events: 100_000,
        rate: 500,
        seconds: 4,
        postgres: std::env::var("EVENTSOURCE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--stores" => options.stores = value.split(',').map(str::to_owned).collect(),
            "--events" => options.events = value.parse()?,
            "--rate" => options.rate = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--postgres" => options.postgres = value,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(options)
}

/// Makes a projection of the given name on one backend.
type MakeProjection = Box<dyn Fn(&str) -> Fallible<Projection>>;

/// The stores of one backend: the feed, and how to make a projection and a subscription.
struct Bench {
    name: &'static str,
    events: Arc<dyn EventStore>,
    projection: MakeProjection,
    subscriptions: Arc<dyn SubscriptionStore>,
    cleanup: Option<(postgres::PgPool, String)>,
}

async fn bench(store: &str, options: &Options, dir: &std::path::Path) -> Fallible<Bench> {
    Ok(match store {
        "memory" => {
            let events = InMemoryEventStore::new();
            let feed = events.clone();
            Bench {
                name: "memory",
                events: Arc::new(events),
                projection: Box::new(move |name| {
                    Ok(
                        Projection::new(name, feed.clone(), InMemoryReadModel::new(Totals::default()))?
                            .wake_on(feed.append_signal()),
                    )
                }),
                subscriptions: Arc::new(InMemorySubscriptionStore::new()),
                cleanup: None,
            }
        }
        "sqlite" => {
            let events = sqlite::SqliteEventStore::open(dir.join("bench.db")).await?;
            let subscriptions = sqlite::SqliteSubscriptionStore::on(events.database().clone()).await?;
            let (feed, store) = (events.clone(), subscriptions.clone());
            Bench {
                name: "sqlite",
                events: Arc::new(events),
                projection: Box::new(move |name| {
                    let table = Table(format!("totals_{}", name.replace('-', "_")));
                    Ok(
                        Projection::new(name, feed.clone(), SqliteReadModel::new(store.clone(), table))?
                            .wake_on(feed.append_signal()),
                    )
                }),
                subscriptions: Arc::new(subscriptions),
                cleanup: None,
            }
        }
        _ => {
            let schema = format!("projection_bench_{}", Uuid::new_v4().simple());
            let pool = postgres::pool_options()
                .max_connections(8)
                .connect(&options.postgres)
                .await?;
            let events = postgres::PostgresEventStore::with_schema(pool.clone(), &schema)?;
            events.migrate().await?;
            let (feed, prefix) = (events.clone(), schema.clone());
            Bench {
                name: "postgres",
                events: Arc::new(events.clone()),
                projection: Box::new(move |name| {
                    let table = Table(format!("\"{prefix}\".totals_{}", name.replace('-', "_")));
                    let model = PostgresReadModel::new(feed.subscription_store(), table);
                    Ok(Projection::new(name, feed.clone(), model)?.wake_on(feed.append_signal()))
                }),
                subscriptions: Arc::new(events.subscription_store()),
                cleanup: Some((pool, schema)),
            }
        }
    })
}

/// Appends `n` payments over 1,000 tills, 100 events per append.
async fn fill(events: &dyn EventStore, n: usize) -> Fallible {
    let tills: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let per_till = n.div_ceil(tills.len());
    let mut written = 0;
    'outer: for till in &tills {
        let mut version = 0u64;
        while version < per_till as u64 {
            let batch: Vec<EventEnvelope> = (0..100.min(per_till as u64 - version))
                .map(|i| {
                    EventEnvelope::new(
                        *till,
                        "Till",
                        version + i + 1,
                        &TillEvent::from(Paid { amount: 1 }),
                    )
                })
                .collect::<eventsourcing_kit::Result<_>>()?;
            events.append(*till, "Till", version, &batch).await?;
            version += batch.len() as u64;
            written += batch.len();
            if written >= n {
                break 'outer;
            }
        }
    }
    Ok(())
}

async fn catch_up_rates(bench: &Bench, n: usize) -> Fallible<(f64, f64)> {
    let projection = (bench.projection)("catch-up")?.batch_size(500)?;
    let started = Instant::now();
    let done = projection.catch_up(|_| {}).await?;
    let projected = done.done as f64 / started.elapsed().as_secs_f64();
    assert_eq!(done.done as usize, n);

    let total = Arc::new(AtomicU64::new(0));
    let counted = total.clone();
    let subscription =
        Subscription::new("plain", bench.events.clone(), bench.subscriptions.clone())?.batch_size(500)?;
    let handler = move |batch: &[StoredEvent]| -> Result<(), HandlerError> {
        for event in batch {
            counted.fetch_add(paid(event)? as u64, Ordering::Relaxed);
        }
        Ok(())
    };
    let started = Instant::now();
    let head = bench.events.head(0).await?.position;
    let watching = total.clone();
    let caught_up = {
        let subscriptions = bench.subscriptions.clone();
        async move {
            while subscriptions
                .checkpoint("plain")
                .await
                .ok()
                .flatten()
                .unwrap_or(0)
                < head
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    subscription.run(handler, caught_up).await?;
    let plain = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(watching.load(Ordering::Relaxed) as usize, n);
    Ok((projected, plain))
}

/// Writers append at `rate` events per second for `seconds`; the time from each append to the
/// projection having committed it.
async fn live(bench: &Bench, rate: u64, seconds: u64) -> Fallible<(Duration, Duration, usize)> {
    let projection = Arc::new(
        (bench.projection)("live")?
            .batch_size(100)?
            .poll_interval(Duration::from_millis(100))?,
    );
    projection.catch_up(|_| {}).await?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let (running, stopping) = (projection.clone(), stop.clone());
    let task = tokio::spawn(async move { running.run(async move { stopping.notified().await }).await });
    let repo = Repository::<Till>::new(bench.events.clone());
    let tills: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let mut latencies = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut next = Instant::now();
    let mut n = 0;
    let mut waits = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let id = tills[n % tills.len()];
        let mut till = match repo.load(id).await {
            Ok(loaded) => loaded,
            Err(e) if e.is_not_found() => repo.create_new(id),
            Err(e) => return Err(e.into()),
        };
        till.record(Paid { amount: 1 });
        repo.save(&mut till).await?;
        let position = till.position().unwrap_or_default();
        let appended = Instant::now();
        let watcher = projection.clone();
        waits.push(tokio::spawn(async move {
            watcher
                .wait_for(position, Duration::from_secs(30))
                .await
                .map(|ok| (ok, appended.elapsed()))
        }));
        n += 1;
        next += interval;
        if let Some(rest) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(rest).await;
        }
    }
    for wait in waits {
        let (reached, latency) = wait.await??;
        assert!(reached, "the projection fell 30 s behind");
        latencies.push(latency);
    }
    stop.notify_one();
    task.await??;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99), n))
}

#[tokio::main]
async fn main() -> Fallible {
    let options = options()?;
    let dir = tempfile_dir()?;
    println!("| store | events | projection catch-up (events/s) | subscription catch-up (events/s) | live writes | live p50 | live p99 |");
    println!("|---|---|---|---|---|---|---|");
    for store in &options.stores {
        let bench = bench(store, &options, &dir).await?;
        fill(&*bench.events, options.events).await?;
        let (projected, plain) = catch_up_rates(&bench, options.events).await?;
        let (p50, p99, writes) = live(&bench, options.rate, options.seconds).await?;
        println!(
            "| {} | {} | {:.0} | {:.0} | {writes} at {}/s | {:.1} ms | {:.1} ms |",
            bench.name,
            options.events,
            projected,
            plain,
            options.rate,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
        if let Some((pool, schema)) = bench.cleanup {
            sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(&pool)
                .await?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Fallible<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("projection_bench_{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
