//! Commands under contention: 64 concurrent callers depositing through `Repository::command`,
//! spread over 64 accounts or crowded onto 4, with and without the per-aggregate command
//! queue, on SQLite and PostgreSQL. Prints commands per second, the p50 and p99 latency of a
//! command, and the conflicts met per command.
//!
//! ```text
//! cargo run --release --all-features --example command_benchmark -- \
//!     [--stores sqlite,postgres] [--seconds 5] [--postgres URL]
//! ```

#[path = "domain/account.rs"]
#[allow(dead_code)]
mod account;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use account::{Account, AccountCommands};
use eventsourcing_kit::prelude::*;

const CALLERS: usize = 64;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Options {
    stores: Vec<String>,
    seconds: u64,
    postgres: String,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        stores: vec!["sqlite".into(), "postgres".into()],
        seconds: 5,
        postgres: std::env::var("EVENTSOURCE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--stores" => options.stores = value.split(',').map(str::to_owned).collect(),
            "--seconds" => options.seconds = value.parse()?,
            "--postgres" => options.postgres = value,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(options)
}

/// One cell: every caller deposits in a loop into one of `aggregates` accounts until time is up.
async fn cell(
    events: Arc<dyn EventStore>,
    aggregates: usize,
    queued: bool,
    seconds: u64,
) -> Fallible<String> {
    let mut repo = Repository::<Account>::new(events);
    if queued {
        repo = repo.with_command_queue();
    }
    let mut ids = Vec::new();
    for _ in 0..aggregates {
        let id = Uuid::new_v4();
        repo.command(id).create_only().run(|a| a.open("Ada", 0)).await?;
        ids.push(id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (repo, stop, id) = (repo.clone(), stop.clone(), ids[caller % aggregates]);
            tokio::spawn(async move {
                let (mut latencies, mut extra_attempts) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let done = repo
                        .command(id)
                        .retry(50, Duration::from_millis(1), Duration::from_millis(50))
                        .run(|a| a.deposit(100))
                        .await;
                    match done {
                        Ok(executed) => {
                            latencies.push(started.elapsed());
                            extra_attempts += u64::from(executed.attempts - 1);
                        }
                        Err(e) => eprintln!("a command failed: {e}"),
                    }
                }
                (latencies, extra_attempts)
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut conflicts) = (Vec::new(), 0);
    for caller in callers {
        let (l, c) = caller.await?;
        latencies.extend(l);
        conflicts += c;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        "{:.0} | {:.2} | {:.2} | {:.2}",
        latencies.len() as f64 / elapsed,
        ms(at(0.5)),
        ms(at(0.99)),
        conflicts as f64 / latencies.len() as f64
    ))
}

#[tokio::main]
async fn main() -> Fallible {
    let options = options()?;
    let dir = tempfile_dir()?;
    println!(
        "{CALLERS} concurrent callers, {} s a cell, commands retried up to 50 times\n",
        options.seconds
    );
    println!("| store | accounts | queue | commands/s | p50 ms | p99 ms | conflicts per command |");
    println!("|---|---|---|---|---|---|---|");
    for store in &options.stores {
        for aggregates in [64, 4] {
            for queued in [false, true] {
                let url = match store.as_str() {
                    "sqlite" => format!(
                        "sqlite:{}",
                        dir.join(format!("commands-{aggregates}-{queued}.db")).display()
                    ),
                    "postgres" => options.postgres.clone(),
                    other => return Err(format!("unknown store {other}").into()),
                };
                let stores = eventsourcing_kit::backend::open(&url).await?;
                stores.migrate().await?;
                let row = cell(stores.events.clone(), aggregates, queued, options.seconds).await?;
                let queue = if queued { "yes" } else { "no" };
                println!("| {store} | {aggregates} | {queue} | {row} |");
            }
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A directory of its own under the system's temporary directory.
fn tempfile_dir() -> Fallible<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("eventsource-commands-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
