//! Decoding hostile event and snapshot data never panics and never yields a wrong state.
//!
//! The input is split at its first newline into an event type name and a payload (the whole
//! input is the type name if it has no newline). The payload is then decoded every way the
//! library decodes stored data:
//!
//! 1. as the event `event_type` (`AggregateEvent::from_json`, what a load does per event);
//! 2. as the tagged event enum `{"event_type": ..., "data": ...}` (its serde impl);
//! 3. as snapshot state (`serde_json::from_str::<Account>`, what a load does with a
//!    snapshot's state) and through `Snapshot::state_value`;
//! 4. through a real load: the payload is appended as the second event of a stream and
//!    planted as the state of a snapshot at version 1, and the loaded aggregate must be what
//!    the decoders above say, or a typed error.
//!
//! Whatever decodes must encode again and decode back to the same value (amounts are whole
//! cents, `i64`), with the same text. Only a real bug panics.

#![no_main]

use std::sync::OnceLock;

use eventsourcing_kit::prelude::*;
use eventsourcing_kit::{AggregateEvent, EventEnvelope, MissReason, Snapshot};
use libfuzzer_sys::fuzz_target;

#[path = "../../examples/domain/account.rs"]
#[allow(dead_code)] // the commands are the examples'
mod account;

use account::{Account, AccountEvent};

const EVENT_TYPES: [&str; 3] = ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"];

/// An event as comparable data: its type, text field and amount.
fn key(event: &AccountEvent) -> (&'static str, String, i64) {
    match event {
        AccountEvent::AccountOpened(e) => ("AccountOpened", e.owner_name.clone(), e.initial_balance),
        AccountEvent::MoneyDeposited(e) => ("MoneyDeposited", String::new(), e.amount),
        AccountEvent::MoneyWithdrawn(e) => ("MoneyWithdrawn", String::new(), e.amount),
    }
}

/// A state as comparable data.
fn state_key(state: &Account) -> (String, i64, u64) {
    (state.owner_name.clone(), state.balance, state.transaction_count)
}

/// 1. The event decoder: typed errors, and a stable round trip.
fn decode_event(event_type: &str, payload: &str) -> Option<AccountEvent> {
    let known = EVENT_TYPES.contains(&event_type);
    match AccountEvent::from_json(event_type, payload) {
        Ok(event) => {
            assert!(known, "decoded an event of unknown type {event_type:?}");
            assert_eq!(event.event_type(), event_type);
            let text = event.to_json().expect("a decoded event must encode");
            let again = AccountEvent::from_json(event_type, &text).expect("an encoded event must decode");
            assert_eq!(key(&again), key(&event), "round trip through {text}");
            assert_eq!(again.to_json().unwrap(), text, "unstable encoding");
            Some(event)
        }
        Err(Error::UnknownEventType {
            event_type: t,
            aggregate_type,
        }) => {
            assert!(!known, "{event_type:?} is known");
            assert_eq!((t.as_str(), aggregate_type.as_str()), (event_type, "Account"));
            None
        }
        Err(Error::Serialization { action, .. }) => {
            assert!(known, "a payload error for unknown type {event_type:?}");
            assert_eq!(action, "deserialize");
            None
        }
        Err(e) => panic!("untyped decode error: {e:?}"),
    }
}

/// 2. The tagged form of the event enum: a stable round trip.
fn decode_tagged(payload: &str) {
    if let Ok(event) = serde_json::from_str::<AccountEvent>(payload) {
        let text = serde_json::to_string(&event).expect("a decoded event must encode");
        let again: AccountEvent = serde_json::from_str(&text).expect("an encoded event must decode");
        assert_eq!(key(&again), key(&event), "round trip through {text}");
        assert_eq!(serde_json::to_string(&again).unwrap(), text, "unstable encoding");
        // The tagged form agrees with the per-type decoder on the data it wrote.
        let data = match &event {
            AccountEvent::AccountOpened(e) => serde_json::to_string(e),
            AccountEvent::MoneyDeposited(e) => serde_json::to_string(e),
            AccountEvent::MoneyWithdrawn(e) => serde_json::to_string(e),
        }
        .unwrap();
        let direct = AccountEvent::from_json(event.event_type(), &data).expect("its data must decode");
        assert_eq!(key(&direct), key(&event));
    }
}

/// 3. Snapshot state: a stable round trip, and `state_value` never panics.
fn decode_state(payload: &str) -> Option<Account> {
    let snapshot = Snapshot::new(Uuid::nil(), "Account", 1, 1, payload).with_created_at(EPOCH);
    match snapshot.state_value() {
        Ok(value) => assert_eq!(Some(value), serde_json::from_str(payload).ok()),
        Err(e) => assert!(matches!(e, Error::Serialization { .. }), "{e:?}"),
    }
    let state = serde_json::from_str::<Account>(payload).ok()?;
    let text = serde_json::to_string(&state).expect("a decoded state must encode");
    let again: Account = serde_json::from_str(&text).expect("an encoded state must decode");
    assert_eq!(state_key(&again), state_key(&state), "round trip through {text}");
    assert_eq!(serde_json::to_string(&again).unwrap(), text, "unstable encoding");
    Some(state)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fn envelope(id: Uuid, version: u64, event_type: &str, payload: &str) -> EventEnvelope {
    EventEnvelope::from_json(id, "Account", version, event_type, 1, payload).with_occurred_at(EPOCH)
}

const EPOCH: chrono::DateTime<chrono::Utc> = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;

const OPENED: &str = r#"{"owner_name":"Ada","initial_balance":10000}"#;

/// 4. A real load of a stream whose second event, and whose snapshot, is the input.
async fn load(event_type: &str, payload: &str, event: Option<&AccountEvent>, state: Option<&Account>) {
    let id = Uuid::new_v4();
    let events = InMemoryEventStore::new();
    let batch = [
        envelope(id, 1, "AccountOpened", OPENED),
        envelope(id, 2, event_type, payload),
    ];
    match events.append(id, "Account", 0, &batch).await {
        Ok(2) => {}
        Err(Error::InvalidInput(_)) if event_type.is_empty() => return,
        other => panic!("append: {other:?}"),
    }
    let snapshots = InMemorySnapshotStore::new();
    let planted = Snapshot {
        event_id: None,
        aggregate_id: id,
        aggregate_type: "Account".into(),
        version: 1,
        state: payload.to_owned(),
        schema_version: 1,
        created_at: EPOCH,
    };
    snapshots.save_snapshot(&planted).await.unwrap();

    let mut opened = Account::default();
    opened.apply_event(&AccountEvent::from_json("AccountOpened", OPENED).unwrap());
    let after = |mut base: Account| {
        event.map(|e| {
            base.apply_event(e);
            state_key(&base)
        })
    };

    let replay = Repository::<Account>::new(events.clone()).load(id).await;
    let repo = Repository::<Account>::new(events).with_snapshots(snapshots, SnapshotPolicy::manual());
    let with_snapshot = repo.load(id).await;
    let metrics = repo.metrics();
    let (used, want) = match state {
        Some(state) => (true, after(state.clone())),
        None => (false, after(opened.clone())),
    };
    for (loaded, want) in [(replay, after(opened)), (with_snapshot, want)] {
        match (loaded, want) {
            (Ok(root), Some(want)) => {
                assert_eq!(root.version(), 2);
                assert_eq!(state_key(root.state()), want);
            }
            (Err(Error::UnknownEventType { .. } | Error::Serialization { .. }), None) => {}
            (got, want) => panic!("load gave {got:?}, the decoders say {want:?}"),
        }
    }
    // A hit is counted once the events after the snapshot are applied.
    assert_eq!(metrics.hits("Account"), u64::from(used && event.is_some()));
    assert_eq!(
        metrics.misses("Account", MissReason::DeserializationError),
        u64::from(!used)
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (event_type, payload) = text.split_once('\n').unwrap_or((&text, ""));
    let event = decode_event(event_type, payload);
    decode_tagged(payload);
    let state = decode_state(payload);
    runtime().block_on(load(event_type, payload, event.as_ref(), state.as_ref()));
});
