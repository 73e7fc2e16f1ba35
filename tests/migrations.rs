//! The numbered migrations of the SQLite and PostgreSQL layouts (`eventsource_migrations`):
//! a database made by 0.1, before versions were recorded, is upgraded in place and keeps
//! its events and snapshots; stores that open or migrate one new database at once apply
//! each step once; a database recorded at a layout newer than the library's is refused
//! rather than written to; and store errors say whether making the call again can help.
//!
//! The "0.1 layout" databases are built with the exact statements 0.1 ran, so an upgrade is
//! tested against what users really have on disk, not against what the library creates now.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL` (such as
//! `postgres://postgres@127.0.0.1:5432/test`); without it they say they are skipped and
//! pass, unless `EVENTSOURCE_REQUIRE_POSTGRES=1`, which makes them fail. Each one works in a
//! schema of its own, dropped at the end, so they run beside any other test on the database.

mod common;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{envelope, opened, Account, MoneyDeposited};
use eventsourcing_kit::backend::postgres::{pool_options, PgPool, PostgresEventStore, PostgresSnapshotStore};
use eventsourcing_kit::backend::sqlite::{self, rusqlite, Database, SqliteEventStore};
use eventsourcing_kit::slice::{SliceCount, SliceRange};
use eventsourcing_kit::{
    Error, EventStore, Repository, SliceFeed, SnapshotPolicy, SnapshotStore, StoredEvent, Uuid,
};
use futures_util::{StreamExt, TryStreamExt};

// ---------------------------------------------------------------------------------------
// What 0.1 wrote (the account's amounts in cents, as this program's account reads them)

const OPENED: &str = r#"{"owner_name":"Ada","initial_balance":10000}"#;
const DEPOSITED: &str = r#"{"amount":500}"#;
/// The state after the first event, as 0.1 snapshotted it.
const STATE_AT_1: &str = r#"{"owner_name":"Ada","balance":10000,"transaction_count":0}"#;
const SNAPSHOT_TAKEN_AT: &str = "2024-01-01T00:00:00.500000000Z";

/// The two events of the account in every 0.1 database: version, type, time, payload.
const LEGACY_EVENTS: [(i64, &str, &str, &str); 2] = [
    (1, "AccountOpened", "2024-01-01T00:00:00.000000000Z", OPENED),
    (2, "MoneyDeposited", "2024-01-01T00:00:01.000000000Z", DEPOSITED),
];

/// The statements 0.1 ran on a SQLite file (each table, then its indexes); it recorded no
/// version.
const SQLITE_0_1_LAYOUT: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event_version INTEGER NOT NULL,
        aggregate_id TEXT NOT NULL,
        aggregate_type TEXT NOT NULL,
        aggregate_version INTEGER NOT NULL,
        occurred_at TEXT NOT NULL,
        correlation_id TEXT,
        causation_id TEXT,
        metadata TEXT,
        payload TEXT NOT NULL
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_stream
                ON events (aggregate_id, aggregate_type, aggregate_version)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (event_id)",
    "CREATE TABLE IF NOT EXISTS snapshots (
        aggregate_id TEXT NOT NULL,
        aggregate_type TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS snapshots_aggregate
                ON snapshots (aggregate_id, aggregate_type)",
    "CREATE INDEX IF NOT EXISTS snapshots_type_schema
                ON snapshots (aggregate_type, schema_version)",
];

/// The statements 0.1 ran in a PostgreSQL schema (`jsonb` columns, no migrations table),
/// but for the schema itself, which the tests create.
fn postgres_0_1_layout(schema: &str) -> [String; 3] {
    let events = format!("\"{schema}\".eventsource_events");
    let snapshots = format!("\"{schema}\".eventsource_snapshots");
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {events} (
            position          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id          UUID        NOT NULL,
            event_type        TEXT        NOT NULL,
            event_version     BIGINT      NOT NULL,
            aggregate_id      UUID        NOT NULL,
            aggregate_type    TEXT        NOT NULL,
            aggregate_version BIGINT      NOT NULL,
            occurred_at       TIMESTAMPTZ NOT NULL,
            occurred_at_ns    INTEGER     NOT NULL DEFAULT 0,
            correlation_id    UUID,
            causation_id      UUID,
            metadata          JSONB,
            payload           JSONB       NOT NULL,
            CONSTRAINT eventsource_events_event_id_key UNIQUE (event_id),
            CONSTRAINT eventsource_events_stream_version_key
                UNIQUE (aggregate_id, aggregate_type, aggregate_version),
            CONSTRAINT eventsource_events_aggregate_version_check CHECK (aggregate_version >= 1),
            CONSTRAINT eventsource_events_occurred_at_ns_check
                CHECK (occurred_at_ns BETWEEN 0 AND 999)
        )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {snapshots} (
            aggregate_id   UUID        NOT NULL,
            aggregate_type TEXT        NOT NULL,
            version        BIGINT      NOT NULL,
            state          JSONB       NOT NULL,
            schema_version BIGINT      NOT NULL,
            created_at     TIMESTAMPTZ NOT NULL,
            created_at_ns  INTEGER     NOT NULL DEFAULT 0,
            CONSTRAINT eventsource_snapshots_pkey PRIMARY KEY (aggregate_id, aggregate_type),
            CONSTRAINT eventsource_snapshots_created_at_ns_check
                CHECK (created_at_ns BETWEEN 0 AND 999)
        )"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS eventsource_snapshots_type_schema_idx
            ON {snapshots} (aggregate_type, schema_version)"
        ),
    ]
}

fn timestamp(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
}

/// Checks that the recorded versions are every step once, in order, from 1, through at least
/// step 2 (the snapshots' `event_id`, and `json` on PostgreSQL). Later steps may be added to
/// the library without these tests changing.
fn assert_every_step_once(versions: &[i64]) {
    let expected: Vec<i64> = (1..=versions.len() as i64).collect();
    assert_eq!(
        versions,
        expected.as_slice(),
        "a step is missing or recorded twice"
    );
    assert!(
        versions.len() >= 2,
        "steps 1 and 2 are not both recorded: {versions:?}"
    );
}

// ---------------------------------------------------------------------------------------
// SQLite

/// The account's two events, stored before slices were, are read in its slice's feed and in
/// no other: the migration gave them their slice.
async fn assert_slice_holds_the_account(events: &impl SliceFeed, id: Uuid) {
    let slices = events.slice_count().await.unwrap();
    assert_eq!(
        slices,
        SliceCount::DEFAULT,
        "a store sliced before the number was recorded"
    );
    let slice = slices.slice_of("Account", id);
    let own = SliceRange::new(slice, slice).unwrap();
    let read: Vec<StoredEvent> = events.read_slices(own, 0).try_collect().await.unwrap();
    let versions: Vec<u64> = read.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(versions, [1, 2], "the account's events in its slice");
    let others = [
        SliceRange::new(0, slice.wrapping_sub(1)),
        SliceRange::new(slice + 1, slices.get() - 1),
    ];
    for others in others.into_iter().flatten() {
        let elsewhere: Vec<StoredEvent> = events.read_slices(others, 0).try_collect().await.unwrap();
        assert!(
            elsewhere.iter().all(|e| e.aggregate_id != id),
            "in no other slice"
        );
    }
}

/// A file as 0.1 left it: its tables, the account `id` with two events, and a snapshot at
/// version 1 written before snapshots named their event.
fn write_sqlite_0_1(path: &Path, id: Uuid) {
    let connection = rusqlite::Connection::open(path).unwrap();
    for statement in SQLITE_0_1_LAYOUT {
        connection.execute_batch(statement).unwrap();
    }
    for (version, event_type, occurred_at, payload) in LEGACY_EVENTS {
        connection
            .execute(
                "INSERT INTO events (event_id, event_type, event_version, aggregate_id,
                    aggregate_type, aggregate_version, occurred_at, correlation_id,
                    causation_id, metadata, payload)
                 VALUES (?1, ?2, 1, ?3, 'Account', ?4, ?5, NULL, NULL, NULL, ?6)",
                (
                    Uuid::new_v4().hyphenated().to_string(),
                    event_type,
                    id.hyphenated().to_string(),
                    version,
                    occurred_at,
                    payload,
                ),
            )
            .unwrap();
    }
    connection
        .execute(
            "INSERT INTO snapshots (aggregate_id, aggregate_type, version, state, schema_version,
                created_at)
             VALUES (?1, 'Account', 1, ?2, 1, ?3)",
            (id.hyphenated().to_string(), STATE_AT_1, SNAPSHOT_TAKEN_AT),
        )
        .unwrap();
}

/// The steps recorded in the file for the database's table prefix: version and when it was
/// applied, in order.
async fn sqlite_migrations(database: &Database) -> Vec<(i64, String)> {
    let sql = format!(
        "SELECT version, applied_at FROM {}eventsource_migrations ORDER BY version",
        database.prefix()
    );
    database
        .call(move |connection| {
            let mut statement = connection.prepare(&sql)?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<(i64, String)>>>()?;
            Ok(rows)
        })
        .await
        .unwrap()
}

fn versions(migrations: &[(i64, String)]) -> Vec<i64> {
    migrations.iter().map(|(version, _)| *version).collect()
}

#[tokio::test]
async fn sqlite_0_1_file_is_upgraded_in_place_and_its_snapshot_still_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.db");
    let id = Uuid::new_v4();
    write_sqlite_0_1(&path, id);

    let (events, snapshots) = sqlite::open(&path).await.unwrap();
    // Step 1 finds the 0.1 tables and is recorded all the same, so the file's layout is
    // known from now on.
    assert_every_step_once(&versions(&sqlite_migrations(events.database()).await));
    let event_id_columns: i64 = events
        .database()
        .call(|connection| {
            connection.query_row(
                "SELECT count(*) FROM pragma_table_info('snapshots') WHERE name = 'event_id'",
                [],
                |row| row.get(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(event_id_columns, 1, "step 2 adds `event_id` to the snapshots");
    assert_slice_holds_the_account(&events, id).await;

    let legacy = snapshots
        .get_snapshot(id, "Account", u32::MAX)
        .await
        .unwrap()
        .expect("the 0.1 snapshot survives the upgrade");
    assert_eq!((legacy.version, legacy.event_id), (1, None));

    // A legacy snapshot names no event: it must still be used (checked by version alone),
    // or every upgraded database would replay every stream once.
    let repo = Repository::<Account>::new(events.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::every(100).unwrap());
    let root = repo.load(id).await.unwrap();
    assert_eq!(root.version(), 2);
    assert_eq!(root.state().balance, 10_500);
    assert_eq!(root.state().transaction_count, 1);
    assert_eq!(repo.metrics().hits("Account"), 1, "the 0.1 snapshot was not used");
    assert_eq!(repo.metrics().total_misses("Account"), 0);

    // The upgraded table takes the new column: a snapshot written now names its event.
    let every_save = Repository::<Account>::new(events.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::every(1).unwrap());
    let mut root = every_save.load(id).await.unwrap();
    root.record(MoneyDeposited { amount: 100 });
    assert_eq!(every_save.save(&mut root).await.unwrap(), 3);
    let fresh = snapshots
        .get_snapshot(id, "Account", u32::MAX)
        .await
        .unwrap()
        .expect("the save at version 3 writes a snapshot");
    assert_eq!(fresh.version, 3);
    assert!(fresh.event_id.is_some());
    assert_eq!(fresh.event_id, root.last_event_id());

    // Opening again must find every step applied and touch nothing, not even `applied_at`.
    let before = sqlite_migrations(events.database()).await;
    drop((repo, every_save, events, snapshots));
    let (events, _snapshots) = sqlite::open(&path).await.unwrap();
    assert_eq!(sqlite_migrations(events.database()).await, before);
    let root = Repository::<Account>::new(events).load(id).await.unwrap();
    assert_eq!(root.state().balance, 10_600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_stores_opening_one_new_file_at_once_apply_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    // Each open is two stores with connections of their own, so sixteen migrations race;
    // a step applied twice would fail its open (`ADD COLUMN` of a column already there).
    let opens: Vec<_> = (0..8).map(|_| tokio::spawn(sqlite::open(path.clone()))).collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("an open panicked").expect("an open failed"));
    }
    for (events, _) in &stores {
        assert_every_step_once(&versions(&sqlite_migrations(events.database()).await));
    }

    let id = Uuid::new_v4();
    let (events, snapshots) = &stores[7];
    let repo = Repository::<Account>::new(events.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::every(2).unwrap());
    assert_eq!(repo.save(&mut opened(id, 2)).await.unwrap(), 3);
    let elsewhere = Repository::<Account>::new(stores[0].0.clone());
    assert_eq!(elsewhere.load(id).await.unwrap().state().balance, 10_200);
}

/// A program of a version before slices, still running when the file was upgraded, cannot
/// store an event without its slice: its append fails with a message, and stores nothing.
#[tokio::test]
async fn sqlite_an_event_stored_without_its_slice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sliced.db");
    let events = SqliteEventStore::open(&path).await.unwrap();
    let refused = events
        .database()
        .call(|connection| {
            connection.execute(
                "INSERT INTO events (event_id, event_type, event_version, aggregate_id,
                    aggregate_type, aggregate_version, occurred_at, payload)
                 VALUES ('8c0e3a4c-0bb8-4a57-9a4a-3f1d0b6f6c01', 'Noted', 1,
                    '8c0e3a4c-0bb8-4a57-9a4a-3f1d0b6f6c02', 'Account', 1,
                    '2026-01-01T00:00:00Z', '{}')",
                [],
            )
        })
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("upgrade the program"),
        "{refused:?}"
    );
    assert_eq!(events.head(0).await.unwrap().events_after, 0);
}

/// A file of layout 5, whose events carry request ids, is upgraded by step 6: the request
/// index holds each id's last batch, as the stream holds it.
#[tokio::test]
async fn sqlite_request_ids_of_layout_5_fill_the_request_index() {
    use eventsourcing_kit::RequestIndex;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layout5.db");
    let (id, request) = (Uuid::new_v4(), Uuid::new_v4());
    {
        let events = SqliteEventStore::open(&path).await.unwrap();
        let mut batch = vec![
            envelope(
                id,
                1,
                "AccountOpened",
                r#"{"owner_name":"Ada","initial_balance":100}"#,
            ),
            envelope(id, 2, "MoneyDeposited", r#"{"amount":100}"#),
        ];
        batch[1].request_id = Some(request.into());
        events.append(id, "Account", 0, &batch).await.unwrap();
        // Back to layout 5: no request index, no slices.
        events
            .database()
            .call(|connection| {
                connection.execute_batch(
                    "DROP TABLE eventsource_requests;
                     DROP TRIGGER events_slice_required;
                     DROP INDEX events_slice;
                     ALTER TABLE events DROP COLUMN slice;
                     DELETE FROM eventsource_migrations WHERE version >= 6;",
                )
            })
            .await
            .unwrap();
    }
    let events = SqliteEventStore::open(&path).await.unwrap();
    assert!(versions(&sqlite_migrations(events.database()).await).contains(&6));
    let found = events
        .find_request(&request.into())
        .await
        .unwrap()
        .expect("the request id of the stored events is indexed");
    let stored: Vec<StoredEvent> = events.read_stream(id, "Account", 0).try_collect().await.unwrap();
    assert_eq!(
        found.outcome,
        eventsourcing_kit::request::RequestOutcome::Executed {
            version: 2,
            position: stored[1].position
        }
    );
}

#[tokio::test]
async fn sqlite_file_of_a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    let (events, snapshots) = sqlite::open(&path).await.unwrap();
    events
        .database()
        .call(|connection| {
            connection.execute(
                "INSERT INTO eventsource_migrations (version, description, applied_at)
                 VALUES (99, 'a layout from a later version', '2099-01-01T00:00:00.000Z')",
                [],
            )
        })
        .await
        .unwrap();
    drop((events, snapshots));

    // Writing to a layout this library does not know could corrupt what a newer program
    // wrote; the refusal must say why, so a person knows to upgrade.
    let refused = sqlite::open(&path).await.map(drop).unwrap_err();
    match &refused {
        Error::InvalidConfiguration(message) => {
            assert!(message.contains("layout"), "{message}");
            assert!(message.contains("99"), "{message}");
        }
        other => panic!("expected InvalidConfiguration, got {other:?}"),
    }
    assert!(!refused.is_transient());

    // The same through a database of the program's own.
    let database = Database::open(&path).await.unwrap();
    let refused = SqliteEventStore::on(database).await.map(drop).unwrap_err();
    assert!(matches!(refused, Error::InvalidConfiguration(_)), "{refused:?}");

    let connection = rusqlite::Connection::open(&path).unwrap();
    let recorded: i64 = connection
        .query_row("SELECT max(version) FROM eventsource_migrations", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(recorded, 99, "a refused open must leave the record as it was");
}

#[tokio::test]
async fn sqlite_refusals_are_not_transient_and_a_file_that_is_not_a_database_is_permanent() {
    let (events, _snapshots) = sqlite::open(":memory:").await.unwrap();
    let id = Uuid::new_v4();
    events
        .append(id, "Account", 0, &[envelope(id, 1, "AccountOpened", OPENED)])
        .await
        .unwrap();

    // A retry loop keyed on `is_transient` must not repeat a lost race or a bad batch: the
    // first needs the command decided again, the second can never succeed.
    let conflict = events
        .append(id, "Account", 0, &[envelope(id, 1, "AccountOpened", OPENED)])
        .await
        .unwrap_err();
    assert!(conflict.is_conflict(), "{conflict:?}");
    assert!(!conflict.is_transient());

    let invalid = events.append(id, "Account", 1, &[]).await.unwrap_err();
    assert!(matches!(invalid, Error::InvalidInput(_)), "{invalid:?}");
    assert!(!invalid.is_transient());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-database.db");
    std::fs::write(&path, "this is not a SQLite database\n".repeat(200)).unwrap();
    let err = sqlite::open(&path).await.map(drop).unwrap_err();
    assert!(matches!(err, Error::Store { transient: false, .. }), "{err:?}");
}

/// Whether the file has a table of this name.
fn sqlite_has_table(path: &Path, name: &str) -> bool {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
        == 1
}

#[tokio::test]
async fn sqlite_prefixed_stores_leave_a_0_1_file_as_it_is_and_each_prefix_migrates_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.db");
    let id = Uuid::new_v4();
    write_sqlite_0_1(&path, id);

    let prefixed = sqlite::SqliteOptions::default().prefix("p_");
    let (events, snapshots) = sqlite::open_with(&path, prefixed.clone()).await.unwrap();
    assert_every_step_once(&versions(&sqlite_migrations(events.database()).await));
    assert_eq!(
        events.stream_version(id, "Account").await.unwrap(),
        0,
        "p_ has its own events"
    );
    assert_eq!(
        snapshots.get_snapshot(id, "Account", u32::MAX).await.unwrap(),
        None
    );
    assert!(
        !sqlite_has_table(&path, "eventsource_migrations"),
        "migrating p_ records nothing for the unprefixed tables"
    );
    let columns: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM pragma_table_info('snapshots')", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(columns, 6, "the 0.1 snapshots table is untouched");
    let p_appended = events
        .append(id, "Account", 0, &[envelope(id, 1, "AccountOpened", OPENED)])
        .await
        .unwrap()
        .version;
    assert_eq!(p_appended, 1);
    let before = sqlite_migrations(events.database()).await;
    drop((events, snapshots));

    // The unprefixed stores upgrade the 0.1 tables, which keep their events.
    let (legacy, _) = sqlite::open(&path).await.unwrap();
    assert_every_step_once(&versions(&sqlite_migrations(legacy.database()).await));
    let root = Repository::<Account>::new(legacy).load(id).await.unwrap();
    assert_eq!((root.version(), root.state().balance), (2, 10_500));

    let (events, _) = sqlite::open_with(&path, prefixed).await.unwrap();
    assert_eq!(
        sqlite_migrations(events.database()).await,
        before,
        "upgrading the unprefixed tables leaves p_'s record as it was"
    );
    assert_eq!(events.stream_version(id, "Account").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_stores_of_two_prefixes_opening_one_new_file_at_once_apply_each_step_once_per_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let opens: Vec<_> = (0..8)
        .map(|i| {
            let options = sqlite::SqliteOptions::default().prefix(["a_", "b_"][i % 2]);
            tokio::spawn(sqlite::open_with(path.clone(), options))
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("an open panicked").expect("an open failed"));
    }
    for (events, _) in &stores {
        assert_every_step_once(&versions(&sqlite_migrations(events.database()).await));
    }
    assert!(!sqlite_has_table(&path, "eventsource_migrations"));
}

#[tokio::test]
async fn sqlite_a_prefix_of_a_newer_layout_is_refused_and_the_others_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    let newer = sqlite::SqliteOptions::default().prefix("new_");
    let (events, _) = sqlite::open_with(&path, newer.clone()).await.unwrap();
    events
        .database()
        .call(|connection| {
            connection.execute(
                "INSERT INTO new_eventsource_migrations (version, description, applied_at)
                 VALUES (99, 'a layout from a later version', '2099-01-01T00:00:00.000Z')",
                [],
            )
        })
        .await
        .unwrap();
    drop(events);

    match sqlite::open_with(&path, newer).await.map(drop).unwrap_err() {
        Error::InvalidConfiguration(message) => {
            assert!(message.contains("99") && message.contains("`new_`"), "{message}")
        }
        other => panic!("expected InvalidConfiguration, got {other:?}"),
    }
    sqlite::open(&path).await.unwrap();
    sqlite::open_with(&path, sqlite::SqliteOptions::default().prefix("old_"))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// Runs `body` with the name of a schema of its own (not created: the body decides whether
/// it exists), then drops the schema, also when the body panics, so a failed run leaves
/// nothing behind in a shared database.
async fn in_scratch_schema<F, Fut>(pool: &PgPool, body: F)
where
    F: FnOnce(PgPool, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schema = format!("migr_{}", Uuid::new_v4().simple());
    let outcome = tokio::spawn(body(pool.clone(), schema.clone())).await;
    let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pool)
        .await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("the test body did not finish: {e}");
    }
    if let Err(e) = dropped {
        panic!("cannot drop the schema {schema}: {e}");
    }
}

/// A schema as 0.1 left it: its tables, the account `id` with two events, and a snapshot at
/// version 1.
async fn write_postgres_0_1(pool: &PgPool, schema: &str, id: Uuid) {
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(pool)
        .await
        .unwrap();
    for statement in postgres_0_1_layout(schema) {
        sqlx::query(&statement).execute(pool).await.unwrap();
    }
    for (version, event_type, occurred_at, payload) in LEGACY_EVENTS {
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".eventsource_events (event_id, event_type, event_version,
                aggregate_id, aggregate_type, aggregate_version, occurred_at, occurred_at_ns,
                correlation_id, causation_id, metadata, payload)
             VALUES ($1, $2, 1, $3, 'Account', $4, $5, 0, NULL, NULL, NULL, $6::jsonb)"
        ))
        .bind(Uuid::new_v4())
        .bind(event_type)
        .bind(id)
        .bind(version)
        .bind(timestamp(occurred_at))
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".eventsource_snapshots (aggregate_id, aggregate_type, version,
            state, schema_version, created_at, created_at_ns)
         VALUES ($1, 'Account', 1, $2::jsonb, 1, $3, 0)"
    ))
    .bind(id)
    .bind(STATE_AT_1)
    .bind(timestamp(SNAPSHOT_TAKEN_AT))
    .execute(pool)
    .await
    .unwrap();
}

/// The SQL type of a column, `None` if the column is missing.
async fn column_type(pool: &PgPool, schema: &str, table: &str, column: &str) -> Option<String> {
    // `::text`: the catalog's own domains are not types sqlx decodes to `String`.
    let found: Option<String> = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns
         WHERE table_schema::text = $1 AND table_name::text = $2 AND column_name::text = $3",
    )
    .bind(schema)
    .bind(table)
    .bind(column)
    .fetch_optional(pool)
    .await
    .unwrap();
    found
}

async fn postgres_versions(pool: &PgPool, schema: &str) -> Vec<i64> {
    let versions: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{schema}\".eventsource_migrations ORDER BY version"
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_0_1_tables_are_upgraded_in_place_and_keep_their_data() {
    let test = "postgres_0_1_tables_are_upgraded_in_place_and_keep_their_data";
    let Some(pool) = common::postgres_pool(test, 8).await else {
        return;
    };
    in_scratch_schema(&pool, |pool: PgPool, schema: String| async move {
        let id = Uuid::new_v4();
        write_postgres_0_1(&pool, &schema, id).await;
        assert_eq!(
            column_type(&pool, &schema, "eventsource_events", "payload")
                .await
                .as_deref(),
            Some("jsonb"),
            "the 0.1 layout is not what 0.1 made"
        );

        let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        events.migrate().await.unwrap();

        // `jsonb` rewrites the text it is given (`-0.0` becomes `0.0`); step 2 moves every
        // JSON column to `json`, which keeps it as written.
        for (table, column) in [
            ("eventsource_events", "payload"),
            ("eventsource_events", "metadata"),
            ("eventsource_snapshots", "state"),
        ] {
            assert_eq!(
                column_type(&pool, &schema, table, column).await.as_deref(),
                Some("json"),
                "{table}.{column}"
            );
        }
        assert_eq!(
            column_type(&pool, &schema, "eventsource_snapshots", "event_id")
                .await
                .as_deref(),
            Some("uuid")
        );
        let applied = postgres_versions(&pool, &schema).await;
        assert_every_step_once(&applied);
        assert_slice_holds_the_account(&events, id).await;

        // The retyped columns still hold the same JSON values.
        let stored: Vec<StoredEvent> = events.read_stream(id, "Account", 0).try_collect().await.unwrap();
        let values: Vec<serde_json::Value> = stored
            .iter()
            .map(|event| serde_json::from_str::<serde_json::Value>(&event.payload).unwrap())
            .collect();
        let expected: Vec<serde_json::Value> = [OPENED, DEPOSITED]
            .iter()
            .map(|payload| serde_json::from_str::<serde_json::Value>(payload).unwrap())
            .collect();
        assert_eq!(values, expected);

        let snapshots = PostgresSnapshotStore::with_schema(pool.clone(), &schema).unwrap();
        let legacy = snapshots
            .get_snapshot(id, "Account", u32::MAX)
            .await
            .unwrap()
            .expect("the 0.1 snapshot survives the upgrade");
        assert_eq!((legacy.version, legacy.event_id), (1, None));

        // Both stores on one pool: the load takes the one-statement path, which must accept a
        // snapshot that names no event just as the two-statement path does.
        let repo = Repository::<Account>::new(events.clone())
            .with_snapshots(snapshots, SnapshotPolicy::every(100).unwrap());
        let root = repo.load(id).await.unwrap();
        assert_eq!(root.version(), 2);
        assert_eq!(root.state().balance, 10_500);
        assert_eq!(repo.metrics().hits("Account"), 1, "the 0.1 snapshot was not used");

        let exact = r#"{"amount":-0.0}"#;
        let version = events
            .append(id, "Account", 2, &[envelope(id, 3, "MoneyDeposited", exact)])
            .await
            .unwrap()
            .version;
        assert_eq!(version, 3);
        let read: Vec<StoredEvent> = events.read_stream(id, "Account", 2).try_collect().await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(&*read[0].payload, exact, "the payload is not kept byte for byte");

        events.migrate().await.unwrap();
        assert_eq!(
            postgres_versions(&pool, &schema).await,
            applied,
            "a second migration applied a step"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_concurrent_migrations_of_a_new_schema_apply_each_step_once() {
    let test = "postgres_concurrent_migrations_of_a_new_schema_apply_each_step_once";
    let Some(pool) = common::postgres_pool(test, 8).await else {
        return;
    };
    in_scratch_schema(&pool, |pool: PgPool, schema: String| async move {
        // As instances starting at once: each races to create the schema and every table.
        let runs: Vec<_> = (0..6)
            .map(|_| {
                let store = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
                tokio::spawn(async move { store.migrate().await })
            })
            .collect();
        for run in runs {
            run.await
                .expect("a migration panicked")
                .expect("a migration failed");
        }
        let steps: Vec<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT version, count(*) FROM \"{schema}\".eventsource_migrations
             GROUP BY version ORDER BY version"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(steps.iter().all(|&(_, count)| count == 1), "{steps:?}");
        let versions: Vec<i64> = steps.iter().map(|&(version, _)| version).collect();
        assert_every_step_once(&versions);

        let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        let repo = Repository::<Account>::new(events.clone())
            .with_snapshots(events.snapshot_store(), SnapshotPolicy::every(2).unwrap());
        let id = Uuid::new_v4();
        assert_eq!(repo.save(&mut opened(id, 2)).await.unwrap(), 3);
        assert_eq!(repo.load(id).await.unwrap().state().balance, 10_200);
        assert_eq!(repo.metrics().hits("Account"), 1);
    })
    .await;
}

/// A schema of layout 7, whose events carry request ids as UUIDs, is upgraded by step 8: the
/// column holds text, the request index holds each id's last batch, and a command sent again
/// with one of those ids is answered with its first outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_request_ids_of_layout_7_fill_the_request_index() {
    let test = "postgres_request_ids_of_layout_7_fill_the_request_index";
    let Some(pool) = common::postgres_pool(test, 8).await else {
        return;
    };
    in_scratch_schema(&pool, |pool: PgPool, schema: String| async move {
        let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        events.migrate().await.unwrap();
        // Back to layout 7: UUID request ids, no request index, no slices.
        for statement in [
            format!("ALTER TABLE \"{schema}\".eventsource_events DROP COLUMN slice"),
            format!("DROP TABLE \"{schema}\".eventsource_requests"),
            format!(
                "ALTER TABLE \"{schema}\".eventsource_events
                 ALTER COLUMN request_id TYPE UUID USING request_id::uuid"
            ),
            format!("DELETE FROM \"{schema}\".eventsource_migrations WHERE version >= 8"),
        ] {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let (id, request) = (Uuid::new_v4(), Uuid::new_v4());
        for (version, request) in [(1, None), (2, Some(request)), (3, Some(request))] {
            sqlx::query(&format!(
                "INSERT INTO \"{schema}\".eventsource_events (position, event_id, event_type,
                    event_version, aggregate_id, aggregate_type, aggregate_version, occurred_at,
                    occurred_at_ns, payload, request_id)
                 VALUES ($1, $2, $3, 1, $4, 'Account', $5, now(), 0, $6::json, $7)"
            ))
            .bind(version)
            .bind(Uuid::new_v4())
            .bind(if version == 1 {
                "AccountOpened"
            } else {
                "MoneyDeposited"
            })
            .bind(id)
            .bind(version)
            .bind(if version == 1 {
                r#"{"owner_name":"Ada","initial_balance":100}"#
            } else {
                r#"{"amount":100}"#
            })
            .bind(request)
            .execute(&pool)
            .await
            .unwrap();
        }

        events.migrate().await.unwrap();
        assert_eq!(
            column_type(&pool, &schema, "eventsource_events", "request_id")
                .await
                .as_deref(),
            Some("text")
        );
        assert!(postgres_versions(&pool, &schema).await.contains(&8));
        let stores =
            eventsourcing_kit::backend::Stores::from_postgres(events.clone(), events.snapshot_store());
        let index = stores.request_index.clone().unwrap();
        let found = index
            .find_request(&request.into())
            .await
            .unwrap()
            .expect("the request id of the stored events is indexed");
        assert_eq!(
            (found.aggregate_id, found.aggregate_type.as_str()),
            (id, "Account")
        );
        assert_eq!(
            found.outcome,
            eventsourcing_kit::request::RequestOutcome::Executed {
                version: 3,
                position: 3
            },
            "the last event stored with the id"
        );
        let read: Vec<StoredEvent> = events.read_stream(id, "Account", 1).try_collect().await.unwrap();
        assert_eq!(
            read[0].request_id,
            Some(request.into()),
            "events keep their request id"
        );

        let repo = stores.repository::<Account>();
        let again = repo
            .command(id)
            .request_id(request)
            .run(|account| {
                account.record(MoneyDeposited { amount: 100 });
                Ok::<(), std::convert::Infallible>(())
            })
            .await
            .unwrap();
        assert_eq!((again.repeated, again.version), (true, 3), "the first outcome");
        assert_eq!(repo.load(id).await.unwrap().version(), 3, "nothing decided again");
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_schema_of_a_newer_layout_is_refused() {
    let Some(pool) = common::postgres_pool("postgres_schema_of_a_newer_layout_is_refused", 8).await else {
        return;
    };
    in_scratch_schema(&pool, |pool: PgPool, schema: String| async move {
        let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        events.migrate().await.unwrap();
        let mut recorded = postgres_versions(&pool, &schema).await;
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".eventsource_migrations (version, description)
             VALUES (99, 'a layout from a later version')"
        ))
        .execute(&pool)
        .await
        .unwrap();

        let refused = events.migrate().await.unwrap_err();
        match &refused {
            Error::InvalidConfiguration(message) => {
                assert!(message.contains("layout"), "{message}");
                assert!(message.contains("99"), "{message}");
            }
            other => panic!("expected InvalidConfiguration, got {other:?}"),
        }
        assert!(!refused.is_transient());
        recorded.push(99);
        let after = postgres_versions(&pool, &schema).await;
        assert_eq!(after, recorded, "a refused migration changed the record");
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_missing_tables_are_a_permanent_store_error() {
    let Some(pool) = common::postgres_pool("postgres_missing_tables_are_a_permanent_store_error", 8).await
    else {
        return;
    };
    in_scratch_schema(&pool, |pool: PgPool, schema: String| async move {
        // The schema exists and is empty: the store was never migrated. Retrying cannot
        // create the tables, so a retry loop must give up at once.
        sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(&pool)
            .await
            .unwrap();
        let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        let err = events
            .stream_version(Uuid::new_v4(), "Account")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Store { transient: false, .. }), "{err:?}");
        assert!(!err.is_transient());

        let read = events.read_stream(Uuid::new_v4(), "Account", 0).next().await;
        match read {
            Some(Err(err)) => assert!(matches!(err, Error::Store { transient: false, .. }), "{err:?}"),
            other => panic!("expected a permanent store error, got {other:?}"),
        }
    })
    .await;
}

/// Needs no server: nothing listens on port 1.
#[tokio::test]
async fn postgres_unreachable_server_is_a_transient_store_error() {
    // `connect_url` would retry for the default 30 s acquire timeout; a lazy pool with a
    // short one fails the first call instead.
    let pool = pool_options()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let events = PostgresEventStore::new(pool);
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        events.stream_version(Uuid::new_v4(), "Account"),
    )
    .await
    .expect("the call outlived the pool's acquire timeout")
    .unwrap_err();
    // The server may come back: this is the failure a retry loop exists for.
    assert!(matches!(err, Error::Store { transient: true, .. }), "{err:?}");
    assert!(err.is_transient());
}

/// A schema sliced before the number of slices was recorded (layout 9) records the default,
/// 1,024, the number its slices were computed with: a store configured with another number is
/// then refused, naming both, and one configured with none opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_slices_of_layout_9_are_recorded_as_the_default() {
    let test = "postgres_slices_of_layout_9_are_recorded_as_the_default";
    let Some(pool) = common::postgres_pool(test, 4).await else {
        return;
    };
    in_scratch_schema(&pool, |pool: PgPool, schema: String| async move {
        let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        events.migrate().await.unwrap();
        for statement in [
            format!("DROP TABLE \"{schema}\".eventsource_settings"),
            format!("DELETE FROM \"{schema}\".eventsource_migrations WHERE version >= 10"),
        ] {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let sixteen = SliceCount::new(16).unwrap();
        let configured = PostgresEventStore::with_schema(pool.clone(), &schema)
            .unwrap()
            .with_slices(sixteen);
        match configured.migrate().await {
            Err(Error::InvalidConfiguration(message)) => assert!(
                message.contains("1024 slices") && message.contains("16 slices"),
                "{message}"
            ),
            other => panic!("expected InvalidConfiguration, got {other:?}"),
        }
        let plain = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
        plain.migrate().await.unwrap();
        assert_eq!(plain.slice_count().await.unwrap(), SliceCount::DEFAULT);
        assert!(postgres_versions(&pool, &schema).await.contains(&10));
        match configured.slice_count().await {
            Err(Error::InvalidConfiguration(_)) => {}
            other => panic!("expected InvalidConfiguration, got {other:?}"),
        }
    })
    .await;
}
