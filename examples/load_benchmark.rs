//! The load-time table of the snapshotting tutorial, measured on every store.
//!
//! ```text
//! cargo run --release --example load_benchmark -- [--stores memory,sqlite,postgres]
//!     [--sizes 100,1000,10000,100000,1000000] [--runs 15] [--postgres URL]
//!     [--runtime multi-thread|current-thread]
//! ```
//!
//! For each store and history length N it builds one account of N events (1 AccountOpened,
//! then N-1 MoneyDeposited, appended straight to the event store in batches of 1,000) and
//! times: a load with no snapshot store (full replay), a load with a snapshot at N, a load
//! with a snapshot at N-50, and saves of one event with no snapshots, with a sync snapshot on
//! every save, and with a background snapshot on every save. Each cell is the median of the
//! runs in milliseconds, with the fastest and slowest run, after untimed warm-up calls (ten,
//! or as many as fit in half a second; see [`WARM_UP_CALLS`]). The last column is how much the
//! process's peak resident memory rose during the full replays (Linux), which shows whether
//! replay memory grows with N.
//!
//! SQLite runs on a new file in a temporary directory; PostgreSQL on `--postgres` (default
//! `$EVENTSOURCE_TEST_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test`), in
//! fresh aggregates, after migrating.

#[path = "domain/account.rs"]
#[allow(dead_code)]
mod account;

use std::time::Instant;

use account::{Account, AccountEvent, AccountOpened, MoneyDeposited};
use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::EventEnvelope;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error>>;

const BATCH: u64 = 1_000;

/// Untimed calls before a cell's runs: up to this many, or as many as fit in
/// [`WARM_UP_TIME`] (at least one). A pool hands out its connections in turn, and each one
/// prepares a statement the first time it runs it and PostgreSQL plans it afresh its first
/// five runs, so a cell timed after a single call would time that warming-up rather than the
/// steady state an application runs in.
const WARM_UP_CALLS: usize = 10;
const WARM_UP_TIME: std::time::Duration = std::time::Duration::from_millis(500);

struct Options {
    stores: Vec<String>,
    sizes: Vec<u64>,
    runs: usize,
    postgres: String,
    runtime: String,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        stores: vec!["memory".into(), "sqlite".into(), "postgres".into()],
        sizes: vec![100, 1_000, 10_000, 100_000, 1_000_000],
        runs: 15,
        postgres: std::env::var("EVENTSOURCE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        runtime: "multi-thread".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--stores" => options.stores = value.split(',').map(str::to_owned).collect(),
            "--sizes" => {
                options.sizes = value
                    .split(',')
                    .map(|s| s.replace('_', "").parse())
                    .collect::<Result<_, _>>()?
            }
            "--runs" => options.runs = value.parse()?,
            "--postgres" => options.postgres = value,
            "--runtime" => options.runtime = value,
            _ => {
                return Err(
                    format!("unknown flag {flag}; see the header of examples/load_benchmark.rs").into(),
                )
            }
        }
    }
    if options.sizes.iter().any(|&n| n <= 50) {
        return Err("sizes must be above 50 (one cell loads a snapshot at N-50)".into());
    }
    Ok(options)
}

/// The state after `version` events of the benchmark's history.
fn state_at(version: u64) -> Account {
    Account {
        owner_name: "Bench".into(),
        balance: 100_000 + 100 * (version - 1) as i64,
        transaction_count: version - 1,
    }
}

fn envelope(id: Uuid, version: u64) -> EventEnvelope {
    let event: AccountEvent = if version == 1 {
        AccountOpened {
            owner_name: "Bench".into(),
            initial_balance: 100_000,
        }
        .into()
    } else {
        MoneyDeposited { amount: 100 }.into()
    };
    EventEnvelope::new(id, "Account", version, &event).expect("benchmark events encode")
}

/// Appends the events `from..=to` of the history in batches.
async fn append_history(events: &dyn EventStore, id: Uuid, from: u64, to: u64) -> Fallible {
    let mut next = from;
    while next <= to {
        let last = (next + BATCH - 1).min(to);
        let batch: Vec<EventEnvelope> = (next..=last).map(|v| envelope(id, v)).collect();
        events.append(id, "Account", next - 1, &batch).await?;
        next = last + 1;
    }
    Ok(())
}

/// Median, fastest and slowest of the samples, in milliseconds.
struct Cell(Vec<f64>);

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut samples = self.0.clone();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        write!(
            f,
            "{} ({}–{})",
            ms(median),
            ms(samples[0]),
            ms(samples[samples.len() - 1])
        )
    }
}

fn ms(value: f64) -> String {
    match value {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v if v >= 0.01 => format!("{v:.3}"),
        v => format!("{v:.4}"),
    }
}

/// The warm-up calls of a cell: the first always, each next one while the warm-up has
/// lasted less than [`WARM_UP_TIME`], [`WARM_UP_CALLS`] at most.
fn warm_up() -> impl Iterator<Item = ()> {
    let start = Instant::now();
    (0..WARM_UP_CALLS)
        .map(|_| ())
        .take_while(move |()| start.elapsed() < WARM_UP_TIME)
}

async fn time<F, Fut, T>(runs: usize, mut op: F) -> Fallible<Cell>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    for () in warm_up() {
        op().await?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        op().await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Cell(samples))
}

/// Times `runs` saves of one new event each.
async fn time_saves(
    repo: &Repository<Account>,
    root: &mut AggregateRoot<Account>,
    runs: usize,
) -> Fallible<Cell> {
    for () in warm_up() {
        root.record(MoneyDeposited { amount: 100 });
        repo.save(root).await?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        root.record(MoneyDeposited { amount: 100 });
        let start = Instant::now();
        repo.save(root).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Cell(samples))
}

/// Resets the process's peak resident memory (Linux), so the next reading covers what follows.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's resident and peak resident memory in KiB (Linux), if known.
fn memory_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

async fn bench(stores: &Stores, n: u64, runs: usize) -> Fallible<String> {
    let (label, events) = (stores.backend_name(), &*stores.events);
    let id = Uuid::new_v4();
    let build = Instant::now();
    append_history(events, id, 1, n - 50).await?;
    let manual = stores.repository_with_snapshots::<Account>(SnapshotPolicy::manual());
    manual
        .create_snapshot(&AggregateRoot::from_state(id, n - 50, state_at(n - 50)))
        .await?;
    append_history(events, id, n - 49, n).await?;
    eprintln!(
        "  {label} N={n}: history built in {:.1}s",
        build.elapsed().as_secs_f64()
    );

    let plain = stores.repository::<Account>();
    let replay_runs = if n >= 1_000_000 { runs.min(3) } else { runs };
    let check = |root: &AggregateRoot<Account>| {
        assert_eq!(root.state(), &state_at(n), "loaded state is the replayed state")
    };
    let at_n_minus_50 = time(runs, || manual.load(id)).await?;
    check(&manual.load(id).await?);
    let (rss_before, _) = memory_kib().unwrap_or_default();
    reset_peak_memory();
    let full = time(replay_runs, || plain.load(id)).await?;
    let peak = memory_kib().map(|(_, peak)| peak.saturating_sub(rss_before));
    check(&plain.load(id).await?);
    manual
        .create_snapshot(&AggregateRoot::from_state(id, n, state_at(n)))
        .await?;
    let at_n = time(runs, || manual.load(id)).await?;
    check(&manual.load(id).await?);

    let mut root = plain.load(id).await?;
    let save = time_saves(&plain, &mut root, runs).await?;
    let sync = stores.repository_with_snapshots::<Account>(SnapshotPolicy::every(1)?);
    let save_sync = time_saves(&sync, &mut root, runs).await?;
    let background = stores
        .repository_with_snapshots::<Account>(SnapshotPolicy::every(1)?.with_mode(SnapshotMode::Background));
    let save_background = time_saves(&background, &mut root, runs).await?;
    background.await_pending_snapshots().await;

    let peak = peak.map_or_else(|| "n/a".into(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0));
    Ok(format!(
        "| {label} | {n} | {full} | {at_n} | {at_n_minus_50} | {save} | {save_sync} | {save_background} | {peak} |"
    ))
}

async fn stores_for(name: &str, options: &Options, dir: &std::path::Path) -> Fallible<Stores> {
    let url = match name {
        "memory" => "memory:".to_owned(),
        "sqlite" => format!(
            "sqlite:{}",
            dir.join(format!("bench-{}.db", Uuid::new_v4())).display()
        ),
        "postgres" => options.postgres.clone(),
        other => return Err(format!("unknown store {other}: expected memory, sqlite or postgres").into()),
    };
    let stores = eventsourcing_kit::backend::open(&url).await?;
    stores.migrate().await?;
    Ok(stores)
}

fn main() -> Fallible {
    let options = options()?;
    let mut runtime = match options.runtime.as_str() {
        "multi-thread" => tokio::runtime::Builder::new_multi_thread(),
        "current-thread" => tokio::runtime::Builder::new_current_thread(),
        other => {
            return Err(format!("unknown runtime {other}: expected multi-thread or current-thread").into())
        }
    };
    runtime.enable_all().build()?.block_on(run(options))
}

async fn run(options: Options) -> Fallible {
    let dir = std::env::temp_dir().join(format!("eventsource-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "Median ms per operation (fastest–slowest of {} runs; 1,000,000-event replays: at most 3 runs), \
         {} tokio runtime\n",
        options.runs, options.runtime
    );
    println!("| store | N | load, no snapshot | load, snapshot at N | load, snapshot at N-50 | save 1, no snapshot | save 1 + sync snapshot | save 1 + background snapshot | replay peak memory rise |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for store in &options.stores {
        for &n in &options.sizes {
            let stores = stores_for(store, &options, &dir).await?;
            let row = bench(&stores, n, options.runs).await?;
            println!("{row}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
