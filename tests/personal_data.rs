//! Personal fields sealed with a key per data subject, on memory, SQLite and PostgreSQL:
//! stored sealed and read back open, forgotten subjects read as forgotten and cannot be
//! written, a moved or changed ciphertext and an unreachable key store are errors, and
//! nothing is ever stored in the clear.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsourcing_kit::async_trait;
use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::personal::{Forgetting, KeyState, KeyStore, Keyring, Personal, SubjectKey};
use eventsourcing_kit::prelude::*;

#[path = "personal/customer.rs"]
mod customer;
use customer::*;

/// The stored payloads of the stream, as the feed has them.
async fn stored_payloads(stores: &Stores, id: Uuid) -> Vec<String> {
    stores
        .events
        .read_stream(id, "Customer", 0)
        .map(|e| e.unwrap().payload.to_string())
        .collect()
        .await
}

/// A keyring of its own over the stores' key store: no cache shared with the stores'.
fn fresh_keys(stores: &Stores) -> Keyring {
    Keyring::new(
        stores
            .keys
            .as_ref()
            .expect("every backend keeps keys")
            .store()
            .clone(),
    )
}

async fn personal_fields_are_stored_sealed_and_read_back_open(stores: Stores) {
    let repository = stores.repository::<Customer>();
    let subject = format!("customer-{}", Uuid::new_v4());
    let id = register(&repository, &subject).await;

    let payloads = stored_payloads(&stores, id).await;
    assert_eq!(payloads.len(), 1);
    let stored = &payloads[0];
    assert!(
        !stored.contains(EMAIL) && !stored.contains("Lovelace"),
        "plaintext stored: {stored}"
    );
    let json: serde_json::Value = serde_json::from_str(stored).unwrap();
    assert_eq!(json["plan"], "gold", "the other fields stay in the clear");
    assert_eq!(
        json["customer"],
        subject.as_str(),
        "the subject's field stays in the clear"
    );
    assert_eq!(json["email"]["$personal"]["subject"], subject.as_str());
    assert_eq!(
        json["fullName"]["$personal"]["subject"],
        subject.as_str(),
        "a renamed field is sealed"
    );

    let loaded = repository.load(id).await.unwrap();
    assert_eq!(loaded.state().email.known().map(String::as_str), Some(EMAIL));
    assert_eq!(loaded.state().name.known().map(String::as_str), Some(NAME));
    assert_eq!(loaded.state().plan, "gold");

    // A second load finds the key in the cache.
    let keys = stores.keys.clone().unwrap();
    let lookups = keys.lookups();
    repository.load(id).await.unwrap();
    assert_eq!(keys.lookups(), lookups, "a warm cache asks the key store nothing");

    // A subscription hands the handler the fields open.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler_seen = seen.clone();
    let subscription = stores
        .subscription(&format!("emails-{}", Uuid::new_v4().simple()))
        .unwrap()
        .for_aggregate::<Customer>()
        .poll_interval(Duration::from_millis(20))
        .unwrap();
    let handler = Typed::<Customer, _>::new(move |stored: &StoredEvent, event| {
        if stored.aggregate_id == id {
            if let CustomerEvent::Registered(e) = event {
                handler_seen.lock().unwrap().push(e.email.into_known());
            }
        }
        Ok(())
    });
    common::run_until(subscription, handler, || !seen.lock().unwrap().is_empty()).await;
    assert_eq!(*seen.lock().unwrap(), vec![Some(EMAIL.to_owned())]);
}

async fn writers_of_one_new_subject_on_many_streams_share_its_key(stores: Stores) {
    let repository = stores.repository::<Customer>();
    let subject = format!("customer-{}", Uuid::new_v4());
    let ids = futures_util::future::join_all((0..16).map(|_| register(&repository, &subject))).await;
    let streams = stores
        .keys
        .as_ref()
        .unwrap()
        .store()
        .streams_of(&subject)
        .await
        .unwrap();
    assert_eq!(
        streams.len(),
        16,
        "each stream is recorded as holding the subject's values"
    );
    let fresh = stores
        .repository::<Customer>()
        .with_personal_data(fresh_keys(&stores));
    for id in ids {
        let loaded = fresh.load(id).await.unwrap();
        assert_eq!(loaded.state().email.known().map(String::as_str), Some(EMAIL));
    }
}

async fn a_forgotten_subject_reads_as_forgotten_and_cannot_be_written(stores: Stores) {
    let repository = stores.repository::<Customer>();
    let (subject, other) = (
        format!("customer-{}", Uuid::new_v4()),
        format!("customer-{}", Uuid::new_v4()),
    );
    let id = register(&repository, &subject).await;
    let kept = register(&repository, &other).await;
    let keys = stores.keys.clone().unwrap();
    keys.store().begin_forgetting(&subject).await.unwrap();

    // A keyring that has not cached the key sees the subject forgotten at once.
    let fresh = stores
        .repository::<Customer>()
        .with_personal_data(fresh_keys(&stores));
    let mut loaded = fresh.load(id).await.unwrap();
    assert!(loaded.state().email.is_forgotten() && loaded.state().name.is_forgotten());
    assert_eq!(
        loaded.state().plan,
        "gold",
        "the rest of the event reads as before"
    );
    assert_eq!(
        fresh
            .load(kept)
            .await
            .unwrap()
            .state()
            .email
            .known()
            .map(String::as_str),
        Some(EMAIL),
        "another subject is untouched"
    );

    loaded.record(EmailChanged {
        customer: subject.clone(),
        email: Personal::new("new@example.com".to_owned()),
    });
    match fresh.save(&mut loaded).await {
        Err(Error::SubjectForgotten { subject: s }) => assert_eq!(s, subject),
        other => panic!("expected SubjectForgotten, got {other:?}"),
    }
    assert_eq!(stored_payloads(&stores, id).await.len(), 1, "nothing was written");

    // A forgotten value may be written as forgotten: it holds nothing.
    let mut loaded = fresh.load(id).await.unwrap();
    loaded.record(EmailChanged {
        customer: subject.clone(),
        email: Personal::Forgotten,
    });
    fresh.save(&mut loaded).await.unwrap();
    assert!(fresh.load(id).await.unwrap().state().email.is_forgotten());
}

async fn a_moved_or_changed_ciphertext_is_an_error_naming_the_event(stores: Stores) {
    let repository = stores.repository::<Customer>();
    let subject = format!("customer-{}", Uuid::new_v4());
    let id = register(&repository, &subject).await;
    let sealed = stored_payloads(&stores, id).await.remove(0);

    // The sealed payload copied into another event of the stream: bound to its own event.
    let moved =
        eventsourcing_kit::EventEnvelope::from_json(id, "Customer", 2, "Registered", 1, sealed.clone());
    let moved_id = moved.event_id;
    stores.events.append(id, "Customer", 1, &[moved]).await.unwrap();
    match repository.load(id).await {
        Err(Error::Corrupt { what, reason }) => {
            assert!(what.contains(&moved_id.to_string()), "{what}");
            assert!(
                reason.contains("email") || reason.contains("fullName"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // One character of the ciphertext changed.
    let other = Uuid::new_v4();
    let mut json: serde_json::Value = serde_json::from_str(&sealed).unwrap();
    let text = json["email"]["$personal"]["sealed"].as_str().unwrap().to_owned();
    let mut bytes = text.into_bytes();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    json["email"]["$personal"]["sealed"] = serde_json::Value::String(String::from_utf8(bytes).unwrap());
    let changed =
        eventsourcing_kit::EventEnvelope::from_json(other, "Customer", 1, "Registered", 1, json.to_string());
    let changed_id = changed.event_id;
    stores
        .events
        .append(other, "Customer", 0, &[changed])
        .await
        .unwrap();
    match repository.load(other).await {
        Err(Error::Corrupt { what, .. }) => assert!(what.contains(&changed_id.to_string()), "{what}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A key store that cannot be reached.
struct Unreachable;

fn unreachable() -> Error {
    Error::store(
        "test",
        "the key store is unreachable",
        std::io::Error::other("connection refused"),
    )
}

#[async_trait]
impl KeyStore for Unreachable {
    async fn key_for_writing(
        &self,
        _: &str,
        _: &str,
        _: Uuid,
        _: &SubjectKey,
    ) -> eventsourcing_kit::Result<KeyState> {
        Err(unreachable())
    }
    async fn keys_for_reading(&self, _: &[&str]) -> eventsourcing_kit::Result<Vec<Option<KeyState>>> {
        Err(unreachable())
    }
    async fn begin_forgetting(&self, _: &str) -> eventsourcing_kit::Result<Forgetting> {
        Err(unreachable())
    }
    async fn streams_of(&self, _: &str) -> eventsourcing_kit::Result<Vec<(String, Uuid)>> {
        Err(unreachable())
    }
    async fn finish_forgetting(&self, _: &str) -> eventsourcing_kit::Result<()> {
        Err(unreachable())
    }
    async fn unfinished(&self) -> eventsourcing_kit::Result<Vec<String>> {
        Err(unreachable())
    }
    async fn export(
        &self,
        _: Option<&str>,
        _: usize,
    ) -> eventsourcing_kit::Result<Vec<eventsourcing_kit::personal::SubjectRecord>> {
        Err(unreachable())
    }
    async fn import(&self, _: &eventsourcing_kit::personal::SubjectRecord) -> eventsourcing_kit::Result<()> {
        Err(unreachable())
    }
}

async fn an_unreachable_key_store_fails_reads_and_writes_as_transient(stores: Stores) {
    let repository = stores.repository::<Customer>();
    let subject = format!("customer-{}", Uuid::new_v4());
    let id = register(&repository, &subject).await;
    let cut_off = stores
        .repository::<Customer>()
        .with_personal_data(Keyring::new(Arc::new(Unreachable)));
    match cut_off.load(id).await {
        Err(e) => assert!(e.is_transient(), "a load without keys is transient: {e}"),
        Ok(root) => panic!("a load without keys read {:?}", root.state()),
    }
    let mut root = cut_off.create_new(Uuid::new_v4());
    root.record(registered(&subject));
    match cut_off.save(&mut root).await {
        Err(e) => assert!(e.is_transient(), "a save without keys is transient: {e}"),
        Ok(_) => panic!("a save without keys succeeded"),
    }
    assert!(
        stored_payloads(&stores, root.id()).await.is_empty(),
        "nothing was written"
    );
}

async fn an_event_that_does_not_open_becomes_a_dead_letter(stores: Stores) {
    let customers = stores.repository::<Customer>();
    let good = register(&customers, &format!("customer-{}", Uuid::new_v4())).await;
    let sealed = stored_payloads(&stores, good).await.remove(0);
    // A sealed payload copied into another event: it does not open there.
    let bad = Uuid::new_v4();
    let moved = eventsourcing_kit::EventEnvelope::from_json(bad, "Customer", 1, "Registered", 1, sealed);
    let moved_id = moved.event_id;
    stores.events.append(bad, "Customer", 0, &[moved]).await.unwrap();
    let after = register(&customers, &format!("customer-{}", Uuid::new_v4())).await;

    let name = format!("poisoned-{}", Uuid::new_v4().simple());
    let subscription = stores
        .subscription(&name)
        .unwrap()
        .for_aggregate::<Customer>()
        .on_failure(eventsourcing_kit::subscription::OnFailure::DeadLetter)
        .retry(1, Duration::from_millis(1), Duration::from_millis(1))
        .unwrap()
        .poll_interval(Duration::from_millis(20))
        .unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let noted = handled.clone();
    let handler = Typed::<Customer, _>::new(move |stored: &StoredEvent, _| {
        noted.lock().unwrap().push(stored.aggregate_id);
        Ok(())
    });
    common::run_until(subscription, handler, || handled.lock().unwrap().contains(&after)).await;
    let handled = handled.lock().unwrap().clone();
    assert!(
        handled.contains(&good) && handled.contains(&after),
        "the other events were handled"
    );
    assert!(!handled.contains(&bad));
    let letters = stores
        .subscriptions
        .dead_letters(&name, 0, usize::MAX)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id, moved_id);
    assert!(letters[0].error.contains("does not open"), "{}", letters[0].error);
}

async fn a_value_shaped_like_a_sealed_one_is_refused(stores: Stores) {
    let customers = stores.repository::<Customer>();
    let id = register(&customers, &format!("customer-{}", Uuid::new_v4())).await;
    for note in [
        serde_json::json!({"$personal": {"subject": "customer-1", "sealed": "QUJD"}}),
        serde_json::json!({"$personal": 1}),
    ] {
        let mut root = customers.load(id).await.unwrap();
        root.record(Noted { note });
        match customers.save(&mut root).await {
            Err(Error::InvalidInput(message)) => {
                assert!(message.contains("shaped like a sealed"), "{message}")
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(stored_payloads(&stores, id).await.len(), 1, "nothing was written");
    // The same shape below the top level is data like any other.
    let mut root = customers.load(id).await.unwrap();
    root.record(Noted {
        note: serde_json::json!({"inner": {"$personal": {"subject": "customer-1", "sealed": "QUJD"}}}),
    });
    customers.save(&mut root).await.unwrap();
    customers.load(id).await.unwrap();
}

async fn without_a_keyring_nothing_is_stored_in_the_clear(stores: Stores) {
    let plain = Repository::<Customer>::new(stores.events.clone());
    let mut root = plain.create_new(Uuid::new_v4());
    root.record(registered("customer-plain"));
    match plain.save(&mut root).await {
        Err(Error::InvalidConfiguration(message)) => assert!(message.contains("personal"), "{message}"),
        other => panic!("expected InvalidConfiguration, got {other:?}"),
    }
    assert!(
        stored_payloads(&stores, root.id()).await.is_empty(),
        "nothing was written"
    );

    // A sealed event read without a keyring fails to decode, saying why.
    let id = register(&stores.repository::<Customer>(), "customer-sealed").await;
    match plain.load(id).await {
        Err(Error::Serialization { reason, .. }) => assert!(reason.contains("key store"), "{reason}"),
        other => panic!("expected Serialization, got {other:?}"),
    }
}

crate::on_every_backend! {
    "personal":
    personal_fields_are_stored_sealed_and_read_back_open => personal_fields_are_stored_sealed_and_read_back_open;
    writers_of_one_new_subject_on_many_streams_share_its_key => writers_of_one_new_subject_on_many_streams_share_its_key;
    a_forgotten_subject_reads_as_forgotten_and_cannot_be_written => a_forgotten_subject_reads_as_forgotten_and_cannot_be_written;
    a_moved_or_changed_ciphertext_is_an_error_naming_the_event => a_moved_or_changed_ciphertext_is_an_error_naming_the_event;
    an_unreachable_key_store_fails_reads_and_writes_as_transient => an_unreachable_key_store_fails_reads_and_writes_as_transient;
    without_a_keyring_nothing_is_stored_in_the_clear => without_a_keyring_nothing_is_stored_in_the_clear;
    a_value_shaped_like_a_sealed_one_is_refused => a_value_shaped_like_a_sealed_one_is_refused;
    an_event_that_does_not_open_becomes_a_dead_letter => an_event_that_does_not_open_becomes_a_dead_letter;
}

/// The schema lock shows each personal field's shape and subject, and names a field made
/// personal, or no longer, as a change.
#[test]
fn the_schema_lock_covers_personal_fields() {
    use eventsourcing_kit::evolution::SchemaLock;

    let lock = SchemaLock::new()
        .with_event::<Registered>()
        .with_aggregate::<Customer>();
    let text = lock.to_string();
    assert!(text.contains("email: personal<str>"), "{text}");
    assert!(text.contains("fullName: personal<str>"), "{text}");
    assert!(text.contains("personal email = subject customer"), "{text}");
    assert!(text.contains("personal fullName = subject customer"), "{text}");
    assert_eq!(
        SchemaLock::parse(&text).unwrap().differences(&lock),
        vec![],
        "the text reads back"
    );

    let before = text
        .lines()
        .filter(|line| !line.contains("personal email"))
        .map(|line| line.replace("email: personal<str>", "email: str"))
        .collect::<Vec<_>>()
        .join("\n");
    let differences: Vec<String> = lock
        .differences(&SchemaLock::parse(&before).unwrap())
        .iter()
        .map(ToString::to_string)
        .collect();
    let said = differences.join("\n");
    assert!(
        said.contains("made field `email` personal, of the subject in `customer`"),
        "{said}"
    );
}
