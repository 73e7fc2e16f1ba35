//! Dead letters replayed: a projection that records the events it fails on (an old payload
//! shape a release read without its upcast) and passes over them, then, once its code
//! decodes through the new upcast of that version, replays them into its read model: a dry run rolls back,
//! a replay applies each once and removes its letter, the checkpoint never moves, a letter
//! that still fails stays. In memory, on SQLite and on PostgreSQL; and a plain subscription's
//! handler given its letters again.
//!
//! The PostgreSQL check runs against `EVENTSOURCE_TEST_POSTGRES_URL`; without it it says it
//! is skipped, or fails under `EVENTSOURCE_REQUIRE_POSTGRES=1`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsourcing_kit::backend::{self, SqlProjection, SqlReadModel, SqlWrites, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection, Projection, ReadModelStore};
use eventsourcing_kit::subscription::{
    Consumer, HandlerError, OnFailure, ReplayOptions, ReplayOutcome, ReplayReport, SubscriptionStore,
};
use eventsourcing_kit::EventEnvelope;
use serde_json::{json, Value};

/// A weighing. An earlier release wrote version 1, `{"kg": n}`; today's is version 2,
/// `{"grams": n}`, and the upcast of version 1 reads the old shape.
#[event(aggregate = "Parcel", version = 2, upcast(1 => json(kg_to_grams)))]
pub struct Weighed {
    pub grams: i64,
}

fn kg_to_grams(v1: Value) -> Result<Value, String> {
    let kg = v1["kg"].as_i64().ok_or("`kg` is not an integer")?;
    Ok(json!({ "grams": kg * 1000 }))
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Parcel", schema_version = 1, events(Weighed))]
pub struct Parcel {
    pub grams: i64,
}

impl Apply<Weighed> for Parcel {
    fn apply(&mut self, e: &Weighed) {
        self.grams += e.grams;
    }
}

/// The grams of a weighing. Until `upcast` is set, as the release that shipped the new shape
/// without its upcast read it: every payload as today's, so an old one fails. Once it is
/// set, as the release with the upcast reads it: through the aggregate's event decoding,
/// which upcasts version 1.
fn grams(event: &StoredEvent, upcast: &AtomicBool) -> Result<i64, HandlerError> {
    let weighed: Weighed = if upcast.load(Ordering::SeqCst) {
        match <Parcel as Aggregate>::Event::decode(&event.event_type, event.event_version, &event.payload)? {
            ParcelEvent::Weighed(weighed) => weighed,
        }
    } else {
        serde_json::from_str(&event.payload).map_err(|e| format!("no `grams` in {}: {e}", event.payload))?
    };
    Ok(weighed.grams)
}

#[derive(Clone)]
struct Weights {
    total: i64,
    upcast: Arc<AtomicBool>,
}

impl MemoryProjection for Weights {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            self.total += grams(event, &self.upcast)?;
        }
        Ok(())
    }
}

struct WeightsTable {
    table: String,
    upcast: Arc<AtomicBool>,
}

impl SqlProjection for WeightsTable {
    fn setup(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        let table = &self.table;
        writes.execute(
            &format!("CREATE TABLE IF NOT EXISTS {table} (event_id TEXT PRIMARY KEY, grams BIGINT NOT NULL)"),
            [],
        );
        Ok(())
    }

    fn apply(&mut self, writes: &mut SqlWrites, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            let grams = grams(event, &self.upcast)?;
            writes.execute(
                &format!("INSERT INTO {} (event_id, grams) VALUES ($1, $2)", self.table),
                [event.event_id.into(), grams.into()],
            );
        }
        Ok(())
    }

    fn reset(&mut self, writes: &mut SqlWrites) -> Result<(), HandlerError> {
        writes.execute(&format!("DELETE FROM {}", self.table), []);
        Ok(())
    }
}

/// Four parcels weighed: two weighings in the old shape among them. 3,160 g in all, 160 g
/// of them readable by the old code.
async fn weigh(stores: &Stores) -> Vec<Uuid> {
    let mut poison = Vec::new();
    for weighings in [
        &[r#"{"grams":100}"#, r#"{"kg":2}"#, r#"{"grams":50}"#][..],
        &[r#"{"grams":10}"#],
        &[r#"{"kg":1}"#],
    ] {
        let id = Uuid::new_v4();
        let batch: Vec<EventEnvelope> = weighings
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                let mut envelope = eventsourcing_kit::testing::envelope(id, "Parcel", i as u64 + 1);
                envelope.event_type = "Weighed".into();
                envelope.event_version = if payload.contains("kg") { 1 } else { 2 };
                envelope.payload = (*payload).into();
                if payload.contains("kg") {
                    poison.push(envelope.event_id);
                }
                envelope
            })
            .collect();
        stores.events.append(id, "Parcel", 0, &batch).await.unwrap();
    }
    poison
}

fn configured(projection: Projection) -> Projection {
    projection
        .on_failure(OnFailure::DeadLetter)
        .retry(1, Duration::from_millis(1), Duration::from_millis(1))
        .unwrap()
        .batch_size(10)
        .unwrap()
}

fn outcomes(report: &ReplayReport) -> Vec<(Uuid, ReplayOutcome)> {
    report
        .letters
        .iter()
        .map(|l| (l.event_id, l.outcome.clone()))
        .collect()
}

/// The whole check on one backend: `projection` on `stores`, its leases and letters in
/// `leases`, `total` reads its read model.
async fn replay_fixes_the_read_model<T>(
    stores: &Stores,
    projection: Projection,
    leases: Arc<dyn SubscriptionStore>,
    upcast: &AtomicBool,
    total: T,
) where
    T: AsyncFn() -> i64,
{
    let poison = weigh(stores).await;
    let projection = configured(projection);
    projection.catch_up(|_| {}).await.unwrap();
    let head = stores.events.head(0).await.unwrap().position;
    assert_eq!(
        projection.checkpoint().await.unwrap(),
        Some(head),
        "past the poison"
    );
    assert_eq!(total().await, 160, "the old code passes over the old shape");
    let letters: Vec<Uuid> = leases
        .dead_letters(projection.name(), 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|l| l.event_id)
        .collect();
    assert_eq!(letters, poison, "each old weighing a dead letter");

    // While a consumer holds the projection's lease, a replay is refused.
    let consumer = Uuid::new_v4();
    assert!(leases
        .acquire(projection.name(), consumer, Duration::from_secs(60))
        .await
        .unwrap());
    let refused = projection.replay_dead_letters(ReplayOptions::new()).await;
    assert!(
        matches!(&refused, Err(Error::InvalidInput(m)) if m.contains("stop it")),
        "{refused:?}"
    );
    leases.release(projection.name(), consumer).await.unwrap();

    // The old code, dry run: still fails; nothing changes.
    let dry = projection
        .replay_dead_letters(ReplayOptions::new().dry_run(true))
        .await
        .unwrap();
    assert_eq!(dry.count(false), 2, "{dry:?}");
    assert!(dry
        .letters
        .iter()
        .all(|l| matches!(&l.outcome, ReplayOutcome::Failed(e) if e.contains("no `grams`"))));

    // The new release reads the old shape: a dry run would succeed, and rolls back.
    upcast.store(true, Ordering::SeqCst);
    let dry = projection
        .replay_dead_letters(ReplayOptions::new().dry_run(true))
        .await
        .unwrap();
    assert_eq!(
        outcomes(&dry),
        poison
            .iter()
            .map(|id| (*id, ReplayOutcome::WouldSucceed))
            .collect::<Vec<_>>()
    );
    assert_eq!(total().await, 160, "a dry run changes nothing");
    assert_eq!(
        leases
            .dead_letters(projection.name(), 0, usize::MAX)
            .await
            .unwrap()
            .len(),
        2
    );

    // One letter at a time: the first replayed, the second left by the limit.
    let first = projection
        .replay_dead_letters(ReplayOptions::new().limit(1))
        .await
        .unwrap();
    assert_eq!(outcomes(&first), [(poison[0], ReplayOutcome::Handled)]);
    assert_eq!(first.not_replayed, 1);
    assert_eq!(total().await, 2160);
    let rest = projection
        .replay_dead_letters(ReplayOptions::new())
        .await
        .unwrap();
    assert_eq!(outcomes(&rest), [(poison[1], ReplayOutcome::Handled)]);
    assert_eq!(total().await, 3160, "every weighing once");
    assert_eq!(
        projection.checkpoint().await.unwrap(),
        Some(head),
        "the checkpoint never moved"
    );
    let again = projection
        .replay_dead_letters(ReplayOptions::new())
        .await
        .unwrap();
    assert!(again.letters.is_empty(), "the letters are gone: {again:?}");
    assert!(leases
        .dead_letters(projection.name(), 0, usize::MAX)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projections_dead_letters_replayed_in_memory() {
    let stores = Stores::in_memory();
    let upcast = Arc::new(AtomicBool::new(false));
    let model = InMemoryReadModel::new(Weights {
        total: 0,
        upcast: upcast.clone(),
    });
    let projection = stores.projection("weights", model.clone()).unwrap();
    let leases = model.subscriptions();
    replay_fixes_the_read_model(&stores, projection, leases, &upcast, async || {
        model.read(|w| w.total)
    })
    .await;
}

/// One event's letter recorded twice (again after a crash, say), one copy failing at first
/// and kept, then both taken by one removal: the event reaches the read model once, and no
/// other letter is passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_recorded_twice_is_replayed_once() {
    let stores = Stores::in_memory();
    let upcast = Arc::new(AtomicBool::new(false));
    let model = InMemoryReadModel::new(Weights {
        total: 0,
        upcast: upcast.clone(),
    });
    let projection = configured(stores.projection("weights", model.clone()).unwrap());
    let leases = model.subscriptions();
    let poison = weigh(&stores).await;
    projection.catch_up(|_| {}).await.unwrap();
    let letters = leases
        .dead_letters(projection.name(), 0, usize::MAX)
        .await
        .unwrap();
    assert_eq!(letters.len(), 2);
    // The first letter recorded again, after the second.
    let first = stores
        .events
        .read_all(letters[0].position - 1)
        .next()
        .await
        .unwrap()
        .unwrap();
    leases
        .dead_letter(projection.name(), &first, "again")
        .await
        .unwrap();

    // Still failing: each copy kept, in its place.
    let failing = projection
        .replay_dead_letters(ReplayOptions::new())
        .await
        .unwrap();
    assert_eq!((failing.count(true), failing.count(false)), (0, 3), "{failing:?}");

    upcast.store(true, Ordering::SeqCst);
    let report = projection
        .replay_dead_letters(ReplayOptions::new())
        .await
        .unwrap();
    assert_eq!(
        outcomes(&report),
        [
            (poison[0], ReplayOutcome::Handled),
            (poison[1], ReplayOutcome::Handled)
        ],
        "the second copy went with the first"
    );
    assert_eq!(model.read(|w| w.total), 3160, "every weighing once");
    assert!(leases
        .dead_letters(projection.name(), 0, usize::MAX)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projections_dead_letters_replayed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("weights.db").display());
    let stores = backend::open(&url).await.unwrap();
    let upcast = Arc::new(AtomicBool::new(false));
    let model = SqlReadModel::on(
        &stores,
        WeightsTable {
            table: "weights".into(),
            upcast: upcast.clone(),
        },
    )
    .unwrap();
    let leases = model.subscriptions();
    let projection = stores.projection("weights", model).unwrap();
    let database = stores.sqlite().unwrap().database().clone();
    let total = async || {
        database
            .call(|c| c.query_row("SELECT coalesce(sum(grams), 0) FROM weights", [], |r| r.get(0)))
            .await
            .unwrap()
    };
    replay_fixes_the_read_model(&stores, projection, leases, &upcast, total).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_projections_dead_letters_replayed_on_postgres() {
    use eventsourcing_kit::backend::postgres::sqlx;

    let Some(url) = common::postgres_url("a_projections_dead_letters_replayed_on_postgres") else {
        return;
    };
    let scratch = common::ScratchSchema::new(&url, "letters");
    let separator = if url.contains('?') { '&' } else { '?' };
    let stores = backend::open(&format!("{url}{separator}schema={}", scratch.name))
        .await
        .unwrap();
    stores.migrate().await.unwrap();
    // The read model's table in the scratch schema too.
    let table = format!("\"{}\".weights", scratch.name);
    let upcast = Arc::new(AtomicBool::new(false));
    let model = SqlReadModel::on(
        &stores,
        WeightsTable {
            table: table.clone(),
            upcast: upcast.clone(),
        },
    )
    .unwrap();
    let leases = model.subscriptions();
    let projection = stores.projection("weights", model).unwrap();
    let pool = stores.postgres().unwrap().pool().clone();
    let total = async || {
        sqlx::query_scalar::<_, i64>(&format!("SELECT coalesce(sum(grams), 0)::bigint FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    replay_fixes_the_read_model(&stores, projection, leases, &upcast, total).await;
}

/// A plain subscription's letters go to the handler it is given; a dry run is refused, since
/// a plain handler cannot be rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriptions_dead_letters_go_to_its_handler_again() {
    let stores = Stores::in_memory();
    let poison = weigh(&stores).await;
    let upcast = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = |upcast: Arc<AtomicBool>, seen: Arc<Mutex<Vec<i64>>>| {
        move |events: &[StoredEvent]| -> Result<(), HandlerError> {
            // All of the batch or none of it, as a handler that writes one transaction.
            let batch = events
                .iter()
                .map(|event| grams(event, &upcast))
                .collect::<Result<Vec<_>, _>>()?;
            seen.lock().unwrap().extend(batch);
            Ok(())
        }
    };
    let subscription = stores
        .subscription("scales")
        .unwrap()
        .on_failure(OnFailure::DeadLetter)
        .retry(1, Duration::from_millis(1), Duration::from_millis(1))
        .unwrap();
    subscription
        .catch_up(handler(upcast.clone(), seen.clone()))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().iter().sum::<i64>(), 160);
    let mut fixed = handler(upcast.clone(), seen.clone());
    let refused = subscription
        .replay_dead_letters(&mut fixed, ReplayOptions::new().dry_run(true))
        .await;
    assert!(matches!(refused, Err(Error::InvalidInput(_))), "{refused:?}");
    let still = subscription
        .replay_dead_letters(&mut fixed, ReplayOptions::new())
        .await
        .unwrap();
    assert_eq!(still.count(false), 2);
    upcast.store(true, Ordering::SeqCst);
    let replayed = subscription
        .replay_dead_letters(&mut fixed, ReplayOptions::new())
        .await
        .unwrap();
    assert_eq!(
        outcomes(&replayed),
        poison
            .iter()
            .map(|id| (*id, ReplayOutcome::Handled))
            .collect::<Vec<_>>()
    );
    assert_eq!(seen.lock().unwrap().iter().sum::<i64>(), 3160);
    assert!(stores
        .subscriptions
        .dead_letters("scales", 0, usize::MAX)
        .await
        .unwrap()
        .is_empty());
}
