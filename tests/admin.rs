//! The admin command line end to end: the example service's binary (`bank_service admin ...`)
//! run against a SQLite file and a PostgreSQL schema that this test fills and checks.

#[path = "../examples/service/account.rs"]
#[allow(dead_code)]
mod account;
#[allow(dead_code)]
#[path = "common/database.rs"]
mod database;
#[path = "common/service.rs"]
mod service;
use service::service_binary;
#[path = "../examples/domain/order.rs"]
#[allow(dead_code)]
mod order;
#[path = "../examples/service/read_model.rs"]
#[allow(dead_code)]
mod read_model;

use std::process::{Command, Output, Stdio};

use account::{Account, AccountCommands, AccountEvent};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::{Snapshot, SnapshotStore};
use serde_json::Value;

/// `bank_service admin --url URL ARGS...`, with nobody at the standard input.
fn admin(url: &str, args: &[&str]) -> Output {
    Command::new(service_binary())
        .args(["admin", "--url", url])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The JSON report of a command that must succeed with `status`.
fn json(url: &str, args: &[&str], status: i32) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = admin(url, &all);
    assert_eq!(
        out.status.code(),
        Some(status),
        "admin {args:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "admin {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn account_stats(stats: &Value) -> &Value {
    stats["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["aggregate_type"] == "Account")
        .expect("Account in the stats")
}

const ACCOUNTS: u64 = 24;

/// Accounts of 1 to 24 events each; returns their ids and the total balance in cents.
async fn fill(stores: &eventsourcing_kit::backend::Stores) -> (Vec<Uuid>, i128) {
    let accounts = stores.repository::<Account>();
    let (mut ids, mut total) = (Vec::new(), 0);
    for i in 0..ACCOUNTS {
        let id = Uuid::new_v4();
        let mut account = accounts.create_new(id);
        account.open(&format!("owner {i}"), 1_000).unwrap();
        for _ in 0..i {
            account.deposit(100).unwrap();
        }
        accounts.save(&mut account).await.unwrap();
        total += i128::from(account.state().balance_cents);
        ids.push(id);
    }
    (ids, total)
}

async fn exercise(url: &str) {
    let stores = eventsourcing_kit::backend::open(url).await.unwrap();
    stores.migrate().await.unwrap();
    let (ids, total) = fill(&stores).await;
    let events: u64 = (1..=ACCOUNTS).sum();

    // Before any snapshot: every stream replays in full.
    let stats = json(url, &["stats"], 0);
    let account = account_stats(&stats);
    assert_eq!(account["streams"], ACCOUNTS);
    assert_eq!(account["events"], events);
    assert_eq!(account["coverage"], 0.0);
    assert_eq!(account["staleness"]["max"], ACCOUNTS);

    // Rewarm, then stats shows full coverage; a second run has nothing left to do.
    let warmed = json(
        url,
        &["snapshots", "rewarm", "--type", "Account", "--concurrency", "3"],
        0,
    );
    assert_eq!(warmed["warmed"], ACCOUNTS);
    assert_eq!(warmed["failed"], 0);
    assert_eq!(warmed["events_saved"], events);
    let account = account_stats(&json(url, &["stats", "--type", "Account"], 0)).clone();
    assert_eq!(account["coverage"], 1.0);
    assert_eq!(account["snapshots"]["2"], ACCOUNTS);
    assert_eq!(account["staleness"]["max"], 0);
    let again = json(url, &["snapshots", "rewarm", "--type", "Account"], 0);
    assert_eq!(
        (again["due"].clone(), again["skipped"].clone()),
        (0.into(), ACCOUNTS.into())
    );

    // A clean verify, then a planted drift: a snapshot whose state is not its history's.
    let clean = json(
        url,
        &["snapshots", "verify", "--type", "Account", "--sample", "100"],
        0,
    );
    assert_eq!(
        (clean["verified"].clone(), clean["drifted"].clone()),
        (ACCOUNTS.into(), 0.into())
    );
    let victim = ids[5];
    let mut snapshot: Snapshot = stores
        .snapshots
        .get_snapshot(victim, "Account", 2)
        .await
        .unwrap()
        .unwrap();
    let mut state: Value = serde_json::from_str(&snapshot.state).unwrap();
    state["balance_cents"] = 100_000_000.into();
    snapshot.state = state.to_string();
    assert!(stores.snapshots.save_snapshot(&snapshot).await.unwrap());
    let drift = json(
        url,
        &["snapshots", "verify", "--type", "Account", "--sample", "100"],
        1,
    );
    assert_eq!(drift["drifted"], 1);
    let shown = &drift["shown"][0];
    assert_eq!(shown["aggregate_id"], victim.to_string());
    assert_eq!(
        shown["differences"][0],
        "balance_cents: 100000000 from the snapshot, 1500 from a full replay"
    );
    let text = admin(url, &["snapshots", "verify", "--type", "Account"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&format!("{victim} at version 6")), "{text}");

    // A snapshot beyond its stream's head (as after restoring the events from an older
    // backup): a rewarm cannot replace it, a verify reports it (the load deletes it), and the
    // next rewarm writes the stream's snapshot again.
    let restored = ids[7];
    let mut ahead: Snapshot = stores
        .snapshots
        .get_snapshot(restored, "Account", 2)
        .await
        .unwrap()
        .unwrap();
    ahead.version = 999;
    assert!(stores.snapshots.save_snapshot(&ahead).await.unwrap());
    let kept = json(url, &["snapshots", "rewarm", "--type", "Account"], 0);
    assert_eq!(
        (kept["due"].clone(), kept["kept_newer"].clone()),
        (1.into(), 1.into())
    );
    let found = json(url, &["snapshots", "verify", "--type", "Account"], 1);
    assert_eq!(found["unusable"]["beyond_stream_head"], 1, "{found}");
    assert!(stores
        .snapshots
        .get_snapshot(restored, "Account", 2)
        .await
        .unwrap()
        .is_none());
    let rewarmed = json(
        url,
        &["snapshots", "rewarm", "--type", "Account", "--limit", "0"],
        0,
    );
    assert_eq!(
        (rewarmed["warmed"].clone(), rewarmed["left"].clone()),
        (0.into(), 1.into())
    );
    let rewarmed = json(url, &["snapshots", "rewarm", "--type", "Account"], 0);
    assert_eq!(rewarmed["warmed"], 1);

    // Invalidation asks first: with nobody to answer it refuses and deletes nothing.
    let refused = admin(url, &["snapshots", "invalidate", "--type", "Account"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --yes"));
    assert_eq!(account_stats(&json(url, &["stats"], 0))["coverage"], 1.0);
    let nothing = json(
        url,
        &[
            "snapshots",
            "invalidate",
            "--type",
            "Account",
            "--below",
            "1",
            "--yes",
        ],
        0,
    );
    assert_eq!(nothing["deleted"], 0);
    let deleted = json(url, &["snapshots", "invalidate", "--type", "Account", "--yes"], 0);
    assert_eq!(deleted["deleted"], ACCOUNTS);
    assert_eq!(account_stats(&json(url, &["stats"], 0))["coverage"], 0.0);

    // The read model: listed before it ever ran, rebuilt, reset, rebuilt again.
    let (_, queries) = read_model::open(&stores).unwrap();
    let listed = json(url, &["projections", "list"], 0);
    let model = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == read_model::NAME)
        .expect("the read model is listed")
        .clone();
    assert_eq!(
        (model["state"].clone(), model["projection"].clone()),
        ("never run".into(), true.into())
    );
    let rebuilt = json(url, &["projections", "rebuild", read_model::NAME, "--yes"], 0);
    assert_eq!(rebuilt["events"], events);
    let summary = queries.summary().await.unwrap();
    assert_eq!(summary.accounts as u64, ACCOUNTS);
    assert_eq!(summary.total_balance_cents, total);
    let status = json(url, &["projections", "status", read_model::NAME], 0);
    assert_eq!(
        (status["lag"].clone(), status["state"].clone()),
        (0.into(), "idle".into())
    );
    json(url, &["projections", "reset", read_model::NAME, "--yes"], 0);
    assert_eq!(queries.summary().await.unwrap().accounts, 0);
    json(url, &["projections", "rebuild", read_model::NAME, "--yes"], 0);
    assert_eq!(queries.summary().await.unwrap().total_balance_cents, total);
    // The service's projection is verifiable: its rows are what its code makes of them.
    let verified = json(
        url,
        &["projections", "verify", read_model::NAME, "--sample", "10"],
        0,
    );
    assert_eq!(
        (verified["verified"].clone(), verified["drifted"].clone()),
        (10.into(), 0.into())
    );
    assert_eq!(verified["rows"], 20, "one row per account, live and rebuilt");
    let unknown = admin(url, &["projections", "rebuild", "no-such-projection", "--yes"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr)
        .contains("no subscription or projection `no-such-projection`"));

    // The events: one aggregate's, and the feed filtered by type.
    let shown = json(url, &["events", "show", &ids[3].to_string()], 0);
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 4);
    assert_eq!(shown[0]["event_type"], "AccountOpened");
    assert_eq!(shown[3]["payload"]["amount_cents"], 100);
    let tail = admin(
        url,
        &[
            "--json",
            "events",
            "tail",
            "--from-start",
            "--no-follow",
            "--event-type",
            "AccountOpened",
        ],
    );
    let lines: Vec<Value> = String::from_utf8(tail.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, ACCOUNTS);
    assert!(lines
        .windows(2)
        .all(|w| w[0]["position"].as_u64() < w[1]["position"].as_u64()));
    let two = admin(url, &["--json", "events", "tail", "--from-start", "--count", "2"]);
    assert_eq!(String::from_utf8(two.stdout).unwrap().lines().count(), 2);

    // A type the program does not register is named in the refusal with the known ones.
    let unknown = admin(url, &["snapshots", "rewarm", "--type", "Nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no aggregate type `Nope`") && stderr.contains("Account, Order"),
        "{stderr}"
    );
    let _ = AccountEvent::from(account::MoneyDeposited { amount_cents: 100 });
}

/// The text has no control character but its line ends: nothing a terminal would obey.
fn inert(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\n')
}

/// A subscription whose name holds a newline and a terminal escape, made to look like a row
/// of its own, and a dead letter as hostile, written into a SQLite file by another program
/// (or one older than the rules on names): every text report shows them escaped, on one row,
/// and they can still be inspected and reset.
async fn hostile_names(path: &std::path::Path) {
    let url = format!("sqlite:{}", path.display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    let evil = "evil\n\u{1b}[2Jforged            7           0  idle                   0  subscription";
    let shown = r"evil\n\u{1b}[2Jforged";
    let letter = Uuid::new_v4();
    let connection = eventsourcing_kit::backend::sqlite::rusqlite::Connection::open(path).unwrap();
    connection
        .execute(
            "INSERT INTO eventsource_subscriptions (name, position) VALUES (?1, 3)",
            [evil],
        )
        .unwrap();
    connection
        .execute(
            "INSERT INTO eventsource_dead_letters (subscription, position, event_id, event_type, error, failed_at)
             VALUES (?1, 2, ?2, ?3, ?4, '2024-01-02T03:04:05.000000006Z')",
            [
                evil,
                &letter.to_string(),
                "Bad\u{1b}]0;owned\u{7}",
                "boom\r\nforged: line\u{9b}2J",
            ],
        )
        .unwrap();
    drop(connection);

    // The listing: a header, the read model the program names, and the hostile row.
    let listed = admin(&url, &["projections", "list"]);
    assert_eq!(listed.status.code(), Some(0));
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(inert(&text), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let escaped = evil.replace('\n', r"\n").replace('\u{1b}', r"\u{1b}");
    let row = lines
        .iter()
        .find_map(|l| l.strip_prefix(escaped.as_str()))
        .unwrap_or_else(|| panic!("no row of the escaped name: {text}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["3", "0", "idle", "1", "subscription"],
        "{text}"
    );
    assert_eq!(text.matches("forged").count(), 1, "{text}");

    // The stats: one row of it too.
    let stats = admin(&url, &["stats"]);
    assert_eq!(stats.status.code(), Some(0));
    let text = String::from_utf8(stats.stdout).unwrap();
    assert!(inert(&text), "{text:?}");
    assert_eq!(text.matches("forged").count(), 1, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with(shown)).count(), 1, "{text}");

    // JSON keeps the name exact: scripts get what is stored.
    let listed = json(&url, &["projections", "list"], 0);
    assert!(
        listed.as_array().unwrap().iter().any(|s| s["name"] == evil),
        "{listed}"
    );

    // Its status, dead letter included, and a reset, by its exact name.
    let status = admin(&url, &["projections", "status", evil]);
    assert_eq!(status.status.code(), Some(0));
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(inert(&text), "{text:?}");
    assert!(text.starts_with(&format!("{escaped} (subscription)\n")), "{text}");
    assert!(
        text.contains(r"Bad\u{1b}]0;owned\u{7}") && text.contains(r"boom\r\nforged: line\u{9b}2J"),
        "{text}"
    );
    let letters = admin(&url, &["deadletters", "list"]);
    assert_eq!(letters.status.code(), Some(0));
    let text = String::from_utf8(letters.stdout).unwrap();
    assert!(inert(&text), "{text:?}");
    assert!(
        text.contains(escaped.as_str()) && text.contains(r"Bad\u{1b}]0;owned\u{7}"),
        "{text}"
    );
    // The letter shown by its exact name, and doctor's finding about it: escaped, every
    // mention of the name on one line.
    let show = admin(&url, &["deadletters", "show", evil, &letter.to_string()]);
    assert_eq!(
        show.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let text = String::from_utf8(show.stdout).unwrap();
    assert!(inert(&text), "{text:?}");
    assert!(
        text.starts_with(&format!("dead letter of {escaped}\n"))
            && text.contains(r"Bad\u{1b}]0;owned\u{7}")
            && text.contains(r"boom\r\nforged: line\u{9b}2J"),
        "{text}"
    );
    let doctor = admin(&url, &["doctor"]);
    assert_ne!(
        doctor.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    let text = String::from_utf8(doctor.stdout).unwrap();
    assert!(inert(&text), "{text:?}");
    let mentions: Vec<&str> = text.lines().filter(|l| l.contains("forged")).collect();
    assert!(!mentions.is_empty(), "doctor finds its dead letter: {text}");
    assert!(mentions.iter().all(|l| l.contains(escaped.as_str())), "{text}");
    let reset = admin(&url, &["projections", "reset", evil, "--yes"]);
    assert_eq!(
        reset.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let text = String::from_utf8(reset.stdout).unwrap();
    assert!(inert(&text) && text.lines().count() == 1, "{text:?}");
    let status = json(&url, &["projections", "status", evil], 0);
    assert_eq!(status["checkpoint"], Value::Null);
    assert_eq!(status["dead_letters"], 1);

    // An event type with the same, stored by a program of another make (the event store
    // keeps any name but one with NUL, so that such streams stay writable): one line each.
    let id = Uuid::new_v4();
    let event = eventsourcing_kit::EventEnvelope::from_json(
        id,
        "Ledger\r",
        1,
        "Evil\n\u{1b}[2J",
        1,
        r#"{"note":"\u001b[2J\u009b"}"#,
    );
    stores.events.append(id, "Ledger\r", 0, &[event]).await.unwrap();
    let tail = admin(&url, &["events", "tail", "--from-start", "--no-follow"]);
    assert_eq!(tail.status.code(), Some(0));
    let text = String::from_utf8(tail.stdout).unwrap();
    assert!(inert(&text) && text.lines().count() == 1, "{text:?}");
    assert!(
        text.contains(r"Ledger\r") && text.contains(r"Evil\n\u{1b}[2J (v1)"),
        "{text}"
    );

    // Names given on the command line are echoed escaped in a refusal, as are the known ones.
    let unknown = admin(&url, &["projections", "status", "nope\n\u{1b}[2J"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8(unknown.stderr).unwrap();
    assert!(inert(&stderr) && stderr.lines().count() == 1, "{stderr:?}");
    assert!(
        stderr.contains(r"no subscription or projection `nope\n\u{1b}[2J`") && stderr.contains(shown),
        "{stderr}"
    );
    let unknown = admin(&url, &["stats", "--type", "Nope\u{1b}[31m\n"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8(unknown.stderr).unwrap();
    assert!(inert(&stderr) && stderr.lines().count() == 1, "{stderr:?}");
    assert!(
        stderr.contains(r"no aggregate type `Nope\u{1b}[31m\n`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_store_and_the_command_line_are_printed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    hostile_names(&dir.path().join("bank.db")).await;
}

/// A rewarm in another process while this one saves: every snapshot it leaves stands for its
/// history (a verify of every aggregate finds no drift and nothing unusable).
async fn rewarm_beside_live_writers(url: &str) {
    let stores = eventsourcing_kit::backend::open(url).await.unwrap();
    stores.migrate().await.unwrap();
    let (ids, _) = fill(&stores).await;
    let accounts = stores.repository_with_snapshots::<Account>(SnapshotPolicy::every(5).unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (accounts, ids, done) = (accounts.clone(), ids.clone(), done.clone());
        tokio::spawn(async move {
            for round in 0..6 {
                for id in &ids {
                    let mut account = accounts.load(*id).await.unwrap();
                    account.deposit(100 + round).unwrap();
                    accounts.save(&mut account).await.unwrap();
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    // Rewarms one after another for as long as the writers run (at least twice).
    let (url_owned, running) = (url.to_owned(), done.clone());
    let rewarming = tokio::task::spawn_blocking(move || {
        let mut runs = 0;
        while runs < 2 || !running.load(std::sync::atomic::Ordering::SeqCst) {
            let out = admin(
                &url_owned,
                &["snapshots", "rewarm", "--type", "Account", "--concurrency", "4"],
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "rewarm beside writers: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs += 1;
        }
        runs
    });
    writing.await.unwrap();
    let runs = rewarming.await.unwrap();
    assert!(runs >= 2);
    let verified = json(
        url,
        &["snapshots", "verify", "--type", "Account", "--sample", "1000"],
        0,
    );
    assert_eq!(verified["drifted"], 0, "{verified}");
    assert_eq!(verified["unusable"], serde_json::json!({}), "{verified}");
    assert_eq!(verified["with_snapshot"], ACCOUNTS, "{verified}");
}

/// Runs `check` on the PostgreSQL of `EVENTSOURCE_TEST_POSTGRES_URL`, in a schema of its own
/// that is dropped afterwards, also when the check fails; without the variable it is skipped,
/// or fails under `EVENTSOURCE_REQUIRE_POSTGRES=1`.
async fn on_postgres<F: std::future::Future<Output = ()>>(check: impl FnOnce(String) -> F) {
    let Some(url) = database::postgres_url("the admin command line on PostgreSQL") else {
        return;
    };
    let scratch = database::ScratchSchema::new(&url, "admin");
    let separator = if url.contains('?') { '&' } else { '?' };
    check(format!("{url}{separator}schema={}", scratch.name)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewarm_beside_live_writers_leaves_only_true_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    rewarm_beside_live_writers(&format!("sqlite:{}", dir.path().join("bank.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_rewarm_beside_live_writers_leaves_only_true_snapshots_on_postgres() {
    on_postgres(|url| async move { rewarm_beside_live_writers(&url).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_line_on_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&format!("sqlite:{}", dir.path().join("bank.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_admin_command_line_on_postgres() {
    on_postgres(|url| async move { exercise(&url).await }).await;
}

/// A subscription run as a consumer group: the listing shows it as one row, `status` shows
/// each range, `rescale` records layouts, and `reset` refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_in_the_admin_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bank.db").display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    fill(&stores).await;
    let rescaled = json(&url, &["projections", "rescale", "audit", "4"], 0);
    assert_eq!(
        (rescaled["layout"].as_u64(), rescaled["ranges"].as_u64()),
        (Some(1), Some(4))
    );

    let group = stores
        .subscription("audit")
        .unwrap()
        .poll_interval(std::time::Duration::from_millis(20))
        .unwrap()
        .group(4)
        .unwrap();
    let head = stores.events.head(0).await.unwrap().position;
    let caught_up = async {
        assert!(group
            .wait_for(head, std::time::Duration::from_secs(30))
            .await
            .unwrap());
    };
    group
        .run(2, |_range| |_: &[StoredEvent]| Ok(()), caught_up)
        .await
        .unwrap();

    let listed = json(&url, &["projections", "list"], 0);
    let rows = listed.as_array().unwrap();
    assert!(
        rows.iter().all(|r| !r["name"].as_str().unwrap().contains('#')),
        "{listed}"
    );
    let audit = rows
        .iter()
        .find(|r| r["name"] == "audit")
        .expect("the group in the list");
    assert_eq!(audit["group"]["ranges"], 4);
    assert_eq!(audit["checkpoint"].as_u64(), Some(head));

    let status = json(&url, &["projections", "status", "audit"], 0);
    let ranges = status["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 4);
    assert!(
        ranges
            .iter()
            .all(|r| r["checkpoint"].as_u64() == Some(head) && r["lag"] == 0),
        "{status}"
    );
    let text = String::from_utf8(admin(&url, &["projections", "status", "audit"]).stdout).unwrap();
    assert!(text.contains("768-1023"), "{text}");

    let rescaled = json(&url, &["projections", "rescale", "audit", "2"], 0);
    assert_eq!(rescaled["layout"].as_u64(), Some(2));

    // Reset while a worker holds ranges: refused. Once it stopped, the group is forgotten
    // with its checkpoints: the subscription starts as one that never ran.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = async {
        group
            .run(1, |_range| |_: &[StoredEvent]| Ok(()), async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    };
    let refuse_then_stop = async {
        let held = async {
            while !group
                .status()
                .await
                .unwrap()
                .unwrap()
                .ranges
                .iter()
                .any(|r| r.owner.is_some())
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        held.await;
        let refused = admin(&url, &["projections", "reset", "audit", "--yes"]);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("consumer group"));
        let _ = stop.send(());
    };
    tokio::join!(running, refuse_then_stop);
    json(&url, &["projections", "reset", "audit", "--yes"], 0);
    let listed = json(&url, &["projections", "list"], 0);
    let audit = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "audit")
        .unwrap_or_else(|| panic!("audit is listed: {listed}"))
        .clone();
    assert_eq!(
        (audit["group"].clone(), audit["checkpoint"].clone()),
        (Value::Null, Value::Null),
        "{listed}"
    );
}

/// `doctor` reads the store's durability settings: a SQLite file keeps every acknowledged
/// write (exit 0), a database in memory does not (exit 1, the risk named).
#[test]
fn doctor_reports_the_durability_settings() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bank.db").display());
    let report = json(&url, &["doctor"], 0);
    assert_eq!(report["durable"], true, "{report}");
    let memory = json("sqlite::memory:", &["doctor"], 1);
    assert_eq!(memory["durable"], false, "{memory}");
    let journal = memory["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "journal_mode")
        .unwrap();
    assert!(journal["risk"].is_string(), "{memory}");
    let text = String::from_utf8(admin("sqlite::memory:", &["doctor"]).stdout).unwrap();
    assert!(text.contains("RISK  journal_mode = memory"), "{text}");
}

/// `deadletters`: a projection's letters listed and shown with their event; a replay of an
/// event the read model takes again (a deposit) succeeds, in a dry run without removing it,
/// then for real, removing it and leaving the checkpoint; an event it refuses again (an
/// account opened twice) still fails (exit 1) and stays; a plain subscription's letters are
/// listed but not replayed by the command line (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bank.db").display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    fill(&stores).await;
    const MODEL: &str = "bank-read-model-v2";
    json(&url, &["projections", "rebuild", MODEL, "--yes"], 0);
    let checkpoint = |stats: &Value| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == MODEL)
            .unwrap()["checkpoint"]
            .clone()
    };
    let before = checkpoint(&json(&url, &["projections", "list"], 0));
    let feed: Vec<StoredEvent> = stores.events.read_all(0).try_collect().await.unwrap();
    let opened = feed.iter().find(|e| &*e.event_type == "AccountOpened").unwrap();
    let deposit = feed.iter().find(|e| &*e.event_type == "MoneyDeposited").unwrap();
    // A subscription records letters while it holds its lease: it is then listed.
    consumed(&stores, "mailer", None, true).await;
    for (name, event) in [(MODEL, opened), (MODEL, deposit), ("mailer", deposit)] {
        stores
            .subscriptions
            .dead_letter(name, event, "refused\nsecond line")
            .await
            .unwrap();
    }

    let listed = json(&url, &["deadletters", "list"], 0);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let mine = json(&url, &["deadletters", "list", MODEL], 0);
    assert_eq!(mine.as_array().unwrap().len(), 2, "{mine}");
    let text = String::from_utf8(admin(&url, &["deadletters", "list"]).stdout).unwrap();
    assert!(
        text.contains("refused") && text.contains("3 dead letter(s)"),
        "{text}"
    );
    assert!(
        !text.contains("second line"),
        "only the first line of an error: {text}"
    );

    let shown = json(
        &url,
        &["deadletters", "show", MODEL, &deposit.event_id.to_string()],
        0,
    );
    assert_eq!(shown["event_type"], "MoneyDeposited", "{shown}");
    assert_eq!(
        shown["event"]["aggregate_id"],
        deposit.aggregate_id.to_string(),
        "{shown}"
    );
    assert!(shown["event"]["payload"].is_object(), "{shown}");
    let unknown = admin(&url, &["deadletters", "show", MODEL, &Uuid::new_v4().to_string()]);
    assert_eq!(unknown.status.code(), Some(2));

    let dry = json(&url, &["deadletters", "replay", MODEL, "--dry-run"], 1);
    let outcomes: Vec<&str> = dry["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "would_succeed"], "{dry}");
    assert_eq!(
        json(&url, &["deadletters", "list", MODEL], 0)
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let replayed = json(&url, &["deadletters", "replay", MODEL], 1);
    let outcomes: Vec<&str> = replayed["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "handled"], "{replayed}");
    let left = json(&url, &["deadletters", "list", MODEL], 0);
    let left: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["AccountOpened"], "the letter that still fails stays");
    assert_eq!(
        checkpoint(&json(&url, &["projections", "list"], 0)),
        before,
        "the checkpoint never moved"
    );
    let text = String::from_utf8(admin(&url, &["deadletters", "replay", MODEL, "--dry-run"]).stdout).unwrap();
    assert!(
        text.contains("FAILS") && text.contains("1 still failing"),
        "{text}"
    );

    let refused = admin(&url, &["deadletters", "replay", "mailer"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Subscription::replay_dead_letters"),
        "{refused:?}"
    );
}

/// `migrate` on PostgreSQL: new tables have every step pending; `--print-sql` prints the
/// script a team's own migration tool runs, which brings them to this program's layout (then
/// nothing is pending, and `doctor` finds the store clean); `--apply` does the same itself.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn migrate_prints_the_pending_steps_as_sql_and_applies_them() {
    on_postgres(|url| async move {
        let plan = json(&url, &["migrate"], 0);
        let latest = plan["plan"]["latest"].as_i64().unwrap();
        assert_eq!(plan["plan"]["applied"], 0, "{plan}");
        assert_eq!(
            plan["plan"]["pending"].as_array().unwrap().len() as i64,
            latest,
            "{plan}"
        );
        let text = String::from_utf8(admin(&url, &["migrate"]).stdout).unwrap();
        assert!(text.contains("pending   10  the store's settings"), "{text}");

        let sql = admin(&url, &["migrate", "--print-sql"]);
        assert_eq!(sql.status.code(), Some(0));
        let sql = String::from_utf8(sql.stdout).unwrap();
        assert!(
            sql.starts_with("BEGIN;") && sql.trim_end().ends_with("COMMIT;"),
            "{sql}"
        );
        assert_eq!(
            json(&url, &["migrate"], 0)["plan"]["applied"],
            0,
            "printing changes nothing"
        );
        // The team's migration tool runs the script as it is.
        let base = url.split('?').next().unwrap().to_owned();
        let pool = eventsourcing_kit::backend::postgres::PgPool::connect(&base)
            .await
            .unwrap();
        eventsourcing_kit::backend::postgres::sqlx::raw_sql(&sql)
            .execute(&pool)
            .await
            .unwrap();
        let after = json(&url, &["migrate"], 0);
        assert_eq!(after["plan"]["applied"], latest, "{after}");
        assert!(after["plan"]["pending"].as_array().unwrap().is_empty(), "{after}");
        let clean = json(&url, &["doctor"], 0);
        assert_eq!(clean["findings"].as_array().unwrap().len(), 0, "{clean}");
        pool.close().await;
    })
    .await;
    on_postgres(|url| async move {
        let applied = json(&url, &["migrate", "--apply"], 0);
        let latest = applied["plan"]["latest"].as_i64().unwrap();
        assert_eq!(
            applied["applied"].as_array().unwrap().len() as i64,
            latest,
            "{applied}"
        );
        assert!(json(&url, &["migrate"], 0)["plan"]["pending"]
            .as_array()
            .unwrap()
            .is_empty());
    })
    .await;
}

/// A SQLite file is brought up to date when opened: `migrate` has nothing to print.
#[test]
fn migrate_has_nothing_pending_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite:{}", dir.path().join("bank.db").display());
    let report = json(&sqlite, &["migrate", "--print-sql"], 0);
    assert_eq!(report["plan"], Value::Null, "{report}");
    let text = String::from_utf8(admin(&sqlite, &["migrate"]).stdout).unwrap();
    assert!(text.contains("nothing is pending"), "{text}");
}

/// A consumer of `name` as the store sees one: it took the lease, stored `checkpoint` if
/// given, and let the lease go if `stopped`; its owner.
async fn consumed(
    stores: &eventsourcing_kit::backend::Stores,
    name: &str,
    checkpoint: Option<u64>,
    stopped: bool,
) -> Uuid {
    let (owner, lease) = (Uuid::new_v4(), std::time::Duration::from_secs(60));
    assert!(stores.subscriptions.acquire(name, owner, lease).await.unwrap());
    if let Some(position) = checkpoint {
        assert!(stores
            .subscriptions
            .save_checkpoint(name, owner, position)
            .await
            .unwrap());
    }
    if stopped {
        stores.subscriptions.release(name, owner).await.unwrap();
    }
    owner
}

/// `doctor` warns of an aggregate type whose loads replay more than `--max-replay` events
/// after their snapshot (gone once the snapshots are warmed), of streams whose snapshots the
/// program cannot use, of snapshots of a newer schema, and of a running consumer more than
/// `--max-lag` events behind; warnings leave the exit code at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_of_stale_snapshots_and_slow_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bank.db").display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    let (ids, _) = fill(&stores).await;
    let findings = |report: &Value| -> Vec<String> {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{} {}", f["area"].as_str().unwrap(), f["what"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(findings(&json(&url, &["doctor"], 0)), Vec::<String>::new());
    let stale = json(&url, &["doctor", "--max-replay", "10"], 0);
    let stale = findings(&stale);
    assert!(
        stale
            .iter()
            .any(|f| f.starts_with("snapshots loads of Account replay up to 24 event(s)")),
        "{stale:?}"
    );
    json(&url, &["snapshots", "rewarm", "--type", "Account"], 0);
    assert_eq!(
        findings(&json(&url, &["doctor", "--max-replay", "10"], 0)),
        Vec::<String>::new()
    );

    // A snapshot past its stream's head, and one of a schema newer than the program's.
    let past = eventsourcing_kit::testing::snapshot(ids[3], "Account", 999, 1);
    stores.snapshots.delete_snapshot(ids[3], "Account").await.unwrap();
    stores.snapshots.save_snapshot(&past).await.unwrap();
    let newer = eventsourcing_kit::testing::snapshot(ids[4], "Account", 2, 7);
    stores.snapshots.save_snapshot(&newer).await.unwrap();
    let found = findings(&json(&url, &["doctor"], 0));
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("snapshots 1 stream(s) of Account have only snapshots")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("Account has snapshots of schema 7")),
        "{found:?}"
    );

    // A consumer that holds its lease and stays behind.
    let consumer = consumed(&stores, "slow", Some(1), false).await;
    let behind = findings(&json(&url, &["doctor", "--max-lag", "5"], 0));
    assert!(
        behind
            .iter()
            .any(|f| f.starts_with("consumers slow runs") && f.contains("behind the feed")),
        "{behind:?}"
    );
    assert!(
        !findings(&json(&url, &["doctor"], 0))
            .iter()
            .any(|f| f.starts_with("consumers slow")),
        "within the default limit"
    );
    stores.subscriptions.release("slow", consumer).await.unwrap();

    // A consumer that died: its lease ran out without being let go.
    let short = std::time::Duration::from_millis(50);
    assert!(stores
        .subscriptions
        .acquire("crashed", Uuid::new_v4(), short)
        .await
        .unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    let dead = findings(&json(&url, &["doctor"], 0));
    assert!(
        dead.iter()
            .any(|f| f.starts_with("consumers crashed's last consumer stopped without letting its lease go")),
        "{dead:?}"
    );
    let listed = json(&url, &["projections", "list"], 0);
    let crashed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "crashed")
        .unwrap();
    assert_eq!(crashed["state"], "abandoned", "{listed}");
}

/// `doctor` on PostgreSQL: tables behind this program's layout are a serious finding (exit
/// 1) that names what to run; once migrated, the store is clean, and a subscription's dead
/// letters are a warning that leaves the exit code at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn doctor_finds_pending_migrations_and_dead_letters() {
    on_postgres(|url| async move {
        let behind = json(&url, &["doctor"], 1);
        let finding = &behind["findings"][0];
        assert_eq!(
            (finding["area"].as_str(), finding["serious"].as_bool()),
            (Some("layout"), Some(true)),
            "{behind}"
        );
        assert!(
            finding["todo"].as_str().unwrap().contains("--migrate"),
            "{behind}"
        );

        let clean = json(&url, &["--migrate", "doctor"], 0);
        let layout = clean["layout"].as_array().unwrap();
        assert_eq!(layout[0], layout[1], "{clean}");
        assert_eq!(clean["findings"].as_array().unwrap().len(), 0, "{clean}");

        let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
        let event = StoredEvent::new(
            1,
            eventsourcing_kit::testing::envelope(Uuid::new_v4(), "Account", 1),
        );
        let consumer = Uuid::new_v4();
        let lease = std::time::Duration::from_secs(1);
        assert!(stores
            .subscriptions
            .acquire("audit", consumer, lease)
            .await
            .unwrap());
        stores
            .subscriptions
            .dead_letter("audit", &event, "refused")
            .await
            .unwrap();
        stores.subscriptions.release("audit", consumer).await.unwrap();
        let warned = json(&url, &["doctor"], 0);
        let finding = &warned["findings"][0];
        assert_eq!(
            (finding["area"].as_str(), finding["serious"].as_bool()),
            (Some("consumers"), Some(false)),
            "{warned}"
        );
        assert!(finding["what"].as_str().unwrap().contains("audit"), "{warned}");

        // A subscription that stopped behind the feed, nobody running it: a warning too.
        fill(&stores).await;
        consumed(&stores, "mailer", Some(1), true).await;
        let behind = json(&url, &["doctor"], 0);
        let findings = behind["findings"].as_array().unwrap();
        assert!(
            findings
                .iter()
                .any(|f| f["what"].as_str().unwrap().contains("mailer is")
                    && f["what"].as_str().unwrap().contains("behind")),
            "{behind}"
        );
    })
    .await;
}

/// The admin command line on a sharded store (`shards:PATH`, two SQLite files): `stats` shows
/// each shard, `events tail` reads the feed of the shard named, and a dead letter of a range
/// is shown from its shard's feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_line_on_a_sharded_store() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("shards.map");
    std::fs::write(
        &map,
        format!(
            "0-511 sqlite:{}\n512-1023 sqlite:{}\n",
            dir.path().join("a.db").display(),
            dir.path().join("b.db").display()
        ),
    )
    .unwrap();
    let url = format!("shards:{}", map.display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    fill(&stores).await;
    let events: u64 = (1..=ACCOUNTS).sum();

    let stats = json(&url, &["stats"], 0);
    let shards = stats["shards"].as_array().expect("a shard list");
    assert_eq!(shards.len(), 2, "{stats}");
    assert_eq!(shards[1]["slices"][0], "512-1023");
    let counted: u64 = shards.iter().map(|s| s["events"].as_u64().unwrap()).sum();
    assert_eq!(counted, events, "{stats}");
    assert_eq!(account_stats(&stats)["streams"], ACCOUNTS);
    let text = String::from_utf8(admin(&url, &["stats"]).stdout).unwrap();
    assert!(text.contains("shard 1  slices 512-1023"), "{text}");

    let migrate = String::from_utf8(admin(&url, &["migrate"]).stdout).unwrap();
    assert!(
        migrate.contains("shard 0") && migrate.contains("shard 1") && migrate.contains("nothing is pending"),
        "{migrate}"
    );

    let unnamed = admin(&url, &["events", "tail", "--from-start", "--no-follow"]);
    assert_eq!(unnamed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unnamed.stderr).contains("--shard"));
    let mut tailed = 0;
    for shard in ["0", "1"] {
        let args = [
            "--json",
            "events",
            "tail",
            "--from-start",
            "--no-follow",
            "--shard",
            shard,
        ];
        let tail = admin(&url, &args);
        assert_eq!(tail.status.code(), Some(0));
        tailed += String::from_utf8(tail.stdout).unwrap().lines().count() as u64;
    }
    assert_eq!(tailed, events);

    let shard = &stores.shards().unwrap()[0];
    let feed: Vec<StoredEvent> = shard.events.read_all(0).try_collect().await.unwrap();
    let event = feed.last().expect("shard 0 holds events");
    // The range held its lease when it recorded the letter: it is then listed.
    let range = "audit#1:0-511";
    let held = stores
        .subscriptions
        .acquire(range, Uuid::new_v4(), std::time::Duration::from_secs(60));
    assert!(held.await.unwrap());
    stores
        .subscriptions
        .dead_letter(range, event, "refused")
        .await
        .unwrap();
    let shown = json(
        &url,
        &["deadletters", "show", "audit", &event.event_id.to_string()],
        0,
    );
    assert_eq!(shown["event_id"], event.event_id.to_string(), "{shown}");
    assert_eq!(
        shown["event"]["aggregate_id"],
        event.aggregate_id.to_string(),
        "the letter's event, read from its shard: {shown}"
    );

    // Resharding offline: copied into four new files under another map, and compared.
    let new_map = dir.path().join("four.map");
    let lines: Vec<String> = ["0-255", "256-511", "512-767", "768-1023"]
        .iter()
        .enumerate()
        .map(|(i, range)| format!("{range} sqlite:{}", dir.path().join(format!("n{i}.db")).display()))
        .collect();
    std::fs::write(&new_map, lines.join("\n")).unwrap();
    let to = format!("shards:{}", new_map.display());
    let copied = json(&url, &["copy", "--to", &to, "--yes"], 0);
    assert_eq!(copied["copied"].as_u64(), Some(events), "{copied}");
    assert_eq!(copied["streams"].as_u64(), Some(ACCOUNTS), "{copied}");
    assert_eq!(
        copied["differences"].as_array().map(Vec::len),
        Some(0),
        "{copied}"
    );
    let again = json(&url, &["copy", "--to", &to, "--yes"], 0);
    assert_eq!(
        (again["copied"].as_u64(), again["present"].as_u64()),
        (Some(0), Some(events))
    );
    let unasked = admin(&url, &["copy", "--to", &to]);
    assert_eq!(unasked.status.code(), Some(2), "no confirmation, nobody to ask");
}
