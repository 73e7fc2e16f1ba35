//! Consumer groups: how a subscription scales with its workers, on memory, SQLite and
//! PostgreSQL.
//!
//! - **I/O-bound**: N events (default 40,000, ten per aggregate) drained by a group whose
//!   handler waits `--pause` ms (default 5) per batch of 50, standing for a call to another
//!   service. 1, 2, 4 and 8 ranges, one worker per range, in this process and (SQLite,
//!   PostgreSQL) one process per worker. The workers start at the end of the feed and settle
//!   (each holding its share), the events are appended with the handlers held back, then
//!   drained: the lag at the start is all of them. Events per second, and the speed-up over
//!   one worker.
//! - **CPU-bound catch-up**: the whole feed through a handler that does nothing: the single
//!   consumer (`Subscription::catch_up`) against a group of one worker with one range, and with
//!   eight.
//! - **Lag under steady traffic** (with `--rate R`, instead of the two above): R events/s
//!   appended for `--seconds` (a shipment of ten events in one batch, every 10 ms for each
//!   1,000 events/s) while the group, its workers in this process, handles them with the
//!   I/O-bound handler from the start. Every 50 ms the lag is
//!   read: the events appended and not yet handed to a handler. Its median, 99th percentile
//!   and largest over the run, in events and in the time it takes to append them at R, and
//!   how long the group took after the last append to hand over the rest.
//!
//! ```text
//! cargo run --release --features eventsourcing-kit/sqlite,eventsourcing-kit/postgres --example group_benchmark -- \
//!     [--stores memory,sqlite,postgres] [--events 40000] [--pause 5] [--workers 1,2,4,8] \
//!     [--rate 12000 --seconds 10] [--postgres URL]
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsourcing_kit::async_trait;
use eventsourcing_kit::backend::{self, Stores};
use eventsourcing_kit::group::ConsumerGroup;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::subscription::{Handler, HandlerError, Subscription};
use eventsourcing_kit::EventEnvelope;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[event(aggregate = "Shipment")]
pub struct Routed {
    pub hop: u32,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Shipment", events(Routed))]
pub struct Shipment {
    pub hops: u32,
}

impl Apply<Routed> for Shipment {
    fn apply(&mut self, _: &Routed) {
        self.hops += 1;
    }
}

const BATCH: usize = 50;
const LEASE: Duration = Duration::from_secs(1);
const WORKERS: [u32; 4] = [1, 2, 4, 8];

/// Where the handlers are held back until the workers settled: a flag in this process, a
/// file for worker processes.
#[derive(Clone)]
enum Gate {
    Flag(Arc<AtomicBool>),
    File(PathBuf),
}

impl Gate {
    fn open(&self) -> bool {
        match self {
            Gate::Flag(flag) => flag.load(Ordering::Acquire),
            Gate::File(path) => path.exists(),
        }
    }
}

/// Waits for the gate, then `pause` per batch; counts the events it was handed in `handled`.
struct Slow {
    gate: Gate,
    pause: Duration,
    handled: Arc<AtomicU64>,
}

#[async_trait]
impl Handler for Slow {
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        while !self.gate.open() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.handled.fetch_add(events.len() as u64, Ordering::Relaxed);
        tokio::time::sleep(self.pause).await;
        Ok(())
    }
}

/// The group `name` of `ranges` ranges; starting at the end of the feed, or at its beginning.
/// Its ranges poll every 10 ms besides being woken by appends: a drain measures the handlers,
/// not how soon a worker process of SQLite (which has no wake-ups between processes) notices
/// the events.
fn group(stores: &Stores, name: &str, ranges: u32, at_end: bool) -> Fallible<ConsumerGroup<Subscription>> {
    grouped(
        stores
            .subscription(name)?
            .poll_interval(Duration::from_millis(10))?,
        ranges,
        at_end,
    )
}

/// `subscription`, of shipments, as a group of `ranges` ranges.
fn grouped(subscription: Subscription, ranges: u32, at_end: bool) -> Fallible<ConsumerGroup<Subscription>> {
    let subscription = subscription
        .for_aggregate::<Shipment>()
        .batch_size(BATCH)?
        .lease(LEASE)?;
    let subscription = if at_end {
        subscription.starting_at_end()
    } else {
        subscription
    };
    Ok(subscription.group(ranges)?)
}

/// Appends `events` events, ten to each of a tenth as many shipments.
async fn fill(stores: &Stores, events: usize) -> Fallible {
    for _ in 0..events / 10 {
        shipment(stores).await?;
    }
    Ok(())
}

/// Appends a new shipment's ten events, in one batch.
async fn shipment(stores: &Stores) -> Fallible {
    let id = Uuid::new_v4();
    let batch: Vec<EventEnvelope> = (1..=10)
        .map(|hop| {
            EventEnvelope::new(
                id,
                "Shipment",
                u64::from(hop),
                &ShipmentEvent::from(Routed { hop }),
            )
        })
        .collect::<Result<_, _>>()?;
    stores.events.append(id, "Shipment", 0, &batch).await?;
    Ok(())
}

/// The lag of a group of `workers` workers under steady traffic (see the module docs): the
/// median, 99th percentile and largest lag in events, the rate the appends reached, and the
/// time from the last append until every event was handed over.
async fn steady(
    stores: &Stores,
    workers: u32,
    pause: Duration,
    rate: usize,
    seconds: u64,
) -> Fallible<([u64; 3], f64, Duration)> {
    let name = format!("lag-{}", Uuid::new_v4().simple());
    // The ranges poll as often as they do unless configured otherwise: what a service runs.
    let group = Arc::new(grouped(stores.subscription(&name)?, workers, true)?);
    let handled = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let (group, handled) = (group.clone(), handled.clone());
        tokio::spawn(async move {
            let handlers = move |_range| Slow {
                gate: Gate::Flag(Arc::new(AtomicBool::new(true))),
                pause,
                handled: handled.clone(),
            };
            group
                .run(workers as usize, handlers, async move {
                    let _ = stopped.await;
                })
                .await
        })
    };
    settle(&group, workers).await?;
    // Shipments a tick, every 10 ms; a tick that falls behind is made up at once.
    let per_tick = (rate / 100 / 10).max(1);
    let appended = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let appending = {
        let (stores, appended) = (stores.clone(), appended.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            for _ in 0..seconds * 100 {
                ticks.tick().await;
                for _ in 0..per_tick {
                    shipment(&stores).await?;
                    appended.fetch_add(10, Ordering::Relaxed);
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    };
    let mut lags = Vec::new();
    while !appending.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let handed = handled.load(Ordering::Relaxed);
        lags.push(appended.load(Ordering::Relaxed).saturating_sub(handed));
    }
    appending.await??;
    let last = Instant::now();
    let total = appended.load(Ordering::Relaxed);
    let reached = total as f64 / (last - began).as_secs_f64();
    while handled.load(Ordering::Relaxed) < total {
        if last.elapsed() > Duration::from_secs(600) {
            return Err("the group did not catch up within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = last.elapsed();
    let _ = stop.send(());
    running.await??;
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    Ok(([at(0.5), at(0.99), at(1.0)], reached, drained))
}

/// Waits until the group's workers hold every range and had time to share them (with nothing
/// to handle yet, each lets go at once of what is above its share).
async fn settle(group: &ConsumerGroup<Subscription>, workers: u32) -> Fallible {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = group.status().await? {
            if status.workers == workers as usize && status.ranges.iter().all(|r| r.owner.is_some()) {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("the workers did not settle within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several looks at the group each, for every worker to let go of what is above its
    // share and take what is below.
    tokio::time::sleep(LEASE * 2).await;
    Ok(())
}

/// Drains the feed with `workers` workers of as many ranges in this process; events/s.
async fn in_process(stores: &Stores, events: usize, workers: u32, pause: Duration) -> Fallible<f64> {
    let name = format!("bench-{}", Uuid::new_v4().simple());
    let group = Arc::new(group(stores, &name, workers, true)?);
    let flag = Arc::new(AtomicBool::new(false));
    let gate = Gate::Flag(flag.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let group = group.clone();
        tokio::spawn(async move {
            let handlers = move |_range| Slow {
                gate: gate.clone(),
                pause,
                handled: Arc::default(),
            };
            group
                .run(workers as usize, handlers, async move {
                    let _ = stopped.await;
                })
                .await
        })
    };
    settle(&group, workers).await?;
    fill(stores, events).await?;
    let head = stores.events.head(0).await?.position;
    let started = Instant::now();
    flag.store(true, Ordering::Release);
    if !group.wait_for(head, Duration::from_secs(600)).await? {
        return Err("the group did not drain the feed".into());
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await??;
    Ok(rate)
}

/// Drains the feed with `workers` worker processes, one range each; events/s.
async fn in_processes(
    stores: &Stores,
    url: &str,
    events: usize,
    workers: u32,
    pause: Duration,
) -> Fallible<f64> {
    let name = format!("bench-{}", Uuid::new_v4().simple());
    let group = group(stores, &name, workers, true)?;
    let dir = tempfile::tempdir()?;
    let gate = dir.path().join("open");
    let mut children: Vec<Child> = Vec::new();
    for _ in 0..workers {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--worker",
                url,
                &name,
                &workers.to_string(),
                &pause.as_millis().to_string(),
            ])
            .arg(&gate)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no output")?).lines();
        if !lines.any(|line| line.is_ok_and(|l| l == "READY")) {
            return Err("a worker process did not start".into());
        }
        std::thread::spawn(move || lines.for_each(drop));
        children.push(child);
    }
    settle(&group, workers).await?;
    fill(stores, events).await?;
    let head = stores.events.head(0).await?.position;
    let started = Instant::now();
    std::fs::write(&gate, b"")?;
    if !group.wait_for(head, Duration::from_secs(600)).await? {
        return Err("the group did not drain the feed".into());
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    for mut child in children {
        drop(child.stdin.take());
        child.wait()?;
    }
    Ok(rate)
}

/// A worker process: one worker of group `name` until its standard input closes.
async fn worker(url: &str, name: &str, ranges: u32, pause: Duration, gate: &Path) -> Fallible {
    let stores = backend::open(url).await?;
    let group = group(&stores, name, ranges, true)?;
    let gate = Gate::File(gate.to_owned());
    let closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
        })
        .await;
    };
    println!("READY");
    let handlers = move |_range| Slow {
        gate: gate.clone(),
        pause,
        handled: Arc::default(),
    };
    group.run(1, handlers, closed).await?;
    Ok(())
}

/// When a handler was first and last given events, and how many: a catch-up's rate from its
/// first batch to its last, whatever it took to start.
#[derive(Clone, Default)]
struct Timed(Arc<std::sync::Mutex<Span>>);

/// The first and the last batch's time, and the events handed over.
#[derive(Default)]
struct Span(Option<Instant>, Option<Instant>, u64);

impl Timed {
    fn handler(&self) -> impl FnMut(&[StoredEvent]) -> Result<(), HandlerError> + Send + 'static {
        let timed = self.0.clone();
        move |batch: &[StoredEvent]| {
            let now = Instant::now();
            let mut t = timed.lock().unwrap();
            t.0.get_or_insert(now);
            t.1 = Some(now);
            t.2 += batch.len() as u64;
            Ok(())
        }
    }

    fn rate(&self) -> f64 {
        let t = self.0.lock().unwrap();
        match (t.0, t.1) {
            (Some(first), Some(last)) if last > first => t.2 as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// The CPU-bound catch-up rates over the whole feed, from the first batch to the last: the
/// single consumer, a group of one range, of eight.
async fn catch_up(stores: &Stores) -> Fallible<[f64; 3]> {
    let single = stores
        .subscription(&format!("single-{}", Uuid::new_v4().simple()))?
        .for_aggregate::<Shipment>()
        .batch_size(BATCH)?;
    let timed = Timed::default();
    single.catch_up(timed.handler()).await?;
    let mut rates = [timed.rate(), 0.0, 0.0];
    for (i, ranges) in [(1, 1), (2, 8)] {
        let group = group(stores, &format!("cpu-{}", Uuid::new_v4().simple()), ranges, false)?;
        let head = stores.events.head(0).await?.position;
        let timed = Timed::default();
        let done = async {
            let _ = group.wait_for(head, Duration::from_secs(600)).await;
        };
        group.run(1, |_range| timed.handler(), done).await?;
        rates[i] = timed.rate();
    }
    Ok(rates)
}

struct Options {
    stores: Vec<String>,
    events: usize,
    pause: Duration,
    postgres: String,
    workers: Vec<u32>,
    /// The steady traffic of the lag cells, events/s, and for how long; none: no lag cells.
    rate: Option<usize>,
    seconds: u64,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        stores: vec!["memory".into(), "sqlite".into(), "postgres".into()],
        events: 40_000,
        pause: Duration::from_millis(5),
        workers: WORKERS.to_vec(),
        rate: None,
        seconds: 10,
        postgres: std::env::var("EVENTSOURCE_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?schema=bench_groups".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--stores" => options.stores = value()?.split(',').map(str::to_owned).collect(),
            "--events" => options.events = value()?.parse()?,
            "--pause" => options.pause = Duration::from_millis(value()?.parse()?),
            "--postgres" => options.postgres = value()?,
            "--workers" => options.workers = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--rate" => options.rate = Some(value()?.parse()?),
            "--seconds" => options.seconds = value()?.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(options)
}

/// Fresh stores of one kind: a new file for SQLite, the schema emptied for PostgreSQL.
async fn stores_of(kind: &str, options: &Options, dir: &Path) -> Fallible<(Stores, Option<String>)> {
    Ok(match kind {
        "memory" => (Stores::in_memory(), None),
        "sqlite" => {
            let url = format!("sqlite:{}", dir.join("groups.db").display());
            (backend::open(&url).await?, Some(url))
        }
        "postgres" => {
            let url = options.postgres.clone();
            let schema = url
                .split("schema=")
                .nth(1)
                .map(|s| s.split('&').next().unwrap_or(s).to_owned())
                .ok_or("the PostgreSQL URL needs a schema=... of the benchmark's own: it is dropped")?;
            let base = url.split('?').next().unwrap_or(&url).to_owned();
            let admin = backend::postgres::sqlx::PgPool::connect(&base).await?;
            backend::postgres::sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&admin)
                .await?;
            admin.close().await;
            let stores = backend::open(&url).await?;
            stores.migrate().await?;
            (stores, Some(url))
        }
        other => return Err(format!("unknown store {other}").into()),
    })
}

#[tokio::main]
async fn main() -> Fallible {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        let [_, _, url, name, ranges, pause, gate] = &args[..] else {
            return Err("--worker URL NAME RANGES PAUSE GATE".into());
        };
        return worker(
            url,
            name,
            ranges.parse()?,
            Duration::from_millis(pause.parse()?),
            Path::new(gate),
        )
        .await;
    }
    let options = options()?;
    let pause = options.pause;
    println!(
        "{} events, ten per aggregate; I/O-bound handler: {} ms per batch of {BATCH}",
        options.events,
        pause.as_millis()
    );
    println!(
        "{:<9} {:<10} {:>8} {:>12} {:>9}",
        "store", "workers", "where", "events/s", "speed-up"
    );
    for kind in &options.stores {
        let dir = tempfile::tempdir()?;
        let (stores, url) = stores_of(kind, &options, dir.path()).await?;
        if let Some(rate) = options.rate {
            for &workers in &options.workers {
                let ([median, p99, max], reached, drained) =
                    steady(&stores, workers, pause, rate, options.seconds).await?;
                let ms = |events: u64| events as f64 * 1000.0 / reached;
                println!(
                    "{kind:<9} {workers:<10} lag at {reached:.0} events/s for {} s: median {median} events ({:.0} ms), p99 {p99} ({:.0} ms), largest {max} ({:.0} ms); the rest handed over {:.0} ms after the last append",
                    options.seconds,
                    ms(median),
                    ms(p99),
                    ms(max),
                    drained.as_secs_f64() * 1000.0
                );
            }
            continue;
        }
        let mut places = vec!["process"];
        if url.is_some() {
            places.push("processes");
        }
        for place in places {
            let mut first = None;
            for &workers in &options.workers {
                let rate = match (place, &url) {
                    ("processes", Some(url)) => {
                        in_processes(&stores, url, options.events, workers, pause).await?
                    }
                    _ => in_process(&stores, options.events, workers, pause).await?,
                };
                let base = *first.get_or_insert(rate);
                println!(
                    "{kind:<9} {workers:<10} {place:>8} {rate:>12.0} {:>8.2}x",
                    rate / base
                );
            }
        }
        let [single, one, eight] = catch_up(&stores).await?;
        println!(
            "{kind:<9} CPU-bound catch-up of the whole feed: single consumer {single:.0} events/s, group of 1 range {one:.0} ({:.2}x), of 8 ranges {eight:.0} ({:.2}x)",
            one / single,
            eight / single
        );
    }
    Ok(())
}
