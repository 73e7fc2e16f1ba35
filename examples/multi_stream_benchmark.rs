//! What a save over two streams costs next to a save of one: each writer deposits into an
//! account of its own with `Repository::save` (one event, or two in one batch), or into two
//! accounts with one `MultiStreamSave` (one event in each), on SQLite and PostgreSQL, with 1
//! and 16 writers.
//! The two kinds alternate in blocks, several rounds, so that a machine that gets busier
//! meanwhile weighs on both; the table gives the median of the rounds and the ratio.
//!
//! ```text
//! cargo run --release --features eventsourcing-kit/sqlite,eventsourcing-kit/postgres \
//!     --example multi_stream_benchmark -- [--stores sqlite,postgres] [--saves 2000] \
//!     [--rounds 5] [--postgres URL]
//! ```
//!
//! Give PostgreSQL a schema of its own (`?schema=multi_bench`) and drop it afterwards.

#[path = "domain/account.rs"]
#[allow(dead_code)]
mod account;

use std::sync::Arc;
use std::time::Instant;

use account::{Account, AccountCommands};
use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::multi_stream::MultiStreamSave;
use eventsourcing_kit::prelude::*;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Options {
    stores: Vec<String>,
    saves: usize,
    rounds: usize,
    postgres: String,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        stores: vec!["sqlite".into(), "postgres".into()],
        saves: 2000,
        rounds: 5,
        postgres: std::env::var("EVENTSOURCE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--stores" => options.stores = value.split(',').map(str::to_owned).collect(),
            "--saves" => options.saves = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--postgres" => options.postgres = value,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(options)
}

/// A new account, opened and saved.
async fn opened(repo: &Repository<Account>) -> Fallible<AggregateRoot<Account>> {
    let mut account = repo.create_new(Uuid::new_v4());
    account.open("Ada", 0)?;
    repo.save(&mut account).await?;
    Ok(account)
}

/// What each save writes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// One event in one stream.
    OneEvent,
    /// Two events in one stream.
    TwoEvents,
    /// One event in each of two streams.
    TwoStreams,
}

/// `saves` saves by each of `writers` writers; saves per second.
async fn block(stores: &Arc<Stores>, writers: usize, saves: usize, kind: Kind) -> Fallible<f64> {
    let repo = stores.repository::<Account>();
    let multi = stores.multi_stream()?;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (repo, multi) = (repo.clone(), multi.clone());
        let (mut a, mut b) = (opened(&repo).await?, opened(&repo).await?);
        tasks.push(tokio::spawn(async move {
            for _ in 0..saves / writers {
                a.deposit(100)?;
                match kind {
                    Kind::OneEvent => {
                        repo.save(&mut a).await?;
                    }
                    Kind::TwoEvents => {
                        a.deposit(100)?;
                        repo.save(&mut a).await?;
                    }
                    Kind::TwoStreams => {
                        b.deposit(100)?;
                        MultiStreamSave::new()
                            .write(&mut a)
                            .write(&mut b)
                            .save(&multi)
                            .await?;
                    }
                }
            }
            Fallible::Ok(())
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok((saves / writers * writers) as f64 / started.elapsed().as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Fallible {
    let options = options()?;
    let dir = std::env::temp_dir().join(format!("eventsource-multi-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "{} saves a block, {} rounds of one block of each kind, alternating; medians\n",
        options.saves, options.rounds
    );
    println!(
        "| store | writers | one event, saves/s | two events in one stream | one event in each of two streams | two streams / one event (time) | two streams / two events in one stream |"
    );
    println!("|---|---|---|---|---|---|---|");
    for store in &options.stores {
        let url = match store.as_str() {
            "sqlite" => format!("sqlite:{}", dir.join("multi.db").display()),
            "postgres" => options.postgres.clone(),
            other => return Err(format!("unknown store {other}").into()),
        };
        let stores = Arc::new(eventsourcing_kit::backend::open(&url).await?);
        stores.migrate().await?;
        for writers in [1, 16] {
            let kinds = [Kind::OneEvent, Kind::TwoEvents, Kind::TwoStreams];
            // A warm-up block of each kind, not counted.
            for kind in kinds {
                block(&stores, writers, options.saves / 4, kind).await?;
            }
            let mut rates = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..options.rounds {
                for (i, kind) in kinds.into_iter().enumerate() {
                    rates[i].push(block(&stores, writers, options.saves, kind).await?);
                }
            }
            let [one, batch, two] = rates.map(median);
            println!(
                "| {store} | {writers} | {one:.0} | {batch:.0} | {two:.0} | {:.2}x | {:.2}x |",
                one / two,
                batch / two
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
