//! Saves in the application's own transaction, on PostgreSQL (`PostgresEventStore::begin`,
//! `save_in_transaction`) and SQLite (`SqliteEventStore::transaction`): the application's
//! rows and the events commit together or not at all, with the conflict and the request ids
//! of a normal save, and the feed never skips an event saved that way.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use eventsourcing_kit::backend::postgres::PostgresEventStore;
use eventsourcing_kit::backend::sqlite::SqliteEventStore;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::request::RequestId;
use eventsourcing_kit::RequestIndex;

#[event(aggregate = "Ledger")]
pub struct Posted {
    pub cents: i64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Ledger", events(Posted))]
pub struct Ledger {
    pub cents: i64,
}

impl Apply<Posted> for Ledger {
    fn apply(&mut self, e: &Posted) {
        self.cents += e.cents;
    }
}

/// A ledger with one unsaved posting.
fn posting(repo: &Repository<Ledger>, id: Uuid, cents: i64) -> AggregateRoot<Ledger> {
    let mut ledger = repo.create_new(id);
    ledger.record(Posted { cents });
    ledger
}

/// The events store on a schema of the test's own, and the schema's name.
async fn postgres(test: &str) -> Option<(common::ScratchSchema, PostgresEventStore)> {
    let url = common::postgres_url(test)?;
    let scratch = common::ScratchSchema::new(&url, "caller");
    let separator = if url.contains('?') { '&' } else { '?' };
    let stores = eventsourcing_kit::backend::open(&format!("{url}{separator}schema={}", scratch.name))
        .await
        .unwrap();
    stores.migrate().await.unwrap();
    let events = stores.postgres().unwrap().clone();
    sqlx::query(&format!(
        "CREATE TABLE \"{}\".invoices (id UUID PRIMARY KEY, cents BIGINT NOT NULL)",
        scratch.name
    ))
    .execute(events.pool())
    .await
    .unwrap();
    Some((scratch, events))
}

async fn invoices(events: &PostgresEventStore, schema: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".invoices"))
        .fetch_one(events.pool())
        .await
        .unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn on_postgres_the_applications_rows_and_the_events_commit_together() {
    let Some((schema, events)) = postgres("caller_transaction_postgres").await else {
        return;
    };
    let schema = schema.name.clone();
    let repo = Repository::<Ledger>::new(events.clone());
    let insert = format!("INSERT INTO \"{schema}\".invoices (id, cents) VALUES ($1, $2)");

    // Committed: the row and the event.
    let id = Uuid::new_v4();
    let mut tx = events.begin().await.unwrap();
    sqlx::query(&insert)
        .bind(id)
        .bind(5_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut ledger = posting(&repo, id, 5);
    let appended = events.save_in_transaction(&mut tx, &mut ledger).await.unwrap();
    assert_eq!(appended.version, 1);
    assert_eq!(
        events.stream_version(id, "Ledger").await.unwrap(),
        0,
        "not before the commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(events.stream_version(id, "Ledger").await.unwrap(), 1);
    assert_eq!(invoices(&events, &schema).await, 1);
    assert_eq!(repo.load(id).await.unwrap().state().cents, 5);

    // Several saves in one transaction, of one stream and of others: each goes in.
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let mut tx = events.begin().await.unwrap();
    let mut one = posting(&repo, first, 1);
    events.save_in_transaction(&mut tx, &mut one).await.unwrap();
    one.record(Posted { cents: 2 });
    let again = events.save_in_transaction(&mut tx, &mut one).await.unwrap();
    let other = events
        .save_in_transaction(&mut tx, &mut posting(&repo, second, 3))
        .await
        .unwrap();
    assert_eq!(again.version, 2);
    assert!(
        other.position > again.position,
        "positions in the order of the saves"
    );
    tx.commit().await.unwrap();
    assert_eq!(repo.load(first).await.unwrap().state().cents, 3);
    assert_eq!(repo.load(second).await.unwrap().state().cents, 3);

    // Rolled back: neither.
    let gone = Uuid::new_v4();
    let mut tx = events.begin().await.unwrap();
    sqlx::query(&insert)
        .bind(gone)
        .bind(7_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    events
        .save_in_transaction(&mut tx, &mut posting(&repo, gone, 7))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(events.stream_version(gone, "Ledger").await.unwrap(), 0);
    assert_eq!(invoices(&events, &schema).await, 1);

    // A conflict is the save's error, and the transaction goes on.
    let mut stale = repo.load(id).await.unwrap();
    let mut fresh = repo.load(id).await.unwrap();
    fresh.record(Posted { cents: 1 });
    repo.save(&mut fresh).await.unwrap();
    stale.record(Posted { cents: 2 });
    let mut tx = events.begin().await.unwrap();
    let other = Uuid::new_v4();
    sqlx::query(&insert)
        .bind(other)
        .bind(2_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    let conflict = events.save_in_transaction(&mut tx, &mut stale).await.unwrap_err();
    assert!(
        matches!(
            conflict,
            Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{conflict}"
    );
    assert!(stale.has_pending_events(), "the root keeps its events");
    tx.commit().await.unwrap();
    assert_eq!(invoices(&events, &schema).await, 2, "the transaction went on");
    assert_eq!(events.stream_version(id, "Ledger").await.unwrap(), 2);

    // A request id is recorded with the events, once.
    let request = RequestId::new("invoice-42").unwrap();
    let mut tx = events.begin().await.unwrap();
    let mut requested = repo.create_new(Uuid::new_v4());
    requested.set_context({
        let mut value = EventContext::default();
        value.request_id = Some(request.clone());
        value
    });
    requested.record(Posted { cents: 3 });
    events.save_in_transaction(&mut tx, &mut requested).await.unwrap();
    tx.commit().await.unwrap();
    assert!(events.find_request(&request).await.unwrap().is_some());
    let mut tx = events.begin().await.unwrap();
    let mut again = repo.create_new(Uuid::new_v4());
    again.set_context({
        let mut value = EventContext::default();
        value.request_id = Some(request.clone());
        value
    });
    again.record(Posted { cents: 3 });
    let recorded = events.save_in_transaction(&mut tx, &mut again).await.unwrap_err();
    assert!(matches!(recorded, Error::RequestRecorded { .. }), "{recorded}");
    tx.rollback().await.unwrap();

    // A transaction begun elsewhere that wrote before announcing is refused, clearly.
    let mut tx = events.pool().begin().await.unwrap();
    sqlx::query(&insert)
        .bind(Uuid::new_v4())
        .bind(1_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = events
        .save_in_transaction(&mut tx, &mut posting(&repo, Uuid::new_v4(), 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidInput(why) if why.contains("announce")),
        "{refused}"
    );
    tx.rollback().await.unwrap();
    // Announced before its first write, it saves.
    let mut tx = events.pool().begin().await.unwrap();
    events.announce(&mut tx).await.unwrap();
    sqlx::query(&insert)
        .bind(Uuid::new_v4())
        .bind(1_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    events
        .save_in_transaction(&mut tx, &mut posting(&repo, Uuid::new_v4(), 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn on_postgres_the_feed_never_skips_an_event_saved_in_a_long_transaction() {
    let Some((schema, events)) = postgres("caller_transaction_feed").await else {
        return;
    };
    let repo = Repository::<Ledger>::new(events.clone());
    let start = events.head(0).await.unwrap().position;
    // The application's transaction writes first (it has its id), then another writer's save
    // commits, then the transaction saves and commits.
    let mut tx = events.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".invoices (id, cents) VALUES ($1, 1)",
        schema.name
    ))
    .bind(Uuid::new_v4())
    .execute(&mut *tx)
    .await
    .unwrap();
    let (inside, outside) = (Uuid::new_v4(), Uuid::new_v4());
    repo.save(&mut posting(&repo, outside, 2)).await.unwrap();
    // A reader now: whatever it sees, it resumes after the last position it saw.
    let seen: Vec<StoredEvent> = events.read_all(start).try_collect().await.unwrap();
    let resume = seen.last().map_or(start, |e| e.position);
    events
        .save_in_transaction(&mut tx, &mut posting(&repo, inside, 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let later: Vec<StoredEvent> = events.read_all(resume).try_collect().await.unwrap();
    let all: Vec<Uuid> = seen.iter().chain(&later).map(|e| e.aggregate_id).collect();
    assert!(
        all.contains(&inside),
        "the reader skipped the event saved in the transaction"
    );
    assert!(all.contains(&outside));
    assert_eq!(all.len(), 2, "each event once");
}

#[tokio::test]
async fn on_sqlite_the_applications_rows_and_the_events_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    let events = SqliteEventStore::open(dir.path().join("caller.db"))
        .await
        .unwrap();
    events
        .database()
        .call(|c| c.execute_batch("CREATE TABLE invoices (id TEXT PRIMARY KEY, cents INTEGER NOT NULL)"))
        .await
        .unwrap();
    let repo = Repository::<Ledger>::new(events.clone());
    let count = || async {
        events
            .database()
            .call(|c| c.query_row("SELECT count(*) FROM invoices", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap()
    };

    // Committed: the row and the event; the root comes back saved.
    let id = Uuid::new_v4();
    let ledger = posting(&repo, id, 5);
    let ledger = events
        .transaction(move |tx| {
            let mut ledger = ledger;
            tx.connection()
                .execute("INSERT INTO invoices VALUES (?1, 5)", [id.to_string()])
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            tx.save(&mut ledger)?;
            Ok(ledger)
        })
        .await
        .unwrap();
    assert!(!ledger.has_pending_events());
    assert_eq!(
        (count().await, events.stream_version(id, "Ledger").await.unwrap()),
        (1, 1)
    );

    // An error rolls back both.
    let gone = Uuid::new_v4();
    let ledger = posting(&repo, gone, 7);
    let failed = events
        .transaction(move |tx| {
            let mut ledger = ledger;
            tx.connection()
                .execute("INSERT INTO invoices VALUES (?1, 7)", [gone.to_string()])
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            tx.save(&mut ledger)?;
            Err::<(), _>(Error::InvalidInput("the invoice is refused".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        (
            count().await,
            events.stream_version(gone, "Ledger").await.unwrap()
        ),
        (1, 0)
    );

    // A conflict is the save's error; the transaction goes on and commits the rest.
    let mut stale = repo.load(id).await.unwrap();
    let mut fresh = repo.load(id).await.unwrap();
    fresh.record(Posted { cents: 1 });
    repo.save(&mut fresh).await.unwrap();
    stale.record(Posted { cents: 2 });
    let other = Uuid::new_v4();
    let (conflict, stale) = events
        .transaction(move |tx| {
            let mut stale = stale;
            let conflict = tx.save(&mut stale).unwrap_err();
            tx.connection()
                .execute("INSERT INTO invoices VALUES (?1, 2)", [other.to_string()])
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            Ok((conflict, stale))
        })
        .await
        .unwrap();
    assert!(
        matches!(
            conflict,
            Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{conflict}"
    );
    assert!(stale.has_pending_events());
    assert_eq!(
        (count().await, events.stream_version(id, "Ledger").await.unwrap()),
        (2, 2)
    );

    // A request id is recorded with the events, once.
    let request = RequestId::new("invoice-42").unwrap();
    let requested = |request: RequestId| {
        let mut root = repo.create_new(Uuid::new_v4());
        root.set_context({
            let mut value = EventContext::default();
            value.request_id = Some(request);
            value
        });
        root.record(Posted { cents: 3 });
        root
    };
    let first = requested(request.clone());
    events
        .transaction(move |tx| {
            let mut first = first;
            tx.save(&mut first).map(drop)
        })
        .await
        .unwrap();
    assert!(events.find_request(&request).await.unwrap().is_some());
    let second = requested(request.clone());
    let recorded = events
        .transaction(move |tx| {
            let mut second = second;
            tx.save(&mut second).map(drop)
        })
        .await
        .unwrap_err();
    assert!(matches!(recorded, Error::RequestRecorded { .. }), "{recorded}");
}
