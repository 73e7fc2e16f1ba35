//! The main example, the snapshotting tutorial, runs to its end on every backend: a change
//! that breaks it (a registry clash, a store change) fails here and not first in a user's
//! terminal.

#[allow(dead_code)]
#[path = "../examples/tutorial_14_snapshotting.rs"]
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

#[tokio::test]
async fn the_tutorial_runs_on_postgres() {
    if let Some(url) = database::postgres_url("the_tutorial_runs_on_postgres") {
        tutorial::run(&url).await.unwrap();
    }
}
