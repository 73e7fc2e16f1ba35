//! Loading and saving aggregates: versions, envelopes, conflicts and bad input.

mod common;

use common::*;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::{EventEnvelope, StoredEvent};
use futures_util::TryStreamExt;

fn repo(events: &InMemoryEventStore) -> Repository<Account> {
    Repository::new(events.clone())
}

async fn stored(events: &InMemoryEventStore, id: Uuid) -> Vec<StoredEvent> {
    events.read_stream(id, "Account", 0).try_collect().await.unwrap()
}

#[tokio::test]
async fn a_saved_aggregate_loads_back_with_its_state_and_version() {
    let events = InMemoryEventStore::new();
    let repo = repo(&events);
    let id = Uuid::new_v4();
    let mut account = opened(id, 2);
    account.record(MoneyWithdrawn { amount: 50 });
    assert_eq!((account.version(), account.saved_version()), (4, 0));

    assert_eq!(repo.save(&mut account).await.unwrap(), 4);
    assert!(!account.has_pending_events());
    assert_eq!(account.saved_version(), 4);

    let loaded = repo.load(id).await.unwrap();
    assert_eq!(loaded.version(), 4);
    assert_eq!(loaded.state(), account.state());
    assert_eq!(loaded.state().balance, 10_150);
    assert_eq!(loaded.state().transaction_count, 3);
    assert!(repo.exists(id).await.unwrap());
}

#[tokio::test]
async fn recording_stamps_the_next_version_and_the_envelope() {
    let events = InMemoryEventStore::new();
    let repo = repo(&events);
    let id = Uuid::new_v4();
    let correlation = Uuid::new_v4();
    let mut account = repo.create_new(id);
    account.set_context(
        EventContext::new()
            .with_correlation_id(correlation)
            .with_metadata(serde_json::json!({"user": "ada"})),
    );
    account.record(AccountOpened {
        owner_name: "Ada".into(),
        initial_balance: 100,
    });
    account.record_with(MoneyDeposited { amount: 200 }, EventContext::default());
    let pending: Vec<u64> = account
        .pending_events()
        .iter()
        .map(|p| p.aggregate_version)
        .collect();
    assert_eq!(pending, vec![1, 2]);
    let first_id = account.pending_events()[0].event_id;
    repo.save(&mut account).await.unwrap();

    let stored = stored(&events, id).await;
    let EventEnvelope {
        event_id,
        event_type,
        event_version,
        aggregate_id,
        aggregate_type,
        aggregate_version,
        correlation_id,
        metadata,
        payload,
        ..
    } = stored[0].envelope.clone();
    assert_eq!(event_id, first_id);
    assert_eq!((&*event_type, event_version), ("AccountOpened", 1));
    assert_eq!(
        (aggregate_id, &*aggregate_type, aggregate_version),
        (id, "Account", 1)
    );
    assert_eq!(correlation_id, Some(correlation));
    assert_eq!(metadata, Some(serde_json::json!({"user": "ada"})));
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"owner_name": "Ada", "initial_balance": 100})
    );
    assert_eq!(stored[1].correlation_id, None);
    assert!(stored[0].position < stored[1].position);
}

#[tokio::test]
async fn loading_an_empty_stream_is_not_found() {
    let repo = repo(&InMemoryEventStore::new());
    let id = Uuid::new_v4();
    let err = repo.load(id).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { aggregate_id, aggregate_type } if *aggregate_id == id && aggregate_type == "Account"),
        "{err}"
    );
    assert!(!repo.exists(id).await.unwrap());
    let fresh = repo.load_or_create(id).await.unwrap();
    assert_eq!((fresh.version(), fresh.state()), (0, &Account::default()));
}

#[tokio::test]
async fn load_or_create_returns_the_stored_aggregate_when_there_is_one() {
    let events = InMemoryEventStore::new();
    let repo = repo(&events);
    let id = Uuid::new_v4();
    repo.save(&mut opened(id, 1)).await.unwrap();
    assert_eq!(repo.load_or_create(id).await.unwrap().version(), 2);
}

#[tokio::test]
async fn the_second_of_two_writers_gets_a_conflict_and_keeps_its_events() {
    let events = InMemoryEventStore::new();
    let repo = repo(&events);
    let id = Uuid::new_v4();
    repo.save(&mut opened(id, 0)).await.unwrap();

    let mut first = repo.load(id).await.unwrap();
    let mut second = repo.load(id).await.unwrap();
    first.record(MoneyDeposited { amount: 1_000 });
    second.record(MoneyWithdrawn { amount: 500 });
    second.record(MoneyWithdrawn { amount: 500 });

    repo.save(&mut first).await.unwrap();
    let err = repo.save(&mut second).await.unwrap_err();
    match err {
        Error::Conflict {
            expected,
            actual,
            aggregate_id,
            ..
        } => {
            assert_eq!((expected, actual, aggregate_id), (1, 2, id));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(
        second.pending_events().len(),
        2,
        "the loser's events stay pending"
    );
    assert_eq!(
        stored(&events, id).await.len(),
        2,
        "nothing of the loser was written"
    );
    assert_eq!(repo.load(id).await.unwrap().state().balance, 11_000);
}

#[tokio::test]
async fn concurrent_writers_store_exactly_the_successful_saves() {
    let events = InMemoryEventStore::new();
    let repo = repo(&events);
    let id = Uuid::new_v4();
    repo.save(&mut opened(id, 0)).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let mut wins = 0;
                for _ in 0..20 {
                    let mut account = repo.load(id).await.unwrap();
                    account.record(MoneyDeposited { amount: 100 });
                    match repo.save(&mut account).await {
                        Ok(_) => wins += 1,
                        Err(e) if e.is_conflict() => {}
                        Err(e) => panic!("{e}"),
                    }
                    tokio::task::yield_now().await;
                }
                wins
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        wins += task.await.unwrap();
    }
    let loaded = repo.load(id).await.unwrap();
    assert_eq!(loaded.version(), 1 + wins);
    assert_eq!(loaded.state().transaction_count, wins);
    let versions: Vec<u64> = stored(&events, id)
        .await
        .iter()
        .map(|e| e.aggregate_version)
        .collect();
    assert_eq!(versions, (1..=1 + wins).collect::<Vec<_>>());
}

#[tokio::test]
async fn saving_nothing_is_a_no_op() {
    let events = InMemoryEventStore::new();
    let repo = repo(&events);
    let mut account = repo.create_new(Uuid::new_v4());
    assert_eq!(repo.save(&mut account).await.unwrap(), 0);
    assert!(events.is_empty());
}

/// Readings kept as floats, as measurements may be (money never is: the account keeps whole
/// cents). JSON has no number for a NaN or an infinity.
#[event(aggregate = "Gauge")]
pub struct GaugeRead {
    pub value: f64,
}

/// The sum of the readings, which finite readings can take to an infinity.
#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(name = "Gauge", schema_version = 1, events(GaugeRead))]
pub struct Gauge {
    pub total: f64,
}

impl Apply<GaugeRead> for Gauge {
    fn apply(&mut self, e: &GaugeRead) {
        self.total += e.value;
    }
}

#[tokio::test]
async fn a_non_finite_float_fails_the_save_and_loses_nothing() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
        let events = InMemoryEventStore::new();
        let repo = Repository::<Gauge>::new(events.clone());
        let mut gauge = repo.create_new(Uuid::new_v4());
        gauge.record(GaugeRead { value: 1.5 });
        gauge.record(GaugeRead { value: bad });
        let err = repo.save(&mut gauge).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Serialization {
                    action: "serialize",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("GaugeRead"), "{err}");
        assert_eq!(gauge.pending_events().len(), 2, "events stay pending");
        assert!(events.is_empty(), "nothing is written");
    }
}

#[tokio::test]
async fn a_state_that_overflows_to_infinity_saves_its_events_but_no_snapshot() {
    let events = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = Repository::<Gauge>::new(events.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::every(1).unwrap());
    let id = Uuid::new_v4();
    let mut gauge = repo.create_new(id);
    gauge.record(GaugeRead { value: f64::MAX });
    gauge.record(GaugeRead { value: f64::MAX });
    assert_eq!(gauge.state().total, f64::INFINITY);
    assert_eq!(repo.save(&mut gauge).await.unwrap(), 2);
    assert_eq!(repo.metrics().write_failures("Gauge"), 1);
    assert_eq!(snapshots.count(), 0);
    let err = repo.create_snapshot(&gauge).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Serialization {
                action: "serialize",
                ..
            }
        ),
        "{err:?}"
    );
    let loaded = repo.load(id).await.unwrap();
    assert_eq!(loaded.state(), gauge.state());
}

#[tokio::test]
async fn an_unknown_stored_event_type_is_an_error_naming_it() {
    let events = InMemoryEventStore::new();
    let id = Uuid::new_v4();
    events
        .append(
            id,
            "Account",
            0,
            &[envelope(id, 1, "AccountRenamed", r#"{"name":"x"}"#)],
        )
        .await
        .unwrap();
    let err = repo(&events).load(id).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownEventType { event_type, aggregate_type } if event_type == "AccountRenamed" && aggregate_type == "Account"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stored_payload_of_the_wrong_shape_is_a_serialization_error() {
    let events = InMemoryEventStore::new();
    let id = Uuid::new_v4();
    events
        .append(
            id,
            "Account",
            0,
            &[envelope(id, 1, "MoneyDeposited", r#"{"amount":"lots"}"#)],
        )
        .await
        .unwrap();
    let err = repo(&events).load(id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Serialization {
                action: "deserialize",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn same_id_under_another_aggregate_type_is_another_stream() {
    let events = InMemoryEventStore::new();
    let id = Uuid::new_v4();
    events
        .append(
            id,
            "Ledger",
            0,
            &[{
                let mut value = envelope(id, 1, "LedgerOpened", "{}");
                value.aggregate_type = "Ledger".into();
                value
            }],
        )
        .await
        .unwrap();
    assert!(repo(&events).load(id).await.unwrap_err().is_not_found());
}
