//! A writer process killed in the middle of appending to a SQLite file: the file opens
//! afterwards with every committed event and no partial batch.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use eventsourcing_kit::backend::open;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::EventEnvelope;

/// Set in the child process: the SQLite URL to write to.
const CHILD: &str = "EVENTSOURCE_TEST_CRASH_CHILD";
const BATCH: u64 = 10;
const STREAMS: usize = 4;

fn batch(id: Uuid, after: u64) -> Vec<EventEnvelope> {
    (after + 1..=after + BATCH)
        .map(|version| {
            let event = AccountEvent::from(MoneyDeposited {
                amount: version as i64,
            });
            EventEnvelope::new(id, "Account", version, &event).unwrap()
        })
        .collect()
}

/// Appends batches round-robin to a few streams until killed, reporting each commit.
async fn write_until_killed(url: &str) {
    let stores = open(url).await.unwrap();
    let ids: Vec<Uuid> = (0..STREAMS).map(|_| Uuid::new_v4()).collect();
    let mut versions = [0u64; STREAMS];
    let mut out = std::io::stdout().lock();
    for round in 0.. {
        let i = round % STREAMS;
        stores
            .events
            .append(ids[i], "Account", versions[i], &batch(ids[i], versions[i]))
            .await
            .unwrap();
        versions[i] += BATCH;
        writeln!(out, "COMMITTED {} {}", ids[i], versions[i]).unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_every_committed_batch_and_no_partial_one() {
    if let Ok(url) = std::env::var(CHILD) {
        write_until_killed(&url).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("events.db").display());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_writer_leaves_every_committed_batch_and_no_partial_one",
            "--nocapture",
        ])
        .env(CHILD, &url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut committed: std::collections::HashMap<Uuid, u64> = Default::default();
    let started = Instant::now();
    // Kill the writer mid-stream, after enough commits that it is surely inside an append.
    while committed.values().sum::<u64>() < 200 * BATCH && started.elapsed() < Duration::from_secs(30) {
        let Some(line) = lines.next() else { break };
        let line = line.unwrap();
        if let Some((_, report)) = line.split_once("COMMITTED ") {
            let (id, version) = report.split_once(' ').unwrap();
            committed.insert(id.parse().unwrap(), version.parse().unwrap());
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some((_, report)) = line.split_once("COMMITTED ") {
            let (id, version) = report.split_once(' ').unwrap();
            committed.insert(id.parse().unwrap(), version.parse().unwrap());
        }
    }
    assert!(
        !committed.is_empty(),
        "the writer committed nothing before it was killed"
    );

    let stores = open(&url).await.unwrap();
    for (&id, &reported) in &committed {
        let versions: Vec<u64> = stream_versions(&*stores.events, id).await;
        let head = versions.len() as u64;
        assert_eq!(versions, (1..=head).collect::<Vec<_>>(), "no gap");
        assert_eq!(head % BATCH, 0, "no partial batch");
        assert!(
            head >= reported,
            "every reported commit survived: {head} < {reported}"
        );
        assert!(
            head <= reported + BATCH,
            "at most the batch in flight was committed unreported"
        );
        let account = stores.repository::<Account>().load(id).await.unwrap();
        assert_eq!(
            account.state().transaction_count,
            head,
            "every stored event decodes"
        );
    }
}
