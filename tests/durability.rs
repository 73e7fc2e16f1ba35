//! The durability check: each backend reports the settings that decide whether an
//! acknowledged append survives a crash, and a URL with `durability=strict` refuses a store
//! that acknowledges writes before they are durable: SQLite in memory, a PostgreSQL session
//! with `synchronous_commit` off, and a PostgreSQL server started with `fsync` and
//! `full_page_writes` off (a cluster the test starts itself, on a port of its own).
//!
//! The PostgreSQL checks run against `EVENTSOURCE_TEST_POSTGRES_URL`; without it they say they
//! are skipped, or fail under `EVENTSOURCE_REQUIRE_POSTGRES=1`.

mod common;

use eventsourcing_kit::backend::{self, durability::Durability};
use eventsourcing_kit::Error;

fn setting<'d>(durability: &'d Durability, name: &str) -> &'d str {
    &durability
        .settings
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} in {durability:?}"))
        .value
}

fn refused(opened: Result<backend::Stores, Error>, naming: &str) {
    match opened {
        Err(Error::InvalidConfiguration(message)) => assert!(message.contains(naming), "{message}"),
        other => panic!("expected a refusal naming {naming}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_sqlite_file_is_durable_and_a_database_in_memory_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?durability=strict", dir.path().join("app.db").display());
    let stores = backend::open(&url)
        .await
        .expect("a file with every write synced opens");
    let durability = stores.durability().await.unwrap();
    assert!(durability.is_safe(), "{durability:?}");
    assert_eq!(
        (
            setting(&durability, "journal_mode"),
            setting(&durability, "synchronous")
        ),
        ("wal", "full")
    );

    let memory = backend::open("sqlite::memory:").await.unwrap();
    assert!(!memory.durability().await.unwrap().is_safe());
    refused(
        backend::open("sqlite::memory:?durability=strict").await,
        "journal_mode",
    );
    refused(backend::open("memory:?durability=strict").await, "storage");
    refused(
        backend::open("sqlite::memory:?durability=maybe").await,
        "`durability`",
    );
}

/// A program that turns a file's safety off on the connection that writes (through
/// `Database::call`) is told so; the stores the library opens on the file set the safe
/// settings again, so `durability=strict` opens them.
#[tokio::test]
async fn a_sqlite_file_whose_writes_are_not_synced_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lax.db");
    let database = backend::sqlite::Database::open(&path).await.unwrap();
    database
        .call(|connection| connection.execute_batch("PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF"))
        .await
        .unwrap();
    let durability = database.durability().await.unwrap();
    assert!(!durability.is_safe(), "{durability:?}");
    assert_eq!(
        (
            setting(&durability, "journal_mode"),
            setting(&durability, "synchronous")
        ),
        ("memory", "off")
    );
    let risks: Vec<&str> = durability.risks().map(|s| s.name).collect();
    assert_eq!(risks, ["journal_mode", "synchronous"], "{durability:?}");
    drop(database);

    let url = format!("sqlite:{}?durability=strict", path.display());
    let stores = backend::open(&url)
        .await
        .expect("the library's own connections are safe");
    assert!(stores.durability().await.unwrap().is_safe());
}

#[cfg(feature = "postgres")]
#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_postgres_session_without_synchronous_commit_is_refused_when_strict() {
    let Some(url) =
        common::postgres_url("a_postgres_session_without_synchronous_commit_is_refused_when_strict")
    else {
        return;
    };
    let stores = backend::open(&url).await.unwrap();
    let durability = stores.durability().await.unwrap();
    assert_eq!(setting(&durability, "synchronous_commit"), "on", "{durability:?}");
    let separator = if url.contains('?') { '&' } else { '?' };
    let lax = format!("{url}{separator}options=-c%20synchronous_commit%3Doff&durability=strict");
    refused(backend::open(&lax).await, "synchronous_commit = off");
}

#[cfg(feature = "postgres")]
#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_postgres_server_without_fsync_is_reported_and_refused_when_strict() {
    if common::postgres_url("a_postgres_server_without_fsync_is_reported_and_refused_when_strict").is_none() {
        return;
    }
    let Some(cluster) = common::ScratchCluster::start("-c fsync=off -c full_page_writes=off") else {
        eprintln!("skipped: no PostgreSQL server programs, or no right to run them as postgres");
        return;
    };
    let stores = backend::open(&cluster.url()).await.unwrap();
    let durability = stores.durability().await.unwrap();
    assert_eq!(
        (
            setting(&durability, "fsync"),
            setting(&durability, "full_page_writes")
        ),
        ("off", "off")
    );
    assert_eq!(durability.risks().count(), 2, "{durability:?}");
    refused(
        backend::open(&format!("{}?durability=strict", cluster.url())).await,
        "fsync = off",
    );
}

/// The warnings logged, by their message and the setting they name.
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
}

/// Opening a store that acknowledges writes before they are durable logs a warning per unsafe
/// setting, once: the stores' `migrate` afterwards does not say it again.
#[tokio::test(flavor = "current_thread")]
async fn an_unsafe_store_is_warned_of_once_at_open() {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = Warnings::default();
    let _logging = tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let stores = backend::open("sqlite::memory:").await.unwrap();
    stores.migrate().await.unwrap();
    let told = warnings.0.lock().unwrap().clone();
    let durability: Vec<&String> = told
        .iter()
        .filter(|w| w.contains("before they are durable"))
        .collect();
    assert_eq!(durability.len(), 1, "{told:?}");
    assert!(durability[0].contains("journal_mode"), "{told:?}");

    let dir = tempfile::tempdir().unwrap();
    warnings.0.lock().unwrap().clear();
    backend::open(&format!("sqlite:{}", dir.path().join("safe.db").display()))
        .await
        .unwrap();
    assert!(
        warnings.0.lock().unwrap().is_empty(),
        "a durable file is not warned of"
    );
}
