//! PostgreSQL server faults that only a real server shows: a server process paused in the
//! middle of an append (SIGSTOP, as a machine that froze or a peer that vanished without
//! closing its connection would look) costs its own append a bounded delay and the other
//! appends of the process nothing.
//!
//! The tests need `EVENTSOURCE_TEST_POSTGRES_URL` and a server on this machine whose processes
//! they may signal (as CI has); see tests/postgres_store.rs.

mod common;

use std::process::Command;
use std::time::Duration;

use eventsourcing_kit::backend::postgres::{pool_options, PgPool, PostgresEventStore};
use eventsourcing_kit::{EventEnvelope, EventStore, Uuid};

/// The advisory lock key the stalling trigger waits on.
const STALL_LOCK: i64 = 0x7374_616c_6c00;

fn event(id: Uuid, payload: &str) -> EventEnvelope {
    EventEnvelope::from_json(id, "Fault", 1, "Noted", 1, payload)
}

/// Sends `signal` to a server process; whether it could.
fn signal(pid: i32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// Resumes the paused server process when dropped, also when the test fails: the server is
/// shared, and a paused process holds its locks.
struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// Waits for the process of `pool`'s application that waits on the stall lock; its pid.
async fn stalled_process(admin: &PgPool, schema: &str) -> i32 {
    for _ in 0..500 {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE application_name = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
        .bind(schema)
        .fetch_optional(admin)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the stalling append never reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_paused_server_process_stops_only_its_own_append() {
    let Some(url) = common::postgres_url("a paused server process during an append") else {
        return;
    };
    // Dropped at the end, also when the test fails (after the paused process was resumed).
    let scratch = common::ScratchSchema::new(&url, "pause");
    let schema = scratch.name.clone();
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .application_name(&schema);
    let pool = pool_options()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let events = PostgresEventStore::with_schema(pool, &schema)
        .unwrap()
        .with_append_timeout(Duration::from_millis(500))
        .unwrap();
    events.migrate().await.unwrap();
    // The one append whose payload says "stall" waits for a lock the test holds, inside its
    // statement: that statement's server process is then paused.
    for statement in [
        format!(
            "CREATE FUNCTION \"{schema}\".stall() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.payload::text LIKE '%stall%' THEN PERFORM pg_advisory_xact_lock({STALL_LOCK}); END IF;
                 RETURN NEW;
             END $$"
        ),
        format!(
            "CREATE TRIGGER stall BEFORE INSERT ON \"{schema}\".eventsource_events
             FOR EACH ROW EXECUTE FUNCTION \"{schema}\".stall()"
        ),
    ] {
        sqlx::query(&statement).execute(&admin).await.unwrap();
    }
    let mut holder = admin.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(STALL_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();

    let stalled_id = Uuid::new_v4();
    let stalled_event = event(stalled_id, r#"{"stall":true}"#);
    let stalled = {
        let (events, event) = (events.clone(), stalled_event.clone());
        tokio::spawn(async move { events.append(stalled_id, "Fault", 0, &[event]).await })
    };
    let pid = stalled_process(&admin, &schema).await;
    let paused = signal(pid, "-STOP").then_some(Paused(pid));
    // Granted the lock, the paused process cannot go on.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(STALL_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    drop(holder);
    let Some(paused) = paused else {
        eprintln!("skipped: cannot signal the server's process {pid} (a server on another machine?)");
        return;
    };

    // Everyone else's one-event appends go on, alone or grouped, on the other connections.
    let mut writers = Vec::new();
    for _ in 0..32 {
        let events = events.clone();
        writers.push(tokio::spawn(async move {
            let id = Uuid::new_v4();
            let mut version = 0;
            for _ in 0..5 {
                let mut next = event(id, "{}");
                next.aggregate_version = version + 1;
                version = events.append(id, "Fault", version, &[next]).await?.version;
            }
            Ok::<_, eventsourcing_kit::Error>(version)
        }));
    }
    let others = tokio::time::timeout(Duration::from_secs(20), futures_util::future::join_all(writers))
        .await
        .expect("appends of other streams waited for the paused server process");
    for version in others {
        assert_eq!(version.unwrap().unwrap(), 5);
    }

    // The paused append itself gives up with an error that says its outcome is unknown.
    let outcome = tokio::time::timeout(Duration::from_secs(20), stalled)
        .await
        .expect("the paused append was not bounded")
        .unwrap();
    let error = outcome.expect_err("an append whose statement hangs cannot have succeeded");
    assert!(error.is_transient(), "{error}");

    // Resumed, the paused statement commits: made again, the append is acknowledged.
    drop(paused);
    let mut again = Err(error);
    for _ in 0..200 {
        again = events
            .append(stalled_id, "Fault", 0, std::slice::from_ref(&stalled_event))
            .await;
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        again.unwrap().version,
        1,
        "the append made again was not acknowledged"
    );
    drop(admin);
}
