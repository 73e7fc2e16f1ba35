//! The checks of the [`KeyStore`] contract, one `async fn` per point.
//!
//! Each check uses subjects of its own, so checks can run in parallel on one database; see
//! the [module docs](super) for how to run them.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use uuid::Uuid;

use super::unique_type;
use crate::error::Error;
use crate::personal::{KeyState, KeyStore, SubjectKey, KEY_LENGTH};

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_store_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            a_subject_gets_one_key_made_once
            racing_writers_get_one_key
            the_streams_of_a_subject_are_recorded
            forgetting_is_one_way
            a_subject_without_a_key_can_be_forgotten
            a_forgetting_not_begun_cannot_finish
            subjects_are_checked
            records_export_and_import
        }
    };
}

crate::__key_store_checks!(__conformance_runner(dyn KeyStore));

fn key(byte: u8) -> SubjectKey {
    SubjectKey::from_bytes([byte; KEY_LENGTH])
}

fn active(state: KeyState, what: &str) -> SubjectKey {
    match state {
        KeyState::Active(key) => key,
        KeyState::Forgotten => panic!("{what}: the subject reads as forgotten"),
    }
}

/// The first key given for a subject is its key: a later writer gets it, not its own, and
/// readers get it; a subject never written has no key.
pub async fn a_subject_gets_one_key_made_once(store: &dyn KeyStore) {
    let subject = unique_type("subject");
    let stream = (unique_type("Customer"), Uuid::new_v4());
    let first = store
        .key_for_writing(&subject, &stream.0, stream.1, &key(1))
        .await
        .unwrap();
    assert_eq!(
        active(first, "the first writer"),
        key(1),
        "the first key given is made"
    );
    let again = store
        .key_for_writing(&subject, &stream.0, stream.1, &key(2))
        .await
        .unwrap();
    assert_eq!(
        active(again, "a later writer"),
        key(1),
        "a later writer gets the key made"
    );
    let never = unique_type("subject");
    let read = store
        .keys_for_reading(&[&subject, &never, &subject])
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![
            Some(KeyState::Active(key(1))),
            None,
            Some(KeyState::Active(key(1)))
        ],
        "readers get the key, in the order asked, and nothing for a subject never written"
    );
    assert_eq!(
        store.keys_for_reading(&[]).await.unwrap(),
        vec![],
        "asking for none gets none"
    );
}

/// Of writers racing on a new subject, each with a key of its own, all get the one that won.
pub async fn racing_writers_get_one_key(store: &dyn KeyStore) {
    let subject = unique_type("subject");
    let ty = unique_type("Customer");
    let keys = join_all((0..16u8).map(|i| {
        let (subject, ty) = (subject.clone(), ty.clone());
        async move {
            store
                .key_for_writing(&subject, &ty, Uuid::new_v4(), &key(i + 1))
                .await
        }
    }))
    .await;
    let keys: BTreeSet<[u8; KEY_LENGTH]> = keys
        .into_iter()
        .map(|k| *active(k.unwrap(), "a racing writer").as_bytes())
        .collect();
    assert_eq!(keys.len(), 1, "racing writers got {} different keys", keys.len());
}

/// Every stream a subject's key was given for is listed once, and only for that subject.
pub async fn the_streams_of_a_subject_are_recorded(store: &dyn KeyStore) {
    let (subject, other) = (unique_type("subject"), unique_type("subject"));
    let (customers, orders) = (unique_type("Customer"), unique_type("Order"));
    let streams = [
        (customers.clone(), Uuid::new_v4()),
        (orders.clone(), Uuid::new_v4()),
        (orders.clone(), Uuid::new_v4()),
    ];
    for (ty, id) in streams.iter().chain(&streams[..1]) {
        store.key_for_writing(&subject, ty, *id, &key(3)).await.unwrap();
    }
    store
        .key_for_writing(&other, &customers, Uuid::new_v4(), &key(4))
        .await
        .unwrap();
    let listed: BTreeSet<(String, Uuid)> = store.streams_of(&subject).await.unwrap().into_iter().collect();
    assert_eq!(
        listed,
        streams.iter().cloned().collect(),
        "each stream is listed once"
    );
    assert!(
        store
            .streams_of(&unique_type("subject"))
            .await
            .unwrap()
            .is_empty(),
        "a subject never written has none"
    );
}

/// Once its forgetting begins a subject reads as forgotten for good, for readers and writers;
/// beginning again (after a crash) still gives the key, until the forgetting finishes and
/// deletes it; an unfinished forgetting is listed until then.
pub async fn forgetting_is_one_way(store: &dyn KeyStore) {
    let subject = unique_type("subject");
    let (ty, id) = (unique_type("Customer"), Uuid::new_v4());
    store.key_for_writing(&subject, &ty, id, &key(5)).await.unwrap();
    let begun = store.begin_forgetting(&subject).await.unwrap();
    assert_eq!(
        begun.key,
        Some(key(5)),
        "the forgetting gets the key while it is kept"
    );
    assert_eq!(begun.finished_at, None);
    assert_eq!(
        store.keys_for_reading(&[&subject]).await.unwrap(),
        vec![Some(KeyState::Forgotten)],
        "readers see the subject forgotten once its forgetting began"
    );
    assert_eq!(
        store
            .key_for_writing(&subject, &ty, Uuid::new_v4(), &key(6))
            .await
            .unwrap(),
        KeyState::Forgotten,
        "writers see the subject forgotten, and no new key is made"
    );
    let again = store.begin_forgetting(&subject).await.unwrap();
    assert_eq!(again.key, Some(key(5)), "beginning again still gives the key");
    assert_eq!(again.since, begun.since, "beginning again keeps when it began");
    assert!(
        store.unfinished().await.unwrap().contains(&subject),
        "an unfinished forgetting is listed"
    );
    store.finish_forgetting(&subject).await.unwrap();
    store.finish_forgetting(&subject).await.unwrap();
    let finished = store.begin_forgetting(&subject).await.unwrap();
    assert_eq!(finished.key, None, "a finished forgetting deleted the key");
    assert!(
        finished.finished_at.is_some(),
        "a finished forgetting says when it finished"
    );
    assert!(
        !store.unfinished().await.unwrap().contains(&subject),
        "a finished forgetting is not listed"
    );
    assert_eq!(
        store.keys_for_reading(&[&subject]).await.unwrap(),
        vec![Some(KeyState::Forgotten)]
    );
    assert_eq!(
        store.key_for_writing(&subject, &ty, id, &key(7)).await.unwrap(),
        KeyState::Forgotten,
        "a forgotten subject gets no key again"
    );
}

/// A subject that never had a key can be forgotten, and then never gets one.
pub async fn a_subject_without_a_key_can_be_forgotten(store: &dyn KeyStore) {
    let subject = unique_type("subject");
    let begun = store.begin_forgetting(&subject).await.unwrap();
    assert_eq!(begun.key, None, "there was no key");
    assert_eq!(
        store.keys_for_reading(&[&subject]).await.unwrap(),
        vec![Some(KeyState::Forgotten)]
    );
    let write = store
        .key_for_writing(&subject, &unique_type("Customer"), Uuid::new_v4(), &key(8))
        .await
        .unwrap();
    assert_eq!(
        write,
        KeyState::Forgotten,
        "no key is made for a forgotten subject"
    );
    store.finish_forgetting(&subject).await.unwrap();
}

/// Finishing a forgetting that did not begin is refused, and deletes nothing.
pub async fn a_forgetting_not_begun_cannot_finish(store: &dyn KeyStore) {
    let subject = unique_type("subject");
    store
        .key_for_writing(&subject, &unique_type("Customer"), Uuid::new_v4(), &key(9))
        .await
        .unwrap();
    match store.finish_forgetting(&subject).await {
        Err(Error::InvalidInput(_)) => {}
        other => panic!("finishing a forgetting not begun: expected InvalidInput, got {other:?}"),
    }
    assert_eq!(
        store.keys_for_reading(&[&subject]).await.unwrap(),
        vec![Some(KeyState::Active(key(9)))]
    );
    match store.finish_forgetting(&unique_type("subject")).await {
        Err(Error::InvalidInput(_)) => {}
        other => {
            panic!("finishing the forgetting of an unknown subject: expected InvalidInput, got {other:?}")
        }
    }
}

/// An empty subject, one too long, or one with a control character is refused.
pub async fn subjects_are_checked(store: &dyn KeyStore) {
    let too_long = "s".repeat(crate::personal::MAX_SUBJECT_LENGTH + 1);
    for subject in ["", "line\nbreak", too_long.as_str()] {
        match store
            .key_for_writing(subject, "Customer", Uuid::new_v4(), &key(10))
            .await
        {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("a key for subject {subject:?}: expected InvalidInput, got {other:?}"),
        }
        match store.begin_forgetting(subject).await {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("forgetting subject {subject:?}: expected InvalidInput, got {other:?}"),
        }
    }
}

/// [`KeyStore::export`] lists every subject in the order of their names, a page at a time,
/// with its key, its forgetting and its streams; [`KeyStore::import`] stores such a record so
/// that the subject reads as it did, again without a change, goes as far as a forgetting in
/// the record, and refuses a subject of another key.
pub async fn records_export_and_import(store: &dyn KeyStore) {
    let base = unique_type("record");
    let (a, b) = (format!("{base}-a"), format!("{base}-b"));
    let stream = (unique_type("Customer"), Uuid::new_v4());
    store
        .key_for_writing(&a, &stream.0, stream.1, &key(11))
        .await
        .unwrap();
    store
        .key_for_writing(&b, &stream.0, stream.1, &key(12))
        .await
        .unwrap();
    let mut ours = Vec::new();
    let mut after: Option<String> = Some(format!("{base}-"));
    loop {
        let page = store.export(after.as_deref(), 1).await.unwrap();
        assert!(page.len() <= 1, "a page holds at most the limit");
        let Some(record) = page.into_iter().next() else {
            break;
        };
        after = Some(record.subject.clone());
        if !record.subject.starts_with(&base) {
            break;
        }
        ours.push(record);
    }
    assert_eq!(
        ours.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>(),
        vec![a.as_str(), b.as_str()],
        "every subject once, in the order of their names"
    );
    assert_eq!(ours[0].key, Some(key(11)));
    assert_eq!(ours[0].streams, vec![stream.clone()]);
    assert_eq!((ours[0].forgetting_since, ours[0].forgotten_at), (None, None));

    // Imported again, nothing changes.
    store.import(&ours[0]).await.unwrap();
    assert_eq!(
        store.keys_for_reading(&[&a]).await.unwrap(),
        vec![Some(KeyState::Active(key(11)))]
    );

    // A subject new here reads as it did there, with its streams.
    let c = format!("{base}-c");
    let other = (unique_type("Order"), Uuid::new_v4());
    let record =
        crate::personal::SubjectRecord::new(c.clone(), Some(key(13)), None, None, vec![other.clone()]);
    store.import(&record).await.unwrap();
    assert_eq!(
        store.keys_for_reading(&[&c]).await.unwrap(),
        vec![Some(KeyState::Active(key(13)))]
    );
    assert_eq!(store.streams_of(&c).await.unwrap(), vec![other]);

    // A forgetting finished there finishes here.
    let now = chrono::Utc::now();
    let forgotten = crate::personal::SubjectRecord::new(c.clone(), None, Some(now), Some(now), vec![]);
    store.import(&forgotten).await.unwrap();
    let state = store.begin_forgetting(&c).await.unwrap();
    assert_eq!(state.key, None, "the key is deleted as it was there");
    assert!(state.finished_at.is_some());

    // A subject of another key is refused.
    let clash = crate::personal::SubjectRecord::new(b.clone(), Some(key(14)), None, None, vec![]);
    match store.import(&clash).await {
        Err(Error::InvalidInput(_)) => {}
        other => panic!("importing another key: expected InvalidInput, got {other:?}"),
    }
    assert_eq!(
        store.keys_for_reading(&[&b]).await.unwrap(),
        vec![Some(KeyState::Active(key(12)))]
    );
}
