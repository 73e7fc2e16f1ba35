//! The PostgreSQL feed: what holds it back and what does not.
//!
//! The feed shows a position only once no transaction that could still store events below it
//! is running. Transactions that append events hold it back; a stranger's transaction (a
//! session idle in a transaction in another database, a batch job on another table) must not.
//! The tests need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use eventsourcing_kit::testing::envelope;

use std::str::FromStr;
use std::time::{Duration, Instant};

use eventsourcing_kit::backend::postgres::{pool_options, PgPool, PostgresEventStore};
use eventsourcing_kit::{EventStore, Uuid};
use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};

/// A test's store in a schema of its own (so its feed holds only the test's events), and the
/// URL it came from.
struct Feed {
    url: String,
    /// Dropped when the test is done, also when it fails.
    scratch: common::ScratchSchema,
    schema: String,
    pool: PgPool,
    events: PostgresEventStore,
}

async fn feed(test: &str) -> Option<Feed> {
    let url = common::postgres_url(test)?;
    let pool = pool_options()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let scratch = common::ScratchSchema::new(&url, "feed");
    let schema = scratch.name.clone();
    let events = PostgresEventStore::with_schema(pool.clone(), &schema).unwrap();
    events.migrate().await.unwrap();
    Some(Feed {
        url,
        scratch,
        schema,
        pool,
        events,
    })
}

impl Feed {
    /// A connection of its own to `database` of the same server.
    async fn connection_to(&self, database: &str) -> PgConnection {
        let options = PgConnectOptions::from_str(&self.url).unwrap().database(database);
        PgConnection::connect_with(&options).await.unwrap()
    }

    /// The name of the test's database.
    fn database(&self) -> String {
        PgConnectOptions::from_str(&self.url)
            .unwrap()
            .get_database()
            .unwrap_or("postgres")
            .to_owned()
    }

    /// A connection of its own to the test's database.
    async fn connection(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    /// An `INSERT` of the first event of the stream `id`, as a program of its own would make
    /// it, bypassing the store.
    fn raw_insert(&self, id: Uuid) -> String {
        format!(
            "INSERT INTO \"{}\".eventsource_events (event_id, event_type, event_version,
                 aggregate_id, aggregate_type, aggregate_version, occurred_at, payload)
             VALUES (gen_random_uuid(), 'Noted', 1, '{id}', 'Feed', 1, now(), '{{}}')",
            self.schema
        )
    }

    /// A table of the test's schema that is not the store's; its qualified name.
    async fn other_table(&self) -> String {
        let table = format!("\"{}\".other_work", self.schema);
        self.pool
            .execute(format!("CREATE TABLE {table} (n INT)").as_str())
            .await
            .unwrap();
        table
    }

    /// Appends one event to a new stream; returns its id.
    async fn append_one(&self) -> Uuid {
        let id = Uuid::new_v4();
        let event = envelope(id, "Feed", 1);
        self.events.append(id, "Feed", 0, &[event]).await.unwrap();
        id
    }

    /// The aggregate ids of the feed's events, in feed order.
    async fn shown(&self) -> Vec<Uuid> {
        self.events
            .read_all(0)
            .map(|event| event.unwrap().aggregate_id)
            .collect()
            .await
    }

    /// Waits up to `bound` for the feed to show `ids`, in that order; returns what it shows.
    async fn shows_within(&self, ids: &[Uuid], bound: Duration) -> Vec<Uuid> {
        let started = Instant::now();
        loop {
            let shown = self.shown().await;
            if shown == ids || started.elapsed() > bound {
                return shown;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends the test: its pool closes, its schema is dropped.
    async fn drop(self) {
        self.pool.close().await;
        drop(self.scratch);
    }
}

/// `admin stats` on the stores of `url`, as text.
#[cfg(feature = "admin")]
async fn admin_stats(url: &str) -> String {
    use clap::Parser;
    use eventsourcing_kit::subscription::SubscriptionStore;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        admin: eventsourcing_kit::admin::AdminArgs,
    }
    // A subscription to list, behind the held-back event.
    let (events, _) = eventsourcing_kit::backend::postgres::connect_url(url)
        .await
        .unwrap();
    let subscriptions = events.subscription_store();
    let owner = Uuid::new_v4();
    assert!(subscriptions
        .acquire("feed-watcher", owner, std::time::Duration::from_secs(60))
        .await
        .unwrap());
    assert!(subscriptions
        .save_checkpoint("feed-watcher", owner, 0)
        .await
        .unwrap());
    let cli = Cli::parse_from(["admin", "--url", url, "stats"]);
    let mut out = Vec::new();
    eventsourcing_kit::admin::Admin::new()
        .run_with(cli.admin, &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Opens a transaction on `connection` that holds a transaction id, and leaves it open.
async fn hold_a_transaction_id(connection: &mut PgConnection, write: &str) {
    connection.execute("BEGIN").await.unwrap();
    connection.execute(write).await.unwrap();
    let xid: Option<String> = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    assert!(xid.is_some(), "{write:?} left the transaction without an id");
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_transaction_idle_in_another_database_does_not_hold_the_feed_back() {
    let Some(feed) = feed("idle transaction in another database").await else {
        return;
    };
    // Any database of the server but this one: `postgres` is always there.
    let mut stranger = feed.connection_to("postgres").await;
    hold_a_transaction_id(&mut stranger, "SELECT pg_current_xact_id()").await;

    let id = feed.append_one().await;
    let shown = feed.shows_within(&[id], Duration::from_secs(5)).await;

    stranger.execute("ROLLBACK").await.unwrap();
    assert_eq!(
        shown,
        [id],
        "the feed waited for a transaction of another database"
    );
    feed.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_transaction_writing_another_table_of_the_database_does_not_hold_the_feed_back() {
    let Some(feed) = feed("idle transaction on another table").await else {
        return;
    };
    let table = feed.other_table().await;
    let mut stranger = feed.connection().await;
    hold_a_transaction_id(&mut stranger, &format!("INSERT INTO {table} VALUES (1)")).await;

    let id = feed.append_one().await;
    let shown = feed.shows_within(&[id], Duration::from_secs(5)).await;

    stranger.execute("ROLLBACK").await.unwrap();
    assert_eq!(shown, [id], "the feed waited for a transaction on another table");
    feed.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn an_append_still_running_holds_back_the_appends_after_it_and_then_shows_them_in_order() {
    let Some(feed) = feed("a running append holds the feed back").await else {
        return;
    };
    // An append that has inserted its row and not committed: it has the lower id.
    let slow = Uuid::new_v4();
    let mut appender = feed.connection().await;
    appender.execute("BEGIN").await.unwrap();
    appender.execute(feed.raw_insert(slow).as_str()).await.unwrap();

    let fast = feed.append_one().await;
    // The later append is stored, but showing it now would let the slow one commit below it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        feed.shown().await,
        Vec::<Uuid>::new(),
        "the feed skipped past a running append"
    );

    // The head counts it as held back, and names what holds it.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut appender)
        .await
        .unwrap();
    let head = feed.events.head(0).await.unwrap();
    assert_eq!((head.events_after, head.held_back, head.lag()), (0, 1, 1));
    let holder = head.held_by.expect("the holder is known");
    assert_eq!(holder.pid, Some(pid as u32));
    assert_eq!(holder.database.as_deref(), Some(feed.database().as_str()));
    assert!(
        holder.age.is_some_and(|age| age >= Duration::from_millis(300)),
        "{holder}"
    );

    #[cfg(feature = "admin")]
    {
        // The operator sees it too: in the lag, and named under the table.
        let stats = admin_stats(&format!("{}?schema={}", feed.url, feed.schema)).await;
        assert!(
            stats.contains(&format!(
                "the feed holds back 1 stored event(s) while a transaction of server process {pid}"
            )),
            "{stats}"
        );
    }

    appender.execute("COMMIT").await.unwrap();
    assert_eq!(
        feed.shows_within(&[slow, fast], Duration::from_secs(5)).await,
        [slow, fast]
    );
    // Shown once the slow append commits, with nothing held back.
    let head = feed.events.head(0).await.unwrap();
    assert_eq!((head.events_after, head.held_back, head.held_by), (2, 0, None));
    feed.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn events_inserted_after_other_writes_of_the_transaction_must_announce_the_append_first() {
    let Some(feed) = feed("an append that did not announce itself").await else {
        return;
    };
    let table = feed.other_table().await;
    let insert_event = feed.raw_insert(Uuid::new_v4());

    // A transaction that has an id before it inserts events could be passed by a reader.
    let mut late = feed.connection().await;
    hold_a_transaction_id(&mut late, &format!("INSERT INTO {table} VALUES (1)")).await;
    let refused = late.execute(insert_event.as_str()).await.unwrap_err();
    let refused = refused.as_database_error().expect("a database error");
    assert_eq!(refused.code().as_deref(), Some("55000"), "{refused}");
    late.execute("ROLLBACK").await.unwrap();

    // Taking the lock itself after the first write does not make it an announced append, and
    // the function the error names refuses to announce it then.
    let begin_append = format!("SELECT \"{}\".eventsource_begin_append()", feed.schema);
    let mut late = feed.connection().await;
    hold_a_transaction_id(&mut late, &format!("INSERT INTO {table} VALUES (1)")).await;
    let lock: String = sqlx::query_scalar(&format!(
        "SELECT 'SELECT pg_advisory_xact_lock_shared(' || {class} || ', ' || '\"{schema}\".eventsource_events'::regclass::oid::int4 || ')'",
        class = 0x4556_4e54,
        schema = feed.schema
    ))
    .fetch_one(&feed.pool)
    .await
    .unwrap();
    late.execute(lock.as_str()).await.unwrap();
    let refused = late.execute(insert_event.as_str()).await.unwrap_err();
    assert_eq!(
        refused.as_database_error().unwrap().code().as_deref(),
        Some("55000")
    );
    late.execute("ROLLBACK").await.unwrap();
    hold_a_transaction_id(&mut late, &format!("INSERT INTO {table} VALUES (1)")).await;
    let refused = late.execute(begin_append.as_str()).await.unwrap_err();
    assert_eq!(
        refused.as_database_error().unwrap().code().as_deref(),
        Some("55000")
    );
    late.execute("ROLLBACK").await.unwrap();

    // Announced before the first write, with the function the error names, it appends.
    let mut announced = feed.connection().await;
    announced.execute("BEGIN").await.unwrap();
    announced.execute(begin_append.as_str()).await.unwrap();
    announced
        .execute(format!("INSERT INTO {table} VALUES (1)").as_str())
        .await
        .unwrap();
    announced.execute(insert_event.as_str()).await.unwrap();
    announced.execute("COMMIT").await.unwrap();
    assert_eq!(feed.shown().await.len(), 1);
    feed.drop().await;
}

/// The bound for a reader's snapshot as the feed computes it, asked after the fact.
async fn bound_for(feed: &Feed, snapshot: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT \"{}\".eventsource_feed_bound($1::pg_snapshot)",
        feed.schema
    ))
    .bind(snapshot)
    .fetch_one(&feed.pool)
    .await
    .unwrap()
}

async fn current_snapshot(feed: &Feed) -> String {
    sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&feed.pool)
        .await
        .unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_transaction_that_ended_after_the_readers_snapshot_holds_it_back_only_if_it_appended() {
    let Some(feed) = feed("transactions that ended after the reader's snapshot").await else {
        return;
    };
    let table = feed.other_table().await;

    // A stranger running when the reader's snapshot is taken, that ends without events:
    // the event committed before the snapshot is final.
    let mut stranger = feed.connection().await;
    hold_a_transaction_id(&mut stranger, &format!("INSERT INTO {table} VALUES (1)")).await;
    let id = feed.append_one().await;
    let position: i64 = sqlx::query_scalar(&format!(
        "SELECT position FROM \"{}\".eventsource_events WHERE aggregate_id = $1",
        feed.schema
    ))
    .bind(id)
    .fetch_one(&feed.pool)
    .await
    .unwrap();
    let snapshot = current_snapshot(&feed).await;
    stranger.execute("COMMIT").await.unwrap();
    assert!(
        bound_for(&feed, &snapshot).await > position,
        "a stranger that ended without events held the feed back"
    );

    // An appender running when the snapshot is taken, that ends having stored events the
    // snapshot cannot see: nothing at or after it is final for that reader.
    let mut appender = feed.connection().await;
    appender.execute("BEGIN").await.unwrap();
    appender
        .execute(feed.raw_insert(Uuid::new_v4()).as_str())
        .await
        .unwrap();
    let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut appender)
        .await
        .unwrap();
    let snapshot = current_snapshot(&feed).await;
    appender.execute("COMMIT").await.unwrap();
    assert!(
        bound_for(&feed, &snapshot).await <= xid << 20,
        "an appender that ended after the snapshot did not hold the feed back"
    );
    feed.drop().await;
}
