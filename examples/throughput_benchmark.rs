//! Save throughput under concurrent writers, on SQLite and PostgreSQL, beside the server's own
//! ceiling:
//!
//! - **own accounts**: 1, 16 and 64 writers, each on an account of its own that it loaded
//!   once and keeps, each operation one deposit event recorded and saved, no snapshots;
//! - **hot accounts**: 64 writers on 4 accounts through `Repository::command` with retry (up
//!   to 50 attempts, backoff from 1 ms to 50 ms), each command a load, a deposit and a save,
//!   without and with the per-aggregate command queue, no snapshots (so each load replays
//!   the account's stream, which grows during the cell).
//!
//! Each cell runs for `--seconds` after an untimed warm-up (on their own accounts, every
//! writer opens its account and saves 5 deposits; on the hot accounts, the writers run
//! commands for 100 ms), on a multi-threaded runtime. It prints saves per second
//! (successful saves or commands over the time from the start until the last writer
//! finished), the p50 and p99 latency of a save (of a command, retries included, on the hot
//! accounts), the retries per save, and the saves that failed.
//!
//! SQLite runs in a file of its own per cell in a temporary directory; PostgreSQL in a schema
//! of its own (`bench_<random>`, dropped at the end) on a pool of 70 connections.
//! With `--pgbench`, `benches/pgbench_insert.sh` runs against the same server in the same run
//! (after the PostgreSQL cells, for as many seconds per client count), and each PostgreSQL row
//! shows pgbench's commits per second at its number of writers and the row's share of it.
//!
//! `--cells` runs some of the cells: `own:N` for N writers on their own accounts, `hot` and
//! `hot-queued` for the hot accounts without and with the command queue (all five by
//! default: `own:1,own:16,own:64,hot,hot-queued`).
//!
//! ```text
//! cargo run --release --all-features --example throughput_benchmark -- \
//!     [--seconds 5] [--postgres URL] [--sqlite-only | --postgres-only] [--pgbench] \
//!     [--cells own:64,hot-queued]
//! ```

#[path = "domain/account.rs"]
#[allow(dead_code)]
mod account;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use account::{Account, AccountCommands};
use eventsourcing_kit::backend::postgres::sqlx;
use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::prelude::*;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Deposits every writer saves before its cell's clock starts.
const WARM_UP_SAVES: usize = 5;
/// Writers on the hot accounts, and the accounts they share.
const HOT_WRITERS: usize = 64;
const HOT_ACCOUNTS: usize = 4;
/// The PostgreSQL pool: one connection per writer of the largest cell, and a few spare.
const POSTGRES_CONNECTIONS: u32 = 70;

struct Options {
    seconds: u64,
    postgres: String,
    sqlite: bool,
    postgres_enabled: bool,
    pgbench: bool,
    cells: Vec<Workload>,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        seconds: 5,
        postgres: std::env::var("EVENTSOURCE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        sqlite: true,
        postgres_enabled: true,
        pgbench: false,
        cells: Workload::all().to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seconds" => options.seconds = value(&flag, args.next())?.parse()?,
            "--postgres" => options.postgres = value(&flag, args.next())?,
            "--sqlite-only" => options.postgres_enabled = false,
            "--postgres-only" => options.sqlite = false,
            "--pgbench" => options.pgbench = true,
            "--cells" => {
                options.cells = value(&flag, args.next())?
                    .split(',')
                    .map(Workload::named)
                    .collect::<Fallible<_>>()?
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if !options.sqlite && !options.postgres_enabled {
        return Err("--sqlite-only and --postgres-only exclude each other".into());
    }
    if options.pgbench && !options.postgres_enabled {
        return Err("--pgbench runs against the PostgreSQL server: drop --sqlite-only".into());
    }
    Ok(options)
}

fn value(flag: &str, value: Option<String>) -> Fallible<String> {
    value.ok_or_else(|| format!("{flag} needs a value").into())
}

/// What a cell's writers do.
#[derive(Clone, Copy)]
enum Workload {
    /// Each writer saves deposits on an account of its own.
    OwnAccounts { writers: usize },
    /// The writers run deposit commands on a few shared accounts.
    HotAccounts { queued: bool },
}

impl Workload {
    fn all() -> [Workload; 5] {
        [
            Workload::OwnAccounts { writers: 1 },
            Workload::OwnAccounts { writers: 16 },
            Workload::OwnAccounts { writers: 64 },
            Workload::HotAccounts { queued: false },
            Workload::HotAccounts { queued: true },
        ]
    }

    /// The cell `own:N`, `hot` or `hot-queued`.
    fn named(name: &str) -> Fallible<Workload> {
        Ok(match name {
            "hot" => Workload::HotAccounts { queued: false },
            "hot-queued" => Workload::HotAccounts { queued: true },
            _ => match name.strip_prefix("own:").map(str::parse) {
                Some(Ok(writers)) if writers > 0 => Workload::OwnAccounts { writers },
                _ => return Err(format!("unknown cell {name}: own:N, hot or hot-queued").into()),
            },
        })
    }

    fn writers(self) -> usize {
        match self {
            Workload::OwnAccounts { writers } => writers,
            Workload::HotAccounts { .. } => HOT_WRITERS,
        }
    }

    fn accounts(self) -> usize {
        match self {
            Workload::OwnAccounts { writers } => writers,
            Workload::HotAccounts { .. } => HOT_ACCOUNTS,
        }
    }

    fn through(self) -> &'static str {
        match self {
            Workload::OwnAccounts { .. } => "save",
            Workload::HotAccounts { queued: false } => "command + retry",
            Workload::HotAccounts { queued: true } => "command + retry + queue",
        }
    }
}

/// What the writers of a cell did in the measured time.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    retries: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, error: impl std::fmt::Display) {
        self.failed += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.retries += other.retries;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One row of the table.
struct Row {
    backend: &'static str,
    workload: Workload,
    tally: Tally,
    elapsed: Duration,
}

/// Runs one cell on the event store and measures it.
async fn cell(
    events: Arc<dyn EventStore>,
    workload: Workload,
    window: Duration,
) -> Fallible<(Tally, Duration)> {
    match workload {
        Workload::OwnAccounts { writers } => own_accounts(Repository::new(events), writers, window).await,
        Workload::HotAccounts { queued } => {
            let repo = Repository::new(events);
            let repo = if queued { repo.with_command_queue() } else { repo };
            hot_accounts(repo, window).await
        }
    }
}

/// `writers` writers, each saving deposits on its own account until the window has passed.
async fn own_accounts(
    repo: Repository<Account>,
    writers: usize,
    window: Duration,
) -> Fallible<(Tally, Duration)> {
    let mut opening = Vec::new();
    for _ in 0..writers {
        opening.push(tokio::spawn(open_and_warm(repo.clone())));
    }
    let mut accounts = Vec::new();
    for account in opening {
        accounts.push(account.await??);
    }
    let started = Instant::now();
    let deadline = started + window;
    let saving: Vec<_> = accounts
        .into_iter()
        .map(|account| tokio::spawn(save_deposits(repo.clone(), account, deadline)))
        .collect();
    let mut tally = Tally::default();
    for writer in saving {
        tally.merge(writer.await??);
    }
    Ok((tally, started.elapsed()))
}

/// A new account, opened and given a few deposits.
async fn open_and_warm(repo: Repository<Account>) -> Fallible<AggregateRoot<Account>> {
    let mut account = repo.create_new(Uuid::new_v4());
    account.open("Ada", 0)?;
    repo.save(&mut account).await?;
    for _ in 0..WARM_UP_SAVES {
        account.deposit(100)?;
        repo.save(&mut account).await?;
    }
    Ok(account)
}

/// Records and saves one deposit after another until the deadline. A save that fails is
/// saved again as it is (the store recognises events it already holds).
async fn save_deposits(
    repo: Repository<Account>,
    mut account: AggregateRoot<Account>,
    deadline: Instant,
) -> Fallible<Tally> {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        if !account.has_pending_events() {
            account.deposit(100)?;
        }
        match repo.save(&mut account).await {
            Ok(_) => tally.latencies.push(started.elapsed()),
            Err(e) => tally.fail(e),
        }
    }
    Ok(tally)
}

/// `HOT_WRITERS` writers running deposit commands on `HOT_ACCOUNTS` accounts until the window
/// has passed, writer `i` on account `i % HOT_ACCOUNTS`.
async fn hot_accounts(repo: Repository<Account>, window: Duration) -> Fallible<(Tally, Duration)> {
    let mut accounts = Vec::new();
    for _ in 0..HOT_ACCOUNTS {
        let id = Uuid::new_v4();
        repo.command(id).create_only().run(|a| a.open("Ada", 0)).await?;
        accounts.push(id);
    }
    let ids: Vec<Uuid> = (0..HOT_WRITERS).map(|i| accounts[i % HOT_ACCOUNTS]).collect();
    let warm_up = Instant::now() + Duration::from_millis(100);
    run_commands(&repo, &ids, warm_up).await?;
    let started = Instant::now();
    let tally = run_commands(&repo, &ids, started + window).await?;
    Ok((tally, started.elapsed()))
}

/// One writer per id, each running deposit commands until the deadline.
async fn run_commands(repo: &Repository<Account>, ids: &[Uuid], deadline: Instant) -> Fallible<Tally> {
    let writers: Vec<_> = ids
        .iter()
        .map(|&id| tokio::spawn(deposit_commands(repo.clone(), id, deadline)))
        .collect();
    let mut tally = Tally::default();
    for writer in writers {
        tally.merge(writer.await?);
    }
    Ok(tally)
}

/// Runs deposit commands on one account until the deadline.
async fn deposit_commands(repo: Repository<Account>, id: Uuid, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let done = repo
            .command(id)
            .retry(50, Duration::from_millis(1), Duration::from_millis(50))
            .run(|a| a.deposit(100))
            .await;
        match done {
            Ok(executed) => {
                tally.latencies.push(started.elapsed());
                tally.retries += u64::from(executed.attempts - 1);
            }
            Err(e) => tally.fail(e),
        }
    }
    tally
}

/// Every cell on the SQLite backend, each in a new file in `dir`.
async fn sqlite_rows(dir: &std::path::Path, cells: &[Workload], window: Duration) -> Fallible<Vec<Row>> {
    let mut rows = Vec::new();
    for (n, &workload) in cells.iter().enumerate() {
        let url = format!("sqlite:{}", dir.join(format!("cell-{n}.db")).display());
        let stores = eventsourcing_kit::backend::open(&url).await?;
        rows.push(measure("sqlite", &stores, workload, window).await?);
    }
    Ok(rows)
}

/// Every cell on the PostgreSQL backend, in a schema of its own, dropped afterwards.
async fn postgres_rows(url: &str, cells: &[Workload], window: Duration) -> Fallible<Vec<Row>> {
    let schema = format!("bench_{}", Uuid::new_v4().simple());
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}schema={schema}&max_connections={POSTGRES_CONNECTIONS}");
    let stores = eventsourcing_kit::backend::open(&url).await?;
    let rows = postgres_cells(&stores, cells, window).await;
    let pool = stores.postgres().ok_or("not a PostgreSQL store")?.pool();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(pool)
        .await?;
    rows
}

async fn postgres_cells(stores: &Stores, cells: &[Workload], window: Duration) -> Fallible<Vec<Row>> {
    stores.migrate().await?;
    let mut rows = Vec::new();
    for &workload in cells {
        rows.push(measure("postgres", stores, workload, window).await?);
    }
    Ok(rows)
}

/// Runs one cell and reports its progress on stderr.
async fn measure(
    backend: &'static str,
    stores: &Stores,
    workload: Workload,
    window: Duration,
) -> Fallible<Row> {
    eprintln!(
        "{backend}: writers {}, accounts {}, through {}",
        workload.writers(),
        workload.accounts(),
        workload.through()
    );
    let (tally, elapsed) = cell(stores.events.clone(), workload, window).await?;
    if let Some(error) = &tally.first_error {
        eprintln!("  {} failed, the first: {error}", tally.failed);
    }
    Ok(Row {
        backend,
        workload,
        tally,
        elapsed,
    })
}

/// pgbench's commits per second by client count, from `benches/pgbench_insert.sh`.
async fn pgbench(url: &str, seconds: u64) -> Fallible<BTreeMap<usize, f64>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/pgbench_insert.sh");
    eprintln!("pgbench: {script}");
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .args([
            "--url",
            url,
            "--seconds",
            &seconds.to_string(),
            "--clients",
            "1,16,64",
        ])
        .output()
        .await?;
    if !output.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(pgbench_table(&String::from_utf8_lossy(&output.stdout)))
}

/// The rows `| clients | commits/s | ... |` of the script's table.
fn pgbench_table(table: &str) -> BTreeMap<usize, f64> {
    table
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let clients = cells.next()?.parse().ok()?;
            let commits = cells.next()?.parse().ok()?;
            Some((clients, commits))
        })
        .collect()
}

/// The latency at quantile `q` of sorted latencies, in milliseconds.
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1000.0
}

fn print_table(rows: &mut [Row], pgbench: &BTreeMap<usize, f64>) {
    println!(
        "| backend | writers | aggregates | through | saves/s | p50 ms | p99 ms | retries per save | failed | pgbench commits/s | of pgbench |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{}", table_row(row, pgbench));
    }
}

fn table_row(row: &mut Row, pgbench: &BTreeMap<usize, f64>) -> String {
    let tally = &mut row.tally;
    tally.latencies.sort_unstable();
    let saves = tally.latencies.len();
    let per_second = saves as f64 / row.elapsed.as_secs_f64();
    let ceiling = match row.backend {
        "postgres" => pgbench.get(&row.workload.writers()),
        _ => None,
    };
    let (commits, share) = match ceiling {
        Some(commits) => (
            format!("{commits:.0}"),
            format!("{:.0}%", 100.0 * per_second / commits),
        ),
        None => ("".into(), "".into()),
    };
    format!(
        "| {} | {} | {} | {} | {per_second:.0} | {:.2} | {:.2} | {:.2} | {} | {commits} | {share} |",
        row.backend,
        row.workload.writers(),
        row.workload.accounts(),
        row.workload.through(),
        quantile_ms(&tally.latencies, 0.5),
        quantile_ms(&tally.latencies, 0.99),
        tally.retries as f64 / saves.max(1) as f64,
        tally.failed,
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Fallible {
    let options = options()?;
    let window = Duration::from_secs(options.seconds);
    let mut rows = Vec::new();
    if options.sqlite {
        let dir = tempfile::tempdir()?;
        rows.extend(sqlite_rows(dir.path(), &options.cells, window).await?);
    }
    let mut ceiling = BTreeMap::new();
    if options.postgres_enabled {
        rows.extend(postgres_rows(&options.postgres, &options.cells, window).await?);
        if options.pgbench {
            ceiling = pgbench(&options.postgres, options.seconds).await?;
        }
    }
    println!(
        "{} s a cell after a warm-up, {} worker threads; hot accounts: commands retried up to 50 times",
        options.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !ceiling.is_empty() {
        println!("of pgbench: saves/s over pgbench's commits/s at as many clients as writers");
    }
    println!();
    print_table(&mut rows, &ceiling);
    Ok(())
}
