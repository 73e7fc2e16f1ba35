//! The SQLite stores: the whole conformance suite on `:memory:` and on a file, without and
//! with a table prefix, then what is SQLite's own: the schema, table prefixes, URLs, corrupt
//! rows, paged reads on one connection, and concurrent writers on one file, as tasks and as
//! two processes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use eventsourcing_kit::backend::sqlite::{self, SqliteEventStore, SqliteSnapshotStore};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::{EventEnvelope, MissReason, Snapshot, StoredEvent};
use futures_util::{StreamExt, TryStreamExt};

/// Every test opens its own private database.
mod in_memory {
    use super::*;

    eventsourcing_kit::event_store_conformance!(async { SqliteEventStore::open(":memory:").await.unwrap() });
    eventsourcing_kit::snapshot_store_conformance!(async {
        SqliteSnapshotStore::open(":memory:").await.unwrap()
    });
    eventsourcing_kit::subscription_store_conformance!(async {
        sqlite::SqliteSubscriptionStore::open(":memory:").await.unwrap()
    });
    eventsourcing_kit::key_store_conformance!(async {
        let database = sqlite::Database::open(":memory:").await.unwrap();
        sqlite::SqliteKeyStore::on(database).await.unwrap()
    });
}

/// The abilities SQLite stores hand out, on a private database and on a file.
mod abilities {
    use eventsourcing_kit::backend::{self, Stores};
    use eventsourcing_kit::testing::stores::{assert_abilities, Abilities};

    eventsourcing_kit::stores_conformance!(async { backend::open("sqlite::memory:").await.unwrap() });
    eventsourcing_kit::stream_lifecycle_conformance!(async {
        backend::open("sqlite::memory:").await.unwrap()
    });

    mod on_a_file {
        async fn stores() -> eventsourcing_kit::backend::Stores {
            let path = super::super::shared_file();
            eventsourcing_kit::backend::open(&format!("sqlite:{}", path.display()))
                .await
                .unwrap()
        }

        eventsourcing_kit::stores_conformance!(stores());
        eventsourcing_kit::stream_lifecycle_conformance!(stores());
    }

    #[tokio::test]
    async fn sqlite_stores_hand_out_every_ability_but_joint_statements() {
        let stores: Stores = backend::open("sqlite::memory:").await.unwrap();
        assert_abilities(
            &stores,
            Abilities {
                append_signal: true,
                stream_listing: true,
                snapshot_listing: true,
                request_index: true,
                slice_feed: true,
                joint_snapshots: false,
                multi_stream: true,
                stream_lifecycle: true,
            },
        );
    }
}

/// The suite through a wrapper that forwards only the required methods.
mod through_a_wrapper_of_the_required_methods {
    use super::*;

    eventsourcing_kit::event_store_conformance!(async {
        eventsourcing_kit::testing::RequiredOnly(SqliteEventStore::open(":memory:").await.unwrap())
    });
}

/// Every test opens its own connections on one file, which the tests share as processes would.
mod on_one_file {
    use super::*;

    eventsourcing_kit::event_store_conformance!(async {
        SqliteEventStore::open(shared_file()).await.unwrap()
    });
    eventsourcing_kit::snapshot_store_conformance!(async {
        SqliteSnapshotStore::open(shared_file()).await.unwrap()
    });
    eventsourcing_kit::subscription_store_conformance!(async {
        sqlite::SqliteSubscriptionStore::open(shared_file())
            .await
            .unwrap()
    });
    eventsourcing_kit::key_store_conformance!(async {
        let database = sqlite::Database::open(shared_file()).await.unwrap();
        sqlite::SqliteKeyStore::on(database).await.unwrap()
    });
}

/// The suites again on tables of the prefix `app_`: in memory, and on the file the suites
/// above share, beside their unprefixed tables.
mod with_a_prefix {
    use super::*;

    async fn prefixed(path: impl AsRef<Path>) -> sqlite::Database {
        sqlite::Database::open(path)
            .await
            .unwrap()
            .with_prefix("app_")
            .unwrap()
    }

    mod in_memory {
        use super::*;

        eventsourcing_kit::event_store_conformance!(async {
            SqliteEventStore::on(prefixed(":memory:").await).await.unwrap()
        });
        eventsourcing_kit::snapshot_store_conformance!(async {
            SqliteSnapshotStore::on(prefixed(":memory:").await).await.unwrap()
        });
        eventsourcing_kit::subscription_store_conformance!(async {
            sqlite::SqliteSubscriptionStore::on(prefixed(":memory:").await)
                .await
                .unwrap()
        });
    }

    mod on_one_file {
        use super::*;

        eventsourcing_kit::event_store_conformance!(async {
            SqliteEventStore::on(prefixed(shared_file()).await).await.unwrap()
        });
        eventsourcing_kit::snapshot_store_conformance!(async {
            SqliteSnapshotStore::on(prefixed(shared_file()).await)
                .await
                .unwrap()
        });
        eventsourcing_kit::subscription_store_conformance!(async {
            sqlite::SqliteSubscriptionStore::on(prefixed(shared_file()).await)
                .await
                .unwrap()
        });
        eventsourcing_kit::key_store_conformance!(async {
            sqlite::SqliteKeyStore::on(prefixed(shared_file()).await)
                .await
                .unwrap()
        });
    }
}

/// A database file for this test process, under the target directory (a runner that starts
/// a process per test gives each its own).
fn shared_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let name = format!("sqlite_store_conformance-{}.db", std::process::id());
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        path
    })
    .clone()
}

fn event(id: Uuid, ty: &str, version: u64, payload: &str) -> EventEnvelope {
    EventEnvelope::from_json(id, ty, version, "Happened", 1, payload)
}

fn new_events(id: Uuid, ty: &str, after: u64, count: u64) -> Vec<EventEnvelope> {
    (after + 1..=after + count)
        .map(|v| event(id, ty, v, &format!(r#"{{"n":{v}}}"#)))
        .collect()
}

async fn read(store: &SqliteEventStore, id: Uuid, ty: &str) -> eventsourcing_kit::Result<Vec<StoredEvent>> {
    store.read_stream(id, ty, 0).try_collect().await
}

/// The first column of the first row of `sql`, run on the database.
async fn scalar<T: sqlite::rusqlite::types::FromSql + Send + 'static>(
    database: &sqlite::Database,
    sql: &str,
) -> T {
    let sql = sql.to_owned();
    database
        .call(move |connection| connection.query_row(&sql, [], |row| row.get(0)))
        .await
        .unwrap()
}

/// Runs `sql` with one text parameter on the database.
async fn execute(database: &sqlite::Database, sql: &str, parameter: String) {
    let sql = sql.to_owned();
    database
        .call(move |connection| connection.execute(&sql, [parameter]))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_file_is_created_in_wal_mode_with_its_tables_and_a_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let (events, snapshots) = sqlite::open(&path).await.unwrap();
    assert!(path.exists(), "the file is created");
    let database = events.database();
    assert_eq!(scalar::<String>(database, "PRAGMA journal_mode").await, "wal");
    assert_eq!(
        scalar::<i64>(database, "PRAGMA synchronous").await,
        2,
        "appends are synced to disk (FULL)"
    );
    assert_eq!(
        scalar::<i64>(snapshots.database(), "PRAGMA synchronous").await,
        1,
        "snapshot writes are not (NORMAL)"
    );
    let timeout: i64 = scalar(database, "PRAGMA busy_timeout").await;
    assert_eq!(timeout, sqlite::BUSY_TIMEOUT.as_millis() as i64);
    let mut objects: Vec<String> = database
        .call(|connection| {
            connection
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%'",
                )?
                .query_map([], |row| row.get(0))?
                .collect()
        })
        .await
        .unwrap();
    objects.sort();
    assert_eq!(objects, prefixed_objects(""));
}

#[tokio::test]
async fn opening_again_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.db");
    let id = Uuid::new_v4();
    let snapshot = Snapshot::new(id, "Thing", 2, 1, "{}");
    {
        let (events, snapshots) = sqlite::open(&path).await.unwrap();
        events.append(id, "Thing", 0, &events_for(id, 2)).await.unwrap();
        snapshots.save_snapshot(&snapshot).await.unwrap();
        drop((events, snapshots));
    }
    let events = SqliteEventStore::open(&path).await.unwrap();
    let snapshots = SqliteSnapshotStore::open(&path).await.unwrap();
    assert_eq!(events.stream_version(id, "Thing").await.unwrap(), 2);
    assert_eq!(
        snapshots.get_snapshot(id, "Thing", u32::MAX).await.unwrap(),
        Some(snapshot)
    );
}

fn events_for(id: Uuid, count: u64) -> Vec<EventEnvelope> {
    new_events(id, "Thing", 0, count)
}

#[tokio::test]
async fn stores_opened_together_share_one_in_memory_database_and_others_do_not() {
    let (events, snapshots) = sqlite::open(":memory:").await.unwrap();
    let id = Uuid::new_v4();
    events.append(id, "Thing", 0, &events_for(id, 3)).await.unwrap();
    let seen: i64 = scalar(snapshots.database(), "SELECT count(*) FROM events").await;
    assert_eq!(seen, 3, "the snapshot store's connection sees the events");

    let (elsewhere, _) = sqlite::open(":memory:").await.unwrap();
    assert_eq!(
        elsewhere.stream_version(id, "Thing").await.unwrap(),
        0,
        "another :memory: is another database"
    );
}

#[tokio::test]
async fn urls_name_memory_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let memory = eventsourcing_kit::backend::open("sqlite::memory:").await.unwrap();
    assert_eq!(memory.backend_name(), "sqlite");
    let id = Uuid::new_v4();
    memory
        .events
        .append(id, "Thing", 0, &events_for(id, 1))
        .await
        .unwrap();
    assert_eq!(memory.events.stream_version(id, "Thing").await.unwrap(), 1);

    let relative = dir.path().join("short.db");
    let stores = eventsourcing_kit::backend::open(&format!("sqlite:{}", relative.display()))
        .await
        .unwrap();
    stores
        .events
        .append(id, "Thing", 0, &events_for(id, 1))
        .await
        .unwrap();
    assert!(relative.exists(), "sqlite:PATH creates the file");

    let absolute = dir.path().join("long.db");
    let url = format!("sqlite://{}", absolute.display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    stores
        .snapshots
        .delete_snapshots_by_type("Thing", None)
        .await
        .unwrap();
    assert!(absolute.exists(), "sqlite://PATH creates the file");

    for bad in ["sqlite:", "sqlite://"] {
        match eventsourcing_kit::backend::open(bad).await {
            Err(Error::InvalidConfiguration(_)) => {}
            other => panic!(
                "{bad}: expected InvalidConfiguration, got {:?}",
                other.map(|s| s.backend_name())
            ),
        }
    }
}

/// The names of the tables and indexes in the database, sorted, but SQLite's own.
async fn objects(database: &sqlite::Database) -> Vec<String> {
    let mut names: Vec<String> = database
        .call(|connection| {
            connection
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%'",
                )?
                .query_map([], |row| row.get(0))?
                .collect()
        })
        .await
        .unwrap();
    names.sort();
    names
}

/// The tables and indexes of a store of every kind, named with `prefix`.
fn prefixed_objects(prefix: &str) -> Vec<String> {
    [
        "events",
        "events_event_id",
        "events_slice",
        "events_stream",
        "eventsource_archived_events",
        "eventsource_dead_letters",
        "eventsource_dead_letters_subscription",
        "eventsource_migrations",
        "eventsource_requests",
        "eventsource_settings",
        "eventsource_subject_keys",
        "eventsource_subject_streams",
        "eventsource_subscriptions",
        "snapshots",
        "snapshots_aggregate_schema",
        "snapshots_type_schema",
    ]
    .iter()
    .map(|name| format!("{prefix}{name}"))
    .collect()
}

fn snapshot_of(id: Uuid, version: u64) -> Snapshot {
    eventsourcing_kit::testing::snapshot(id, "Thing", version, 1)
}

/// The event, snapshot and subscription stores of one prefix in a file.
async fn stores_of(
    path: &Path,
    prefix: &str,
) -> (
    SqliteEventStore,
    SqliteSnapshotStore,
    sqlite::SqliteSubscriptionStore,
) {
    let options = sqlite::SqliteOptions::default().prefix(prefix);
    let (events, snapshots) = sqlite::open_with(path, options).await.unwrap();
    let subscriptions = sqlite::SqliteSubscriptionStore::on(events.database().clone())
        .await
        .unwrap();
    (events, snapshots, subscriptions)
}

#[tokio::test]
async fn two_prefixes_in_one_file_are_independent_stores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let (a_events, a_snapshots, a_subscriptions) = stores_of(&path, "a_").await;
    let (b_events, b_snapshots, b_subscriptions) = stores_of(&path, "b_").await;
    let mut expected = [prefixed_objects("a_"), prefixed_objects("b_")].concat();
    expected.sort();
    assert_eq!(
        objects(a_events.database()).await,
        expected,
        "each prefix has its own tables"
    );

    let id = Uuid::new_v4();
    let appended = a_events.append(id, "Thing", 0, &events_for(id, 2)).await.unwrap();
    assert_eq!(appended.position, 2);
    a_snapshots.save_snapshot(&snapshot_of(id, 2)).await.unwrap();
    assert!(a_subscriptions
        .acquire("feed", Uuid::new_v4(), Duration::from_secs(10))
        .await
        .unwrap());

    assert_eq!(b_events.stream_version(id, "Thing").await.unwrap(), 0);
    assert!(b_events
        .read_all(0)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b_events.head(0).await.unwrap().events_after, 0);
    assert!(
        eventsourcing_kit::StreamListing::stream_versions(&b_events, "Thing")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!b_snapshots.snapshot_exists(id, "Thing").await.unwrap());
    assert!(b_subscriptions.subscriptions().await.unwrap().is_empty());

    // The same stream under `b_` starts at version 1 and at position 1 of its own log.
    let appended = b_events.append(id, "Thing", 0, &events_for(id, 1)).await.unwrap();
    assert_eq!((appended.version, appended.position), (1, 1));
    assert_eq!(a_events.stream_version(id, "Thing").await.unwrap(), 2);
    assert_eq!(read(&a_events, id, "Thing").await.unwrap().len(), 2);
    assert_eq!(
        b_events.read_all(0).try_collect::<Vec<_>>().await.unwrap().len(),
        1
    );

    // Unprefixed stores on the file are a third store, and the prefixes keep their data.
    drop((a_events, a_snapshots, a_subscriptions));
    let (plain, _) = sqlite::open(&path).await.unwrap();
    assert_eq!(plain.stream_version(id, "Thing").await.unwrap(), 0);
    let (a_events, a_snapshots, _) = stores_of(&path, "a_").await;
    assert_eq!(a_events.stream_version(id, "Thing").await.unwrap(), 2);
    assert!(a_snapshots.snapshot_exists(id, "Thing").await.unwrap());
}

#[tokio::test]
async fn prefixes_on_one_in_memory_database_share_its_connection_and_not_their_tables() {
    let database = sqlite::Database::open(":memory:").await.unwrap();
    let first = SqliteEventStore::on(database.with_prefix("first_").unwrap())
        .await
        .unwrap();
    let second = SqliteEventStore::on(database.with_prefix("second_").unwrap())
        .await
        .unwrap();
    assert_eq!((first.database().prefix(), database.prefix()), ("first_", ""));
    let id = Uuid::new_v4();
    first.append(id, "Thing", 0, &events_for(id, 3)).await.unwrap();
    assert_eq!(second.stream_version(id, "Thing").await.unwrap(), 0);
    let seen: i64 = scalar(second.database(), "SELECT count(*) FROM first_events").await;
    assert_eq!(
        seen, 3,
        "one database: the second store's connection sees the first's table"
    );
}

#[tokio::test]
async fn a_prefix_that_is_not_a_plain_name_is_refused_and_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.db");
    let memory = sqlite::Database::open(":memory:").await.unwrap();
    for bad in [
        "1app_",
        "app-",
        "app.",
        "a b",
        "é_",
        "x; DROP TABLE events; --",
        "sqlite_",
    ] {
        let options = sqlite::SqliteOptions::default().prefix(bad);
        let refusals = [
            sqlite::open_with(&path, options).await.map(drop).unwrap_err(),
            memory.with_prefix(bad).map(drop).unwrap_err(),
            eventsourcing_kit::backend::open(&format!("sqlite:{}?prefix={bad}", path.display()))
                .await
                .map(drop)
                .unwrap_err(),
        ];
        for refusal in refusals {
            match refusal {
                Error::InvalidConfiguration(message) => assert!(message.contains("prefix"), "{message}"),
                other => panic!("{bad:?}: expected InvalidConfiguration, got {other:?}"),
            }
        }
    }
    assert!(!path.exists(), "a refused prefix creates no file");
}

#[tokio::test]
async fn the_url_prefix_names_the_tables_of_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("url.db");
    let stores = eventsourcing_kit::backend::open(&format!("sqlite:{}?prefix=app_", path.display()))
        .await
        .unwrap();
    let id = Uuid::new_v4();
    stores
        .events
        .append(id, "Thing", 0, &events_for(id, 1))
        .await
        .unwrap();
    stores.snapshots.save_snapshot(&snapshot_of(id, 1)).await.unwrap();
    let owner = Uuid::new_v4();
    assert!(stores
        .subscriptions
        .acquire("feed", owner, Duration::from_secs(10))
        .await
        .unwrap());
    assert!(stores
        .subscriptions
        .save_checkpoint("feed", owner, 1)
        .await
        .unwrap());

    let database = stores.sqlite().unwrap().database();
    assert_eq!(database.prefix(), "app_");
    assert_eq!(objects(database).await, prefixed_objects("app_"));
    for (table, rows) in [
        ("app_events", 1),
        ("app_snapshots", 1),
        ("app_eventsource_subscriptions", 1),
    ] {
        let count: i64 = scalar(database, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(count, rows, "{table}");
    }

    // With SQLite's own parameters, and in memory.
    let url = format!("sqlite://{}?mode=ro&prefix=app_", path.display());
    let read_only = eventsourcing_kit::backend::open(&url).await.unwrap();
    assert_eq!(read_only.events.stream_version(id, "Thing").await.unwrap(), 1);
    let memory = eventsourcing_kit::backend::open("sqlite::memory:?prefix=m_")
        .await
        .unwrap();
    memory
        .events
        .append(id, "Thing", 0, &events_for(id, 1))
        .await
        .unwrap();
    let database = memory.sqlite().unwrap().database();
    assert_eq!(scalar::<i64>(database, "SELECT count(*) FROM m_events").await, 1);
}

#[tokio::test]
async fn a_url_parameter_that_nothing_reads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unread.db");
    for query in [
        "prefx=app_",
        "max_connections=4",
        "prefix=",
        "prefix=a_&prefix=b_",
    ] {
        let url = format!("sqlite:{}?{query}", path.display());
        match eventsourcing_kit::backend::open(&url).await.map(drop) {
            Err(Error::InvalidConfiguration(message)) => {
                let key = query.split('=').next().unwrap();
                assert!(message.contains(&format!("`{key}`")), "{query}: {message}");
            }
            other => panic!("{query}: expected InvalidConfiguration, got {other:?}"),
        }
    }
    assert!(!path.exists(), "a refused URL creates no file");
}

#[tokio::test]
async fn a_url_value_sqlite_would_refuse_or_misread_is_refused_before_opening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.db");
    for (query, rule) in [
        // SQLite reads a flag it does not know as "no": the file would open writable.
        (
            "immutable=maybe",
            "must be one of 1, yes, true, on or 0, no, false, off",
        ),
        ("psow=2", "must be one of 1, yes"),
        ("nolock=4294967296", "must be one of 1, yes"),
        ("immutable", "has no value"),
        // SQLite refuses these, but only once it opens the file.
        ("mode=rwx", "must be one of `ro`, `rw`, `rwc`, `memory`"),
        ("cache=public", "must be one of `shared`, `private`"),
        ("mode=rwc&mode=ro", "given twice"),
    ] {
        let url = format!("sqlite:{}?{query}", path.display());
        let key = query.split('=').next().unwrap();
        match eventsourcing_kit::backend::open(&url).await.map(drop) {
            Err(Error::InvalidConfiguration(message)) => assert!(
                message.contains(&format!("`{key}`")) && message.contains(rule),
                "{query}: {message}"
            ),
            other => panic!("{query}: expected InvalidConfiguration, got {other:?}"),
        }
        assert!(!path.exists(), "{query}: a refused URL creates no file");
    }
    // A flag in SQLite's other words is read as SQLite reads it: `immutable=yes` opens the
    // file read-only, as `immutable=1` does.
    eventsourcing_kit::backend::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let immutable =
        eventsourcing_kit::backend::open(&format!("sqlite:{}?immutable=yes&psow=on", path.display()))
            .await
            .unwrap();
    let id = Uuid::new_v4();
    assert_eq!(immutable.events.stream_version(id, "Thing").await.unwrap(), 0);
    assert!(immutable
        .events
        .append(id, "Thing", 0, &events_for(id, 1))
        .await
        .is_err());
}

/// A read model that counts the events it is given, in a table of its own.
struct Counted;

impl sqlite::SqliteProjection for Counted {
    fn setup(&mut self, tx: &sqlite::rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch("CREATE TABLE IF NOT EXISTS counted (events INTEGER NOT NULL)")?;
        Ok(())
    }

    fn apply(
        &mut self,
        tx: &sqlite::rusqlite::Transaction<'_>,
        events: &[StoredEvent],
    ) -> Result<(), HandlerError> {
        tx.execute("INSERT INTO counted (events) VALUES (?1)", [events.len() as i64])?;
        Ok(())
    }

    fn reset(&mut self, tx: &sqlite::rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch("DELETE FROM counted")?;
        Ok(())
    }
}

#[tokio::test]
async fn a_read_model_keeps_its_checkpoint_in_the_subscriptions_table_of_its_prefix() {
    use eventsourcing_kit::projection::ReadModelStore;

    let database = sqlite::Database::open(":memory:").await.unwrap();
    let (events, subscriptions) = (
        SqliteEventStore::on(database.with_prefix("rm_").unwrap())
            .await
            .unwrap(),
        sqlite::SqliteSubscriptionStore::on(database.with_prefix("rm_").unwrap())
            .await
            .unwrap(),
    );
    let plain = sqlite::SqliteSubscriptionStore::on(database.clone())
        .await
        .unwrap();
    let id = Uuid::new_v4();
    events.append(id, "Thing", 0, &events_for(id, 2)).await.unwrap();
    let batch: Vec<StoredEvent> = events.read_all(0).try_collect().await.unwrap();

    let model = sqlite::SqliteReadModel::new(subscriptions.clone(), Counted);
    model.setup().await.unwrap();
    let owner = Uuid::new_v4();
    assert!(subscriptions
        .acquire("counted", owner, Duration::from_secs(10))
        .await
        .unwrap());
    assert!(model.commit("counted", owner, None, &batch, 2).await.unwrap());
    assert_eq!(model.checkpoint("counted").await.unwrap(), Some(2));
    assert_eq!(
        plain.checkpoint("counted").await.unwrap(),
        None,
        "the unprefixed table is untouched"
    );
    assert!(
        !model.commit("counted", owner, None, &batch, 2).await.unwrap(),
        "the checkpoint moved: a commit from before it changes nothing"
    );
    assert_eq!(
        scalar::<i64>(&database, "SELECT sum(events) FROM counted").await,
        2
    );

    model.reset("counted").await.unwrap();
    assert_eq!(subscriptions.checkpoint("counted").await.unwrap(), None);
    assert_eq!(scalar::<i64>(&database, "SELECT count(*) FROM counted").await, 0);
}

#[tokio::test]
async fn a_foreign_table_of_the_same_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.db");
    let database = sqlite::Database::open(&path).await.unwrap();
    database
        .call(|connection| {
            connection.execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT)")
        })
        .await
        .unwrap();
    match SqliteEventStore::on(database.clone()).await {
        Err(Error::InvalidConfiguration(message)) => assert!(message.contains("`events`"), "{message}"),
        other => panic!("expected InvalidConfiguration, got {other:?}"),
    }
    // The tables are one layout: the snapshot store refuses the file too.
    match SqliteSnapshotStore::on(database).await {
        Err(Error::InvalidConfiguration(message)) => assert!(message.contains("`events`"), "{message}"),
        other => panic!("expected InvalidConfiguration, got {other:?}"),
    }
}

#[tokio::test]
async fn payload_and_state_text_is_stored_untouched() {
    let (events, snapshots) = sqlite::open(":memory:").await.unwrap();
    let id = Uuid::new_v4();
    let payload = "{ \"b\" : 1,\n  \"a\": [ 1.50, 2e3 ] }";
    events
        .append(id, "Thing", 0, &[event(id, "Thing", 1, payload)])
        .await
        .unwrap();
    assert_eq!(&*read(&events, id, "Thing").await.unwrap()[0].payload, payload);

    let snapshot = Snapshot::new(id, "Thing", 1, 1, payload);
    snapshots.save_snapshot(&snapshot).await.unwrap();
    let stored = snapshots
        .get_snapshot(id, "Thing", u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored, snapshot,
        "every field, and the timestamp to the nanosecond"
    );
}

#[tokio::test]
async fn values_sqlite_cannot_hold_are_refused_and_nothing_is_written() {
    let (events, snapshots) = sqlite::open(":memory:").await.unwrap();
    let id = Uuid::new_v4();
    let mut far = events_for(id, 1);
    far[0].occurred_at = chrono::DateTime::from_timestamp(300_000_000_000, 0).unwrap();
    match events.append(id, "Thing", 0, &far).await {
        Err(Error::InvalidInput(message)) => assert!(message.contains("timestamp"), "{message}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(events.stream_version(id, "Thing").await.unwrap(), 0);

    let snapshot = Snapshot::new(id, "Thing", u64::MAX, 1, "{}");
    match snapshots.save_snapshot(&snapshot).await {
        Err(Error::InvalidInput(message)) => assert!(message.contains("version"), "{message}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(!snapshots.snapshot_exists(id, "Thing").await.unwrap());
}

fn assert_corrupt<T: std::fmt::Debug>(result: eventsourcing_kit::Result<T>, column: &str, case: &str) {
    match result {
        Err(Error::Corrupt { what, reason }) => {
            assert!(
                reason.contains(column),
                "{case}: the reason {reason:?} names the column `{column}`"
            );
            assert!(what.contains("SQLite"), "{case}: {what:?} says where");
        }
        other => panic!("{case}: expected Error::Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn corrupt_event_rows_are_typed_errors() {
    let events = SqliteEventStore::open(":memory:").await.unwrap();
    let cases = [
        ("metadata", "'{not json'"),
        ("event_id", "'not-a-uuid'"),
        ("correlation_id", "'zzz'"),
        ("causation_id", "x'00'"),
        ("occurred_at", "'yesterday'"),
        ("event_version", "-1"),
        ("event_version", "5000000000"),
        ("event_version", "'seven'"),
        ("aggregate_version", "'two'"),
        ("aggregate_version", "2.5"),
        ("event_version", "x'13'"),
        ("event_type", "x'00'"),
        ("payload", "x'00ff'"),
    ];
    for (column, value) in cases {
        let case = format!("{column} = {value}");
        let id = Uuid::new_v4();
        let batch = events_for(id, 2);
        events.append(id, "Thing", 0, &batch).await.unwrap();
        execute(
            events.database(),
            &format!("UPDATE events SET {column} = {value} WHERE event_id = ?"),
            batch[1].event_id.to_string(),
        )
        .await;
        let mut stream = events.read_stream(id, "Thing", 0);
        let first = stream
            .next()
            .await
            .expect("the first event")
            .expect("the first event is intact");
        assert_eq!(first.event_id, batch[0].event_id);
        assert_corrupt(
            stream.next().await.expect("an item for the corrupt row"),
            column,
            &case,
        );
        assert!(
            stream.next().await.is_none(),
            "{case}: the stream ends at the corrupt row"
        );
        let mut log = events.read_all(first.position);
        assert_corrupt(
            log.next().await.expect("an item for the corrupt row"),
            column,
            &case,
        );
    }

    let id = Uuid::new_v4();
    let batch = events_for(id, 1);
    events.append(id, "Thing", 0, &batch).await.unwrap();
    execute(
        events.database(),
        "UPDATE events SET aggregate_version = -3 WHERE event_id = ?",
        batch[0].event_id.to_string(),
    )
    .await;
    assert_corrupt(
        events.stream_version(id, "Thing").await,
        "aggregate_version",
        "stream_version at -3",
    );
    assert_corrupt(
        events
            .append(id, "Thing", 1, &new_events(id, "Thing", 1, 1))
            .await,
        "aggregate_version",
        "appending to a stream at -3",
    );
    let all: Vec<_> = events.read_all(0).collect().await;
    assert!(
        all.iter().any(|item| matches!(item, Err(Error::Corrupt { .. }))),
        "read_all reaches the -3"
    );
}

#[tokio::test]
async fn corrupt_snapshot_rows_are_typed_errors_and_a_good_save_replaces_them() {
    let snapshots = SqliteSnapshotStore::open(":memory:").await.unwrap();
    let cases = [
        ("created_at", "'last week'"),
        ("version", "-1"),
        ("version", "'ten'"),
        ("schema_version", "-1"),
        ("state", "x'00'"),
    ];
    for (column, value) in cases {
        let case = format!("{column} = {value}");
        let id = Uuid::new_v4();
        let snapshot = Snapshot::new(id, "Thing", 10, 1, r#"{"ok":true}"#);
        snapshots.save_snapshot(&snapshot).await.unwrap();
        execute(
            snapshots.database(),
            &format!("UPDATE snapshots SET {column} = {value} WHERE aggregate_id = ?"),
            id.to_string(),
        )
        .await;
        assert_corrupt(snapshots.get_snapshot(id, "Thing", u32::MAX).await, column, &case);
        assert!(
            snapshots.snapshot_exists(id, "Thing").await.unwrap(),
            "{case}: exists"
        );
        let newer = {
            let mut value = snapshot.clone();
            value.version = 11;
            value
        };
        assert!(
            snapshots.save_snapshot(&newer).await.unwrap(),
            "{case}: a newer good snapshot is stored"
        );
        assert_eq!(
            snapshots.get_snapshot(id, "Thing", u32::MAX).await.unwrap(),
            Some(newer),
            "{case}: after the good save"
        );
    }
}

#[tokio::test]
async fn a_load_replays_every_event_past_a_corrupt_snapshot() {
    use common::{opened, Account};

    let (events, snapshots) = sqlite::open(":memory:").await.unwrap();
    let repo = Repository::<Account>::new(events.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::every(5).unwrap());
    let id = Uuid::new_v4();
    let mut root = opened(id, 5);
    repo.save(&mut root).await.unwrap();
    assert!(
        snapshots.snapshot_exists(id, "Account").await.unwrap(),
        "the policy took a snapshot"
    );
    execute(
        snapshots.database(),
        "UPDATE snapshots SET created_at = 'never' WHERE aggregate_id = ?",
        id.to_string(),
    )
    .await;

    let loaded = repo.load(id).await.unwrap();
    assert_eq!(loaded.version(), 6);
    assert_eq!(loaded.state(), root.state());
    assert_eq!(repo.metrics().misses("Account", MissReason::StoreError), 1);
}

/// `:memory:` has one connection: a read that held it between pages would block every other
/// call until the read is dropped.
#[tokio::test]
async fn a_read_part_way_through_a_long_stream_holds_no_connection() {
    let (events, snapshots) = sqlite::open(":memory:").await.unwrap();
    let id = Uuid::new_v4();
    let all = events_for(id, 2_500);
    events.append(id, "Thing", 0, &all).await.unwrap();

    let mut reading = events.read_stream(id, "Thing", 0);
    let mut read = vec![reading.next().await.unwrap().unwrap()];
    let other = Uuid::new_v4();
    let meanwhile = async {
        events
            .append(other, "Thing", 0, &events_for(other, 1))
            .await
            .unwrap();
        events
            .append(id, "Thing", 2_500, &new_events(id, "Thing", 2_500, 1))
            .await
            .unwrap();
        snapshots.delete_snapshots_by_type("Thing", None).await.unwrap();
        let log: Vec<_> = events.read_all(0).take(10).collect().await;
        assert_eq!(log.len(), 10);
    };
    tokio::time::timeout(Duration::from_secs(10), meanwhile)
        .await
        .expect("other calls wait for the read");
    while let Some(event) = reading.next().await {
        read.push(event.unwrap());
    }
    let versions: Vec<u64> = read.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(
        versions,
        (1..=2_501).collect::<Vec<_>>(),
        "the read sees the event appended part way"
    );
}

const RACE_TYPE: &str = "Race";

/// Appends one event at a time until the stream reaches `versions`, each at the version it
/// just read; returns the versions this writer won. Any failure but a conflict panics.
async fn race(store: &SqliteEventStore, id: Uuid, writer: &str, versions: u64) -> Vec<u64> {
    let mut won = Vec::new();
    loop {
        let at = store.stream_version(id, RACE_TYPE).await.unwrap();
        if at >= versions {
            return won;
        }
        let batch = [event(
            id,
            RACE_TYPE,
            at + 1,
            &format!(r#"{{"writer":"{writer}"}}"#),
        )];
        match store.append(id, RACE_TYPE, at, &batch).await {
            Ok(_) => won.push(at + 1),
            Err(Error::Conflict { expected, actual, .. }) => {
                assert_eq!(expected, at, "{writer}: the conflict's expected version");
                assert!(actual > at, "{writer}: lost at {at} to a stream at {actual}");
            }
            Err(e) => panic!("{writer}: appending at {at} failed with {e}"),
        }
    }
}

/// The stream holds `versions` events, each written by the writer that won its version.
async fn assert_winners(store: &SqliteEventStore, id: Uuid, versions: u64, winners: &[(&str, Vec<u64>)]) {
    let stored = read(store, id, RACE_TYPE).await.unwrap();
    assert_eq!(stored.len() as u64, versions);
    for e in &stored {
        let writer = serde_json::from_str::<serde_json::Value>(&e.payload).unwrap()["writer"]
            .as_str()
            .unwrap()
            .to_owned();
        let claimed: Vec<&str> = winners
            .iter()
            .filter(|(_, won)| won.contains(&e.aggregate_version))
            .map(|(w, _)| *w)
            .collect();
        assert_eq!(
            claimed,
            [writer.as_str()],
            "version {}: written by {writer}, won by {claimed:?}",
            e.aggregate_version
        );
    }
    let total: usize = winners.iter().map(|(_, won)| won.len()).sum();
    assert_eq!(total as u64, versions, "one winner per version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_racing_on_one_file_have_one_winner_per_version() {
    const VERSIONS: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    let shared = SqliteEventStore::open(&path).await.unwrap();
    let own = SqliteEventStore::open(&path).await.unwrap();
    let id = Uuid::new_v4();
    let writers = [
        ("a", shared.clone()),
        ("b", shared.clone()),
        ("c", own),
        ("d", SqliteEventStore::open(&path).await.unwrap()),
    ];
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|(name, store)| tokio::spawn(async move { (name, race(&store, id, name, VERSIONS).await) }))
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.push(task.await.unwrap());
    }
    assert_winners(&shared, id, VERSIONS, &winners).await;
}

/// Set in the second process of the test below: `PATH|AGGREGATE_ID`.
const SECOND_WRITER: &str = "EVENTSOURCE_SQLITE_SECOND_WRITER";
const PROCESS_VERSIONS: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_racing_on_one_file_have_one_winner_per_version() {
    use std::io::BufRead;

    if let Ok(spec) = std::env::var(SECOND_WRITER) {
        // The second process: race, then report what it won.
        let (path, id) = spec.rsplit_once('|').unwrap();
        let store = SqliteEventStore::open(path).await.unwrap();
        println!("second-writer-ready");
        let won = race(&store, id.parse().unwrap(), "second", PROCESS_VERSIONS).await;
        println!("second-writer-won={}", serde_json::to_string(&won).unwrap());
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two-processes.db");
    let store = SqliteEventStore::open(&path).await.unwrap();
    let id = Uuid::new_v4();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "processes_racing_on_one_file_have_one_winner_per_version",
            "--nocapture",
        ])
        .env(SECOND_WRITER, format!("{}|{id}", path.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // What follows `marker` in the child's output. The marker may not start its line: with one
    // test thread, libtest prints `test NAME ... ` before the test's own output.
    let after = |marker: &str| loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some((_, rest)) = line.split_once(marker) {
                    return rest.to_owned();
                }
            }
            Err(e) => panic!("the second process printed no {marker:?}: {e}"),
        }
    };
    after("second-writer-ready");

    let first = race(&store, id, "first", PROCESS_VERSIONS).await;
    let second: Vec<u64> = serde_json::from_str(&after("second-writer-won=")).unwrap();
    assert!(child.wait().unwrap().success(), "the second process failed");
    println!("first process won {}, second {}", first.len(), second.len());
    assert_winners(
        &store,
        id,
        PROCESS_VERSIONS,
        &[("first", first), ("second", second)],
    )
    .await;
}

/// Calls dropped part way, as a timeout drops them, leave the one connection of `:memory:`,
/// and so the database, usable and whole: no transaction is left open on it.
#[tokio::test]
async fn calls_dropped_part_way_leave_the_in_memory_database_intact() {
    calls_dropped_part_way_leave_the_database_intact(":memory:").await;
}

/// On a file, a transaction left open would hold the write lock and stall every writer.
#[tokio::test]
async fn calls_dropped_part_way_leave_a_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    calls_dropped_part_way_leave_the_database_intact(dir.path().join("dropped.db")).await;
}

async fn calls_dropped_part_way_leave_the_database_intact(path: impl AsRef<Path>) {
    let (events, snapshots) = sqlite::open(path).await.unwrap();
    let id = Uuid::new_v4();
    events
        .append(id, "Thing", 0, &events_for(id, 1_200))
        .await
        .unwrap();
    let snapshot = Snapshot::new(id, "Thing", 1, 1, "{}");
    let mut appended = 1_200;
    for i in 0..200u64 {
        // Deadlines from nothing to 2 ms, to drop the calls at every stage.
        let deadline = Duration::from_micros(i * 37 % 2_000);
        let batch = new_events(id, "Thing", appended, 1);
        // A dropped append may or may not have committed, and on a file may commit after the
        // next read of the version: a conflict then is right.
        match tokio::time::timeout(deadline, events.append(id, "Thing", appended, &batch)).await {
            Ok(Ok(_) | Err(Error::Conflict { .. })) | Err(_) => {}
            Ok(Err(e)) => panic!("appending at {appended}: {e}"),
        }
        appended = events.stream_version(id, "Thing").await.unwrap();
        let read = async { events.read_stream(id, "Thing", 0).take(1_001).count().await };
        let _ = tokio::time::timeout(deadline, read).await;
        let newer = {
            let mut value = snapshot.clone();
            value.version = i;
            value
        };
        let _ = tokio::time::timeout(deadline, snapshots.save_snapshot(&newer)).await;
    }
    let stored = read(&events, id, "Thing").await.unwrap();
    let version = stored.len() as u64;
    assert!(version > 1_200, "no append of 200 got through");
    let versions: Vec<u64> = stored.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(versions, (1..=version).collect::<Vec<_>>());
    // The last dropped append may still commit on its blocking thread: a conflict with it is
    // right, and the append after it works.
    for attempt in 0.. {
        let version = events.stream_version(id, "Thing").await.unwrap();
        match events
            .append(id, "Thing", version, &new_events(id, "Thing", version, 1))
            .await
        {
            Ok(_) => break,
            Err(Error::Conflict { .. }) if attempt < 3 => continue,
            Err(e) => panic!("appending after the dropped calls: {e}"),
        }
    }
    assert!(snapshots.snapshot_exists(id, "Thing").await.unwrap());
}
