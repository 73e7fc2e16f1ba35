//! The main example, the snapshotting tutorial, runs to its end on every backend: a change
//! that breaks it (a registry clash, a store change) fails here and not first in a user's
//! terminal.

#[allow(dead_code)]
#[path = "../examples/snapshotting_tutorial.rs"]
mod tutorial;

#[allow(dead_code)]
#[path = "common/database.rs"]
mod database;

#[tokio::test]
async fn the_tutorial_runs_in_memory() {
    tutorial::run("memory:").await.unwrap();
}

#[tokio::test]
async fn the_tutorial_runs_twice_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("tutorial.db").display());
    tutorial::run(&url).await.unwrap();
    // The second run finds the first run's performance-test account.
    tutorial::run(&url).await.unwrap();
}

/// "Awaited 1 background snapshot(s)", every time: the one snapshot the save scheduled,
/// whether the worker (on another thread here) wrote it before the call or while it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_awaits_its_one_background_snapshot_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("sqlite:{}", dir.path().join("tutorial.db").display());
    for url in ["memory:", file.as_str()] {
        let stores = eventsourcing_kit::backend::open(url).await.unwrap();
        stores.migrate().await.unwrap();
        for run in 0..40 {
            assert_eq!(
                tutorial::background_mode(&stores).await.unwrap(),
                1,
                "run {run} on {url}"
            );
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_tutorial_runs_on_postgres() {
    if let Some(url) = database::postgres_url("the_tutorial_runs_on_postgres") {
        tutorial::run(&url).await.unwrap();
    }
}
