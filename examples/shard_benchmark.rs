//! Sharding measured: what a load and a one-event save cost as the store grows, on one
//! database and on four shards, and how many one-event commands 64 writers run on 1, 2 and 4
//! shards, each shard a PostgreSQL server of its own.
//!
//! ```text
//! cargo run --release --features eventsourcing-kit/postgres --example shard_benchmark -- \
//!     [--sizes 100000,1000000,10000000] [--runs 25] [--writers 64] [--seconds 10] \
//!     [--postgres URL] [--only size|writers]
//! ```
//!
//! **Store size.** For each size N, the events table of one database (a schema of
//! `--postgres`), and of each of four shards (four schemas of that server, `ShardMap::even`),
//! is filled with N events in all: N / 100 accounts of 100 events (1 `AccountOpened`, 99
//! `MoneyDeposited`). The fill is SQL on the server, `INSERT ... SELECT` from
//! `generate_series` in transactions of 10,000 accounts, each account id `md5('bench-' || i)`
//! and kept by the shard whose slices hold it (the slice formula of `eventsourcing_kit::slice`), then
//! `ANALYZE`: rows as the library writes them, but a million times faster than commands. Then,
//! on 16 accounts picked across the store, each cell is the median of `--runs` calls (after
//! 200 untimed calls) in milliseconds: a load replaying all 100 events, a load from a snapshot at
//! the head, and a save of one event (the load before it untimed).
//!
//! **Writers.** For 1, 2 and 4 shards it starts that many PostgreSQL clusters of its own (as
//! the `postgres` user, on free ports, each in a temporary directory, stopped at the end),
//! puts them together with `sharded::open`, and runs `--writers` tasks that each create accounts
//! (one `AccountOpened` command after the other) for `--seconds`; it prints the commands per
//! second. On a machine of few cores the clusters share them: the figure shows where the
//! ceiling moves when the databases' own work is split, not what separate machines give.

#[path = "domain/account.rs"]
#[allow(dead_code)]
mod account;
#[path = "../tests/common/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::time::{Duration, Instant};

use account::{Account, AccountCommands};
use cluster::ScratchCluster;
use eventsourcing_kit::backend::postgres::sqlx::{self, Executor};
use eventsourcing_kit::backend::sharded::{self, ShardMap};
use eventsourcing_kit::backend::{self, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::slice::SliceCount;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Events per account in the size cells.
const EVENTS_PER_ACCOUNT: u64 = 100;

/// Accounts filled in one transaction: their events' positions share the transaction's, and a
/// transaction numbers at most 2^20 - 1 of them.
const FILL_CHUNK: u64 = 10_000;

/// Accounts timed in each size cell, taken in turn.
const SAMPLED: usize = 16;

struct Options {
    sizes: Vec<u64>,
    runs: usize,
    writers: usize,
    seconds: u64,
    postgres: String,
    size: bool,
    writing: bool,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        sizes: vec![100_000, 1_000_000, 10_000_000],
        runs: 25,
        writers: 64,
        seconds: 10,
        postgres: std::env::var("EVENTSOURCE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        size: true,
        writing: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                options.sizes = value()?
                    .split(',')
                    .map(|n| n.parse::<u64>().map(|n| n.max(EVENTS_PER_ACCOUNT)))
                    .collect::<Result<_, _>>()?;
            }
            "--runs" => options.runs = value()?.parse::<usize>()?.max(1),
            "--writers" => options.writers = value()?.parse::<usize>()?.max(1),
            "--seconds" => options.seconds = value()?.parse::<u64>()?.max(1),
            "--postgres" => options.postgres = value()?,
            "--only" => match value()?.as_str() {
                "size" => options.writing = false,
                "writers" => options.size = false,
                other => return Err(format!("--only size or --only writers, not {other}").into()),
            },
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(options)
}

fn main() -> Fallible {
    let options = options()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(options))
}

async fn run(options: Options) -> Fallible {
    if options.size {
        println!(
            "store size: median ms over {} runs (fastest-slowest)",
            options.runs
        );
        println!(
            "{:>12} {:>9} {:>22} {:>22} {:>22}",
            "events", "shards", "load (100 events)", "load (snapshot)", "save (1 event)"
        );
        for &n in &options.sizes {
            for shards in [1, 4] {
                let row = size_cell(&options, n, shards).await?;
                println!("{:>12} {:>9} {row}", n, shards);
            }
        }
    }
    if options.writing {
        println!(
            "\n{} writers creating accounts for {} s, each shard a PostgreSQL cluster of its own",
            options.writers, options.seconds
        );
        println!("{:>7} {:>12} {:>12}", "shards", "commands", "per second");
        for shards in [1, 2, 4] {
            let (done, rate) = writers_cell(&options, shards).await?;
            println!("{shards:>7} {done:>12} {rate:>12.0}");
        }
    }
    Ok(())
}

/// The URL of `schema` on the server of `url`.
fn in_schema(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}schema={schema}")
}

/// One row of the size table: `n` events over `shards` schemas of the server.
async fn size_cell(options: &Options, n: u64, shards: usize) -> Fallible<String> {
    let pool = sqlx::PgPool::connect(&options.postgres).await?;
    let map = ShardMap::even(SliceCount::DEFAULT, shards)?;
    let mut stores = Vec::new();
    for shard in 0..shards {
        let schema = format!("shard_bench_{n}_{shard}_of_{shards}");
        pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await?;
        let shard_stores = backend::open(&in_schema(&options.postgres, &schema)).await?;
        shard_stores.migrate().await?;
        let range = map.ranges_of(shard)[0];
        fill(
            &pool,
            &schema,
            n / EVENTS_PER_ACCOUNT,
            range.first(),
            range.last(),
        )
        .await?;
        stores.push(shard_stores);
    }
    let stores = sharded::open(map, stores).await?;
    let ids = sample_ids(&stores).await?;
    let plain = stores.repository::<Account>();
    let snapshots = stores.repository_with_snapshots::<Account>(SnapshotPolicy::every(1)?);
    let mut loads = Vec::new();
    for (i, id) in warm_and_cycle(&ids, options.runs) {
        let started = Instant::now();
        plain.load(id).await?;
        if i.is_some() {
            loads.push(started.elapsed());
        }
    }
    // A snapshot at each sampled account's head: one deposit with a snapshot on every save.
    for id in &ids {
        snapshots.command(*id).run(|a| a.deposit(100)).await?;
    }
    let mut snapshot_loads = Vec::new();
    for (i, id) in warm_and_cycle(&ids, options.runs) {
        let started = Instant::now();
        snapshots.load(id).await?;
        if i.is_some() {
            snapshot_loads.push(started.elapsed());
        }
    }
    let mut saves = Vec::new();
    for (i, id) in warm_and_cycle(&ids, options.runs) {
        let mut account = plain.load(id).await?;
        account.deposit(100)?;
        let started = Instant::now();
        plain.save(&mut account).await?;
        if i.is_some() {
            saves.push(started.elapsed());
        }
    }
    for shard in 0..shards {
        let schema = format!("shard_bench_{n}_{shard}_of_{shards}");
        pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await?;
    }
    Ok(format!(
        "{:>22} {:>22} {:>22}",
        cell(loads),
        cell(snapshot_loads),
        cell(saves)
    ))
}

/// Untimed calls before each cell's timed ones: every connection of every shard's pool
/// prepares its statements on its first calls, and PostgreSQL plans a statement afresh its
/// first five runs on a connection.
const WARM_UP_CALLS: usize = 200;

/// The sampled ids in turn: `WARM_UP_CALLS` untimed calls (`None`), then `runs` timed ones.
fn warm_and_cycle(ids: &[Uuid], runs: usize) -> impl Iterator<Item = (Option<usize>, Uuid)> + '_ {
    (0..WARM_UP_CALLS + runs).map(move |i| (i.checked_sub(WARM_UP_CALLS), ids[i % ids.len()]))
}

/// Fills `schema`'s events table with the accounts `md5('bench-' || i)`, `i` from 1 to
/// `accounts`, whose slice lies in `first..=last`: 100 events each.
async fn fill(pool: &sqlx::PgPool, schema: &str, accounts: u64, first: u32, last: u32) -> Fallible {
    let mut from = 1;
    while from <= accounts {
        let to = (from + FILL_CHUNK - 1).min(accounts);
        sqlx::query(&format!(
            "INSERT INTO {schema}.eventsource_events (position, event_id, event_type, event_version,
                aggregate_id, aggregate_type, aggregate_version, occurred_at, occurred_at_ns, payload)
             SELECT (pg_current_xact_id()::text::bigint << 20) + row_number() OVER (ORDER BY a.id, v), gen_random_uuid(),
                CASE WHEN v = 1 THEN 'AccountOpened' ELSE 'MoneyDeposited' END, 1, a.id, 'Account', v,
                now(), 0,
                CASE WHEN v = 1 THEN '{{\"owner_name\":\"bench\",\"initial_balance\":0}}'::json
                     ELSE '{{\"amount\":100}}'::json END
             FROM (SELECT md5('bench-' || i)::uuid AS id FROM generate_series($1::bigint, $2::bigint) i) a
             CROSS JOIN generate_series(1, {EVENTS_PER_ACCOUNT}) v
             WHERE (('x' || substr(md5('Account:' || a.id::text), 1, 8))::bit(32)::integer & 1023)
                BETWEEN $3 AND $4"
        ))
        .bind(from as i64)
        .bind(to as i64)
        .bind(first as i32)
        .bind(last as i32)
        .execute(pool)
        .await?;
        from = to + 1;
    }
    pool.execute(format!("ANALYZE {schema}.eventsource_events").as_str())
        .await?;
    Ok(())
}

/// `SAMPLED` accounts spread over the store: the first accounts of each shard's listing.
async fn sample_ids(stores: &Stores) -> Fallible<Vec<Uuid>> {
    let mut ids: Vec<Uuid> = stores
        .stream_versions("Account")
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    let step = (ids.len() / SAMPLED).max(1);
    Ok(ids.into_iter().step_by(step).take(SAMPLED).collect())
}

/// Median (fastest-slowest) of the times, in milliseconds.
fn cell(mut times: Vec<Duration>) -> String {
    times.sort_unstable();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.3} ({:.3}-{:.3})",
        ms(&times[times.len() / 2]),
        ms(&times[0]),
        ms(&times[times.len() - 1])
    )
}

/// `options.writers` writers creating accounts for `options.seconds` on `shards` clusters.
async fn writers_cell(options: &Options, shards: usize) -> Fallible<(u64, f64)> {
    let clusters: Vec<ScratchCluster> = (0..shards)
        .map(|_| {
            ScratchCluster::start("-c max_connections=200")
                .ok_or("cannot start a PostgreSQL cluster: the server programs, and root to run them as postgres, are needed")
        })
        .collect::<Result<_, _>>()?;
    let mut stores = Vec::new();
    for cluster in &clusters {
        let url = format!(
            "{}?max_connections={}",
            cluster.url(),
            (options.writers / shards).clamp(4, 64)
        );
        let shard_stores = backend::open(&url).await?;
        shard_stores.migrate().await?;
        stores.push(shard_stores);
    }
    let stores = sharded::open(ShardMap::even(SliceCount::DEFAULT, shards)?, stores).await?;
    let repo = stores.repository::<Account>();
    // Warm-up: every connection of every pool prepares its statements.
    let warm = Instant::now() + Duration::from_millis(500);
    create_accounts(&repo, options.writers, warm).await?;
    let started = Instant::now();
    let done = create_accounts(
        &repo,
        options.writers,
        started + Duration::from_secs(options.seconds),
    )
    .await?;
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop(stores);
    drop(clusters);
    Ok((done, rate))
}

/// `writers` tasks creating accounts until `deadline`; how many they created.
async fn create_accounts(repo: &Repository<Account>, writers: usize, deadline: Instant) -> Fallible<u64> {
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    repo.command(Uuid::new_v4())
                        .create_only()
                        .run(|a| a.open("Ada", 0))
                        .await
                        .map_err(|e| e.to_string())?;
                    done += 1;
                }
                Ok::<u64, String>(done)
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    Ok(done)
}
