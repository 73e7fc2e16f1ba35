//! The checks of the [`EventStore`] contract, one `async fn` per point.
//!
//! Each check writes under fresh ids and a type name of its own, so checks can run in
//! parallel on one database; see the [module docs](super) for how to run them.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Duration;
use futures_util::future::join_all;
use futures_util::{StreamExt, TryStreamExt};
use uuid::Uuid;

use super::{now, unique_type};
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::EventStore;

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __event_store_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            append_returns_the_new_version
            read_stream_returns_every_field_as_appended
            stale_expected_version_is_a_conflict
            conflicting_append_writes_nothing
            invalid_batches_are_refused_and_write_nothing
            reused_event_id_is_refused
            an_append_made_again_is_acknowledged
            read_stream_after_a_version_returns_the_rest
            empty_stream_reads_nothing
            same_id_under_two_types_is_two_streams
            positions_increase_with_every_append
            read_all_resumes_after_a_position
            long_stream_reads_back_in_order
            racing_appends_have_one_winner_per_version
            a_tailing_reader_misses_nothing_under_concurrent_appends
            load_stream_replays_what_read_stream_reads
            positions_are_found_by_version
            head_counts_what_read_all_shows
        }
    };
}

crate::__event_store_checks!(__conformance_runner(dyn EventStore));

/// The length of the stream of [`long_stream_reads_back_in_order`].
pub const LONG_STREAM: u64 = 5_000;

/// An event of the stream `(id, ty)` at `version`, with a payload that says its version.
fn event(id: Uuid, ty: &str, version: u64) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::new_v4(),
        event_type: Arc::from("ThingHappened"),
        event_version: 1,
        aggregate_id: id,
        aggregate_type: Arc::from(ty),
        aggregate_version: version,
        occurred_at: now(),
        correlation_id: None,
        causation_id: None,
        request_id: None,
        metadata: None,
        payload: Arc::from(format!(r#"{{"n":{version}}}"#)),
    }
}

/// `count` events of the stream `(id, ty)` that follow `after`.
pub(super) fn events(id: Uuid, ty: &str, after: u64, count: u64) -> Vec<EventEnvelope> {
    (after + 1..=after + count)
        .map(|version| event(id, ty, version))
        .collect()
}

pub(super) async fn append(
    store: &dyn EventStore,
    id: Uuid,
    ty: &str,
    expected: u64,
    batch: &[EventEnvelope],
) -> u64 {
    store
        .append(id, ty, expected, batch)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "appending {} event(s) to {ty} {id} at version {expected} failed: {e}",
                batch.len()
            )
        })
        .version
}

pub(super) async fn read(store: &dyn EventStore, id: Uuid, ty: &str, after: u64) -> Vec<StoredEvent> {
    store
        .read_stream(id, ty, after)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("reading {ty} {id} after version {after} failed: {e}"))
}

async fn version(store: &dyn EventStore, id: Uuid, ty: &str) -> u64 {
    store
        .stream_version(id, ty)
        .await
        .unwrap_or_else(|e| panic!("stream_version of {ty} {id} failed: {e}"))
}

/// The events of the aggregate types `types` after `after` in the global order, in the order
/// read; stops once `until` of them are read, else reads to the end of the log.
///
/// With `until`, a read that ends short is made again, after the last position it saw, for up
/// to 30 s: the feed may show an event only once transactions that could commit below it have
/// ended, and other programs on a shared database may hold it back a while.
async fn read_all_own(
    store: &dyn EventStore,
    after: u64,
    types: &[&str],
    until: Option<usize>,
) -> Vec<StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut last, mut own) = (after, Vec::new());
    loop {
        let mut log = store.read_all(last);
        while until.is_none_or(|until| own.len() < until) {
            match log.next().await {
                Some(Ok(event)) => {
                    last = event.position;
                    if types.contains(&&*event.aggregate_type) {
                        own.push(event);
                    }
                }
                Some(Err(e)) => panic!("read_all after position {after} failed: {e}"),
                None => break,
            }
        }
        let short = until.is_some_and(|until| own.len() < until);
        if !short || std::time::Instant::now() > deadline {
            return own;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn assert_same(stored: &StoredEvent, appended: &EventEnvelope, context: &str) {
    let s = &stored.envelope;
    let a = appended;
    assert_eq!(s.event_id, a.event_id, "{context}: event_id");
    assert_eq!(s.event_type, a.event_type, "{context}: event_type");
    assert_eq!(s.event_version, a.event_version, "{context}: event_version");
    assert_eq!(s.aggregate_id, a.aggregate_id, "{context}: aggregate_id");
    assert_eq!(s.aggregate_type, a.aggregate_type, "{context}: aggregate_type");
    assert_eq!(
        s.aggregate_version, a.aggregate_version,
        "{context}: aggregate_version"
    );
    assert_eq!(s.occurred_at, a.occurred_at, "{context}: occurred_at");
    assert_eq!(s.correlation_id, a.correlation_id, "{context}: correlation_id");
    assert_eq!(s.causation_id, a.causation_id, "{context}: causation_id");
    assert_eq!(s.request_id, a.request_id, "{context}: request_id");
    assert_eq!(s.metadata, a.metadata, "{context}: metadata");
    assert_eq!(s.payload, a.payload, "{context}: payload, byte for byte");
    assert!(
        stored.position > 0,
        "{context}: positions start at 1, got {}",
        stored.position
    );
}

/// `stored` is `appended`, event for event, with increasing positions.
fn assert_stream(stored: &[StoredEvent], appended: &[EventEnvelope], context: &str) {
    let versions = |events: &[StoredEvent]| events.iter().map(|e| e.aggregate_version).collect::<Vec<_>>();
    assert_eq!(
        stored.len(),
        appended.len(),
        "{context}: read {} event(s) (versions {:?}), expected {}",
        stored.len(),
        versions(stored),
        appended.len()
    );
    for (s, a) in stored.iter().zip(appended) {
        assert_same(
            s,
            a,
            &format!("{context}: event at version {}", a.aggregate_version),
        );
    }
    for pair in stored.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "{context}: version {} has position {}, not below version {}'s {}",
            pair[0].aggregate_version,
            pair[0].position,
            pair[1].aggregate_version,
            pair[1].position
        );
    }
}

fn assert_conflict(
    result: Result<crate::Appended>,
    id: Uuid,
    ty: &str,
    expected: u64,
    actual: u64,
    context: &str,
) {
    match result {
        Err(Error::Conflict {
            aggregate_type,
            aggregate_id,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(
                (aggregate_id, aggregate_type.as_str()),
                (id, ty),
                "{context}: the conflict's stream"
            );
            assert_eq!(
                (e, a),
                (expected, actual),
                "{context}: the conflict's (expected, actual) versions"
            );
        }
        other => panic!(
            "{context}: expected Error::Conflict {{ expected: {expected}, actual: {actual} }}, got {other:?}"
        ),
    }
}

/// `append` returns the stream's new version and its last event's position, and `stream_version`
/// follows it.
pub async fn append_returns_the_new_version(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("AppendVersion"));
    assert_eq!(version(store, id, &ty).await, 0, "a new stream is at version 0");
    let first = events(id, &ty, 0, 3);
    let appended = store.append(id, &ty, 0, &first).await.unwrap();
    assert_eq!(appended.version, 3, "appending 3 events to a new stream");
    assert_eq!(
        appended.position,
        read(store, id, &ty, 2).await[0].position,
        "the append tells the position of its last event"
    );
    assert_eq!(version(store, id, &ty).await, 3, "stream_version after 3 events");
    let second = events(id, &ty, 3, 1);
    assert_eq!(
        append(store, id, &ty, 3, &second).await,
        4,
        "appending 1 event at version 3"
    );
    let third = events(id, &ty, 4, 2);
    assert_eq!(
        append(store, id, &ty, 4, &third).await,
        6,
        "appending 2 events at version 4"
    );
    assert_eq!(version(store, id, &ty).await, 6, "stream_version after 6 events");
    let all: Vec<_> = [first, second, third].concat();
    assert_stream(
        &read(store, id, &ty, 0).await,
        &all,
        "the stream after three appends",
    );
}

/// Every field of an event comes back as it was appended: ids, names, versions, the
/// timestamp, correlation, causation, metadata and payload, set or not.
pub async fn read_stream_returns_every_field_as_appended(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("RoundTrip"));
    let mut full = event(id, &ty, 1);
    full.event_type = Arc::from("Opened");
    full.occurred_at = now() - Duration::days(3);
    full.correlation_id = Some(Uuid::new_v4());
    full.causation_id = Some(Uuid::new_v4());
    full.request_id =
        Some(crate::request::RequestId::new(&format!("order-7/päyment ✓ {}", Uuid::new_v4())).unwrap());
    full.metadata = Some(serde_json::json!({
        "user": "ada", "tags": ["a", "b"], "nested": { "ratio": 1.5, "none": null }
    }));
    full.payload = Arc::from(r#"{"amount":12.5,"list":[1,2,3],"name":"Ünïcödé ✓ \"quoted\" \\ / \n"}"#);
    let mut bare = event(id, &ty, 2);
    bare.event_type = Arc::from("Événement");
    bare.event_version = u32::MAX;
    bare.payload = Arc::from("{}");
    let mut partial = event(id, &ty, 3);
    partial.event_version = 7;
    partial.correlation_id = Some(Uuid::new_v4());
    partial.metadata = Some(serde_json::json!({}));
    partial.payload = Arc::from(r#"[null,true,-1,"x"]"#);
    // Text a normalizing store would change: key order, spacing, a negative zero, a NUL
    // escape, a repeated key, a trailing zero.
    let mut exact = event(id, &ty, 4);
    exact.payload = Arc::from(r#"{ "z": -0.0, "a": "nul \u0000 here",  "a": 2, "n": 1.50 }"#);
    exact.metadata = Some(serde_json::json!({ "zero": -0.0, "text": "a\u{0}b" }));
    let batch = vec![full, bare, partial, exact];
    append(store, id, &ty, 0, &batch).await;
    assert_stream(&read(store, id, &ty, 0).await, &batch, "events read back");
}

/// An append at a version the stream is not at is [`Error::Conflict`] with the expected and
/// the actual version, whether the writer is behind, ahead, or on a stream with no events.
pub async fn stale_expected_version_is_a_conflict(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("StaleVersion"));
    let result = store.append(id, &ty, 2, &events(id, &ty, 2, 1)).await;
    assert_conflict(
        result,
        id,
        &ty,
        2,
        0,
        "appending at version 2 to a stream with no events",
    );
    append(store, id, &ty, 0, &events(id, &ty, 0, 3)).await;
    for expected in [0, 2, 4, 100] {
        let result = store
            .append(id, &ty, expected, &events(id, &ty, expected, 2))
            .await;
        assert_conflict(
            result,
            id,
            &ty,
            expected,
            3,
            &format!("appending at version {expected} to a stream at 3"),
        );
    }
    assert_eq!(
        version(store, id, &ty).await,
        3,
        "stream_version after refused appends"
    );
}

/// A refused append stores nothing of its batch, not even its event ids: the same events,
/// renumbered, can be appended afterwards.
pub async fn conflicting_append_writes_nothing(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("ConflictWritesNothing"));
    let kept = events(id, &ty, 0, 2);
    append(store, id, &ty, 0, &kept).await;
    let refused = events(id, &ty, 1, 3);
    let result = store.append(id, &ty, 1, &refused).await;
    assert_conflict(
        result,
        id,
        &ty,
        1,
        2,
        "appending 3 events at version 1 to a stream at 2",
    );

    let stored = read(store, id, &ty, 0).await;
    assert_stream(&stored, &kept, "the stream after a refused append");
    assert_eq!(
        version(store, id, &ty).await,
        2,
        "stream_version after a refused append"
    );
    let after = stored[1].position;
    let leaked = read_all_own(store, after, &[&ty], None).await;
    assert!(
        leaked.is_empty(),
        "read_all shows events of a refused append: {leaked:?}"
    );

    let retried: Vec<_> = refused
        .iter()
        .enumerate()
        .map(|(i, e)| EventEnvelope {
            aggregate_version: 3 + i as u64,
            ..e.clone()
        })
        .collect();
    assert_eq!(
        append(store, id, &ty, 2, &retried).await,
        5,
        "appending the refused events again, renumbered"
    );
    assert_stream(
        &read(store, id, &ty, 0).await,
        &[kept, retried].concat(),
        "the stream after the retry",
    );
}

/// A batch that breaks the rules of the contract is [`Error::InvalidInput`] and stores
/// nothing: an empty batch, an event of another stream, versions that do not follow the
/// expected version one by one, an event id twice in the batch, an empty type name.
pub async fn invalid_batches_are_refused_and_write_nothing(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("InvalidBatch"));
    let kept = events(id, &ty, 0, 2);
    append(store, id, &ty, 0, &kept).await;
    let other_id = Uuid::new_v4();

    let mut cases: Vec<(&str, Vec<EventEnvelope>)> = vec![("an empty batch", vec![])];
    cases.push(("an event of another aggregate id", events(other_id, &ty, 2, 1)));
    cases.push((
        "an event of another aggregate type",
        events(id, &format!("{ty}-other"), 2, 1),
    ));
    cases.push(("a batch that starts at the wrong version", events(id, &ty, 3, 2)));
    let mut gap = events(id, &ty, 2, 3);
    gap.remove(1);
    cases.push(("versions with a gap", gap));
    let mut repeated = events(id, &ty, 2, 2);
    repeated[1].aggregate_version = 3;
    cases.push(("a version twice", repeated));
    let mut twice = events(id, &ty, 2, 2);
    twice[1].event_id = twice[0].event_id;
    cases.push(("an event id twice", twice));
    let mut unnamed = events(id, &ty, 2, 1);
    unnamed[0].event_type = Arc::from("");
    cases.push(("an empty event type", unnamed));
    let mut nul = events(id, &ty, 2, 1);
    nul[0].event_type = Arc::from("Thing\0Happened");
    cases.push(("an event type with a NUL character", nul));
    let mut good_then_bad = events(id, &ty, 2, 3);
    good_then_bad[2].aggregate_id = other_id;
    cases.push(("valid events followed by one of another stream", good_then_bad));

    for (case, batch) in &cases {
        match store.append(id, &ty, 2, batch).await {
            Err(Error::InvalidInput(_)) => {}
            other => panic!("appending {case}: expected Error::InvalidInput, got {other:?}"),
        }
        assert_stream(
            &read(store, id, &ty, 0).await,
            &kept,
            &format!("the stream after appending {case}"),
        );
    }
    assert_eq!(
        version(store, other_id, &ty).await,
        0,
        "the other aggregate's stream after invalid appends"
    );

    for name in [String::new(), format!("{ty}\0")] {
        let batch: Vec<_> = events(id, &name, 0, 1);
        match store.append(id, &name, 0, &batch).await {
            Err(Error::InvalidInput(_)) => {}
            other => panic!(
                "appending to the aggregate type {name:?}: expected Error::InvalidInput, got {other:?}"
            ),
        }
    }
}

/// An append made again with the batch that is already stored (its answer was lost to a
/// cancellation, a timeout or a dropped connection) succeeds with the version after the
/// batch and writes nothing, also when other events followed it; a batch that is only partly
/// stored, or stored at other versions, is still refused.
pub async fn an_append_made_again_is_acknowledged(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("AppendAgain"));
    let first = events(id, &ty, 0, 3);
    append(store, id, &ty, 0, &first).await;
    assert_eq!(
        append(store, id, &ty, 0, &first).await,
        3,
        "appending the stored batch again"
    );
    let second = events(id, &ty, 3, 2);
    append(store, id, &ty, 3, &second).await;
    assert_eq!(
        append(store, id, &ty, 0, &first).await,
        3,
        "appending the first batch again after a second one"
    );
    assert_eq!(
        append(store, id, &ty, 3, &second[..1]).await,
        4,
        "appending the first event of the second batch again"
    );
    assert_stream(
        &read(store, id, &ty, 0).await,
        &[first.clone(), second.clone()].concat(),
        "the stream after appends made again",
    );
    // Made again, an append tells the same position as the first time, if it tells one.
    let again = store
        .append(id, &ty, 0, &first)
        .await
        .unwrap_or_else(|e| panic!("append of the stored batch again: {e}"));
    let at_three = read(store, id, &ty, 2).await[0].position;
    assert_eq!(again.version, 3, "append of the stored batch again");
    assert_eq!(
        again.position, at_three,
        "the append made again tells the stored batch's last position"
    );

    let mut partly = first.clone();
    partly[2] = event(id, &ty, 3);
    match store.append(id, &ty, 0, &partly).await {
        Err(Error::Conflict { .. } | Error::InvalidInput(_)) => {}
        other => panic!("appending a batch only partly stored: expected a refusal, got {other:?}"),
    }
    let elsewhere: Vec<_> = second
        .iter()
        .map(|e| EventEnvelope {
            aggregate_version: e.aggregate_version + 2,
            ..e.clone()
        })
        .collect();
    match store.append(id, &ty, 5, &elsewhere).await {
        Err(Error::Conflict { .. } | Error::InvalidInput(_)) => {}
        other => panic!("appending stored events at other versions: expected a refusal, got {other:?}"),
    }
    assert_eq!(
        version(store, id, &ty).await,
        5,
        "stream_version after the refusals"
    );
}

/// An event id that is already stored, in any stream, is refused
/// ([`Error::InvalidInput`], or [`Error::Conflict`] where the database reports it so), and
/// nothing of its batch is stored.
pub async fn reused_event_id_is_refused(store: &dyn EventStore) {
    let ty = unique_type("ReusedEventId");
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let stored = events(first, &ty, 0, 1);
    append(store, first, &ty, 0, &stored).await;

    let mut single = events(second, &ty, 0, 1);
    single[0].event_id = stored[0].event_id;
    let mut last_of_three = events(second, &ty, 0, 3);
    last_of_three[2].event_id = stored[0].event_id;
    let mut same_stream = events(first, &ty, 1, 1);
    same_stream[0].event_id = stored[0].event_id;
    let cases = [
        ("an event whose id is stored in another stream", second, single),
        ("a batch whose last event id is stored", second, last_of_three),
        (
            "an event whose id is stored in the same stream",
            first,
            same_stream,
        ),
    ];
    for (case, target, batch) in &cases {
        let expected = if *target == first { 1 } else { 0 };
        match store.append(*target, &ty, expected, batch).await {
            Err(Error::InvalidInput(_) | Error::Conflict { .. }) => {}
            other => {
                panic!("appending {case}: expected Error::InvalidInput or Error::Conflict, got {other:?}")
            }
        }
        assert_eq!(
            version(store, second, &ty).await,
            0,
            "the second stream after appending {case}"
        );
        assert_stream(
            &read(store, first, &ty, 0).await,
            &stored,
            &format!("the first stream after appending {case}"),
        );
    }
    let fresh = events(second, &ty, 0, 3);
    assert_eq!(
        append(store, second, &ty, 0, &fresh).await,
        3,
        "appending fresh ids afterwards"
    );
}

/// `read_stream` after version `v` yields the events `v+1..`, in order; after the last
/// version, or any version beyond it, it yields nothing.
pub async fn read_stream_after_a_version_returns_the_rest(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("ReadAfter"));
    let all = events(id, &ty, 0, 10);
    append(store, id, &ty, 0, &all[..4]).await;
    append(store, id, &ty, 4, &all[4..]).await;
    for after in [0, 1, 4, 7, 9, 10, 11, 1_000, u64::MAX] {
        let rest = &all[(after.min(10) as usize)..];
        assert_stream(
            &read(store, id, &ty, after).await,
            rest,
            &format!("reading after version {after}"),
        );
    }
}

/// A stream with no events reads as empty, from any version, and is at version 0; so is a
/// stream whose type has events under other ids.
pub async fn empty_stream_reads_nothing(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("EmptyStream"));
    for after in [0, 5, u64::MAX] {
        assert_stream(
            &read(store, id, &ty, after).await,
            &[],
            &format!("reading a new stream after {after}"),
        );
    }
    assert_eq!(version(store, id, &ty).await, 0, "stream_version of a new stream");
    let neighbour = Uuid::new_v4();
    append(store, neighbour, &ty, 0, &events(neighbour, &ty, 0, 2)).await;
    assert_stream(
        &read(store, id, &ty, 0).await,
        &[],
        "reading a stream whose type has events under another id",
    );
    assert_eq!(
        version(store, id, &ty).await,
        0,
        "stream_version of a stream whose type has other streams"
    );
}

/// The same aggregate id under two aggregate types is two streams, each with its own events,
/// version and conflicts.
pub async fn same_id_under_two_types_is_two_streams(store: &dyn EventStore) {
    let id = Uuid::new_v4();
    let (one, two) = (unique_type("TypeOne"), unique_type("TypeTwo"));
    let first = events(id, &one, 0, 2);
    let second = events(id, &two, 0, 3);
    append(store, id, &one, 0, &first).await;
    append(store, id, &two, 0, &second).await;
    assert_eq!(
        version(store, id, &one).await,
        2,
        "the version of the first type's stream"
    );
    assert_eq!(
        version(store, id, &two).await,
        3,
        "the version of the second type's stream"
    );
    assert_stream(&read(store, id, &one, 0).await, &first, "the first type's stream");
    assert_stream(
        &read(store, id, &two, 0).await,
        &second,
        "the second type's stream",
    );

    let result = store.append(id, &one, 3, &events(id, &one, 3, 1)).await;
    assert_conflict(result, id, &one, 3, 2, "appending at the other type's version");
    let more = events(id, &one, 2, 1);
    assert_eq!(
        append(store, id, &one, 2, &more).await,
        3,
        "appending to the first type at its own version"
    );
    assert_stream(
        &read(store, id, &two, 0).await,
        &second,
        "the second type's stream after the first grew",
    );
}

/// Appends to two streams, alternating; returns the events in the order they were appended.
async fn interleaved(store: &dyn EventStore, ty: &str) -> Vec<EventEnvelope> {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let batches = [
        events(a, ty, 0, 2),
        events(b, ty, 0, 1),
        events(a, ty, 2, 1),
        events(b, ty, 1, 2),
    ];
    let mut order = Vec::new();
    for batch in batches {
        let first = &batch[0];
        append(store, first.aggregate_id, ty, first.aggregate_version - 1, &batch).await;
        order.extend(batch);
    }
    order
}

/// Every stored event has a position, unique and increasing with every append, across
/// streams.
pub async fn positions_increase_with_every_append(store: &dyn EventStore) {
    let ty = unique_type("Positions");
    let order = interleaved(store, &ty).await;
    let mut positions = HashMap::new();
    for id in [order[0].aggregate_id, order[2].aggregate_id] {
        for e in read(store, id, &ty, 0).await {
            positions.insert(e.event_id, e.position);
        }
    }
    let in_order: Vec<u64> = order
        .iter()
        .map(|e| {
            *positions
                .get(&e.event_id)
                .expect("every appended event is read back")
        })
        .collect();
    assert!(
        in_order.windows(2).all(|pair| pair[0] < pair[1]),
        "positions in the order the events were appended: {in_order:?}, expected strictly increasing"
    );
}

/// `read_all` after a position yields every event after it, in position order, each as
/// `read_stream` yields it; after the last position it yields none of them.
pub async fn read_all_resumes_after_a_position(store: &dyn EventStore) {
    let ty = unique_type("ReadAll");
    let order = interleaved(store, &ty).await;
    let first_stream = read(store, order[0].aggregate_id, &ty, 0).await;
    let start = first_stream[0].position - 1;

    let everything = read_all_own(store, start, &[&ty], Some(order.len())).await;
    assert_stream(&everything, &order, "read_all from before the first event");
    for pair in everything.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "read_all out of position order"
        );
    }
    let resumed = read_all_own(store, everything[2].position, &[&ty], Some(order.len() - 3)).await;
    assert_stream(&resumed, &order[3..], "read_all after the third event's position");
    let last = everything.last().expect("events were appended").position;
    let none = read_all_own(store, last, &[&ty], None).await;
    assert!(
        none.is_empty(),
        "read_all after the last event's position yields {none:?}"
    );
    let beyond: Vec<StoredEvent> = store
        .read_all(u64::MAX)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("read_all after u64::MAX failed: {e}"));
    assert!(
        beyond.is_empty(),
        "read_all after position u64::MAX yields {} event(s)",
        beyond.len()
    );
}

/// A stream of [`LONG_STREAM`] events reads back whole and in order; a read dropped after a
/// few events leaves the store usable.
pub async fn long_stream_reads_back_in_order(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("LongStream"));
    let all = events(id, &ty, 0, LONG_STREAM);
    for (i, batch) in all.chunks(1_000).enumerate() {
        append(store, id, &ty, i as u64 * 1_000, batch).await;
    }
    assert_eq!(
        version(store, id, &ty).await,
        LONG_STREAM,
        "stream_version of the long stream"
    );
    assert_stream(&read(store, id, &ty, 0).await, &all, "the long stream read back");
    let tail = LONG_STREAM - 10;
    assert_stream(
        &read(store, id, &ty, tail).await,
        &all[tail as usize..],
        "the long stream's last 10",
    );

    let head: Vec<_> = store.read_stream(id, &ty, 0).take(3).collect().await;
    assert_eq!(head.len(), 3, "the first 3 events of a read");
    let more = events(id, &ty, LONG_STREAM, 1);
    assert_eq!(
        append(store, id, &ty, LONG_STREAM, &more).await,
        LONG_STREAM + 1,
        "appending after a read was dropped part way"
    );
}

/// Writers racing to append at one version: exactly one wins, each other one gets a
/// conflict with the winner's version, and the stream holds the winner's events only.
pub async fn racing_appends_have_one_winner_per_version(store: &dyn EventStore) {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 5;
    let (id, ty) = (Uuid::new_v4(), unique_type("RacingAppends"));
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let expected = round * 2;
        let batches: Vec<_> = (0..WRITERS).map(|_| events(id, &ty, expected, 2)).collect();
        let results = join_all(batches.iter().map(|batch| store.append(id, &ty, expected, batch))).await;
        let mut won = Vec::new();
        for (writer, result) in results.into_iter().enumerate() {
            match result {
                Ok(appended) => {
                    assert_eq!(
                        appended.version,
                        expected + 2,
                        "round {round}: the winner's new version"
                    );
                    won.push(writer);
                }
                other => assert_conflict(
                    other,
                    id,
                    &ty,
                    expected,
                    expected + 2,
                    &format!("round {round}: writer {writer}, which lost"),
                ),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "round {round}: {WRITERS} writers appending at version {expected}, winners {won:?}"
        );
        winners.extend(batches[won[0]].iter().cloned());
    }
    assert_stream(
        &read(store, id, &ty, 0).await,
        &winners,
        "the stream after the races",
    );
}

/// The stored positions of the events `ids` of type `ty` appended after `start`.
async fn ids_by_stream(
    store: &dyn EventStore,
    ty: &str,
    ids: &std::collections::HashSet<&Uuid>,
    start: u64,
) -> Vec<(Uuid, u64)> {
    let mut streams = std::collections::HashSet::new();
    for event in read_all_own(store, start, &[ty], None).await {
        streams.insert(event.aggregate_id);
    }
    let mut found = Vec::new();
    for id in streams {
        for event in read(store, id, ty, 0).await {
            if ids.contains(&event.event_id) {
                found.push((event.event_id, event.position));
            }
        }
    }
    found
}

/// Writers append batches of 1 to 4 events concurrently while a reader tails the feed, each
/// time asking for the events after the last position it saw, as a read model keeping its
/// checkpoint would: it sees every event exactly once, in increasing positions. An event may
/// come late (other transactions on a shared database can hold the feed back), so the reader
/// waits up to 30 s after the writers are done before it counts an event as missed.
pub async fn a_tailing_reader_misses_nothing_under_concurrent_appends(store: &dyn EventStore) {
    const WRITERS: usize = 8;
    const BATCHES: usize = 25;
    let ty = unique_type("Tailed");
    let start = store
        .read_all(0)
        .fold(0, |last, e| async move { e.map_or(last, |e| e.position) })
        .await;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let writers = (0..WRITERS).map(|w| {
        let (ty, done) = (&ty, &done);
        async move {
            let id = Uuid::new_v4();
            let mut version = 0;
            let mut appended = Vec::new();
            for b in 0..BATCHES {
                let batch = events(id, ty, version, 1 + ((w + b) % 4) as u64);
                version = append(store, id, ty, version, &batch).await;
                appended.extend(batch.iter().map(|e| e.event_id));
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            appended
        }
    });
    let total: usize = (0..WRITERS)
        .map(|w| (0..BATCHES).map(|b| 1 + (w + b) % 4).sum::<usize>())
        .sum();
    let tailer = async {
        let (mut last, mut seen) = (start, Vec::<StoredEvent>::new());
        // A backend may show an event only once every transaction that could commit below it
        // has ended, and other programs' transactions on the database may hold it back a
        // while after the writers are done: a late event is fine, a skipped one is not.
        let mut finished_at = None;
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst) == WRITERS;
            if finished && finished_at.is_none() {
                finished_at = Some(std::time::Instant::now());
            }
            let mut feed = store.read_all(last);
            while let Some(event) = feed.next().await {
                let event = event.unwrap_or_else(|e| panic!("read_all after position {last} failed: {e}"));
                assert!(
                    event.position > last,
                    "read_all after {last} returned position {}",
                    event.position
                );
                last = event.position;
                if *event.aggregate_type == *ty {
                    seen.push(event);
                }
            }
            drop(feed);
            let waited_long = finished_at.is_some_and(|at| at.elapsed() > std::time::Duration::from_secs(30));
            if seen.len() >= total || waited_long {
                return seen;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let (appended, seen) = futures_util::future::join(join_all(writers), tailer).await;
    let appended: std::collections::HashSet<Uuid> = appended.into_iter().flatten().collect();
    let mut ids = std::collections::HashSet::new();
    for event in &seen {
        assert!(
            ids.insert(event.event_id),
            "event {} was read twice",
            event.event_id
        );
    }
    let missed: std::collections::HashSet<&Uuid> = appended.difference(&ids).collect();
    if !missed.is_empty() {
        // Where the missed events are: below the reader's last position (skipped), or above
        // it (held back past the wait); and whether the feed shows them now.
        let last = seen.last().map_or(start, |e| e.position);
        let now: std::collections::HashSet<Uuid> = read_all_own(store, start, &[&ty], None)
            .await
            .iter()
            .map(|e| e.event_id)
            .collect();
        let mut found = Vec::new();
        for writer in ids_by_stream(store, &ty, &missed, start).await {
            found.push(format!(
                "{} at position {} ({}, {} by the feed now)",
                writer.0,
                writer.1,
                if writer.1 < last {
                    "below the reader's last position"
                } else {
                    "above it"
                },
                if now.contains(&writer.0) {
                    "shown"
                } else {
                    "not shown"
                }
            ));
        }
        panic!(
            "the tailing reader missed {} of {} events; its last position {last}: {}",
            missed.len(),
            appended.len(),
            found.join("; ")
        );
    }
    assert_eq!(ids.len(), appended.len(), "the reader saw events nobody appended");
}

// ---------------------------------------------------------------------------------------
// Fast paths against their plain equivalents: a store may answer these from an index or a
// statement of their own, and must answer what the plain reads would.

/// `load_stream` yields what `read_stream` reads, as a replay uses it: the version, event id,
/// event type and version and the payload of each event, in order, after any version.
pub async fn load_stream_replays_what_read_stream_reads(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("Loaded"));
    let mut batch = events(id, &ty, 0, 7);
    batch[3].event_type = Arc::from("OtherThingHappened");
    batch[4].event_version = 3;
    append(store, id, &ty, 0, &batch).await;
    let replayed = |e: &StoredEvent| {
        (
            e.aggregate_version,
            e.event_id,
            e.event_type.clone(),
            e.event_version,
            e.payload.clone(),
        )
    };
    for after in [0, 3, 6, 7, 100] {
        let loaded: Vec<StoredEvent> = store
            .load_stream(id, &ty, after)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("load_stream of {ty} {id} after {after} failed: {e}"));
        let read = read(store, id, &ty, after).await;
        assert_eq!(
            loaded.iter().map(replayed).collect::<Vec<_>>(),
            read.iter().map(replayed).collect::<Vec<_>>(),
            "load_stream after version {after} replays what read_stream reads"
        );
    }
}

/// `position_of` finds each event's feed position at its version, and none where the
/// stream has no event; `append` tells the batch's last position.
pub async fn positions_are_found_by_version(store: &dyn EventStore) {
    let (id, ty) = (Uuid::new_v4(), unique_type("PositionOf"));
    let first = store.append(id, &ty, 0, &events(id, &ty, 0, 3)).await.unwrap();
    let second = store.append(id, &ty, 3, &events(id, &ty, 3, 2)).await.unwrap();
    assert_eq!((first.version, second.version), (3, 5));
    let stored = read(store, id, &ty, 0).await;
    for event in &stored {
        assert_eq!(
            store.position_of(id, &ty, event.aggregate_version).await.unwrap(),
            Some(event.position),
            "the position of version {}",
            event.aggregate_version
        );
    }
    for version in [0, 6, u64::MAX] {
        assert_eq!(
            store.position_of(id, &ty, version).await.unwrap(),
            None,
            "no event at version {version}"
        );
    }
    for (appended, last) in [(first, &stored[2]), (second, &stored[4])] {
        assert_eq!(appended.position, last.position, "the position append told");
    }
}

/// `head` counts what `read_all` shows: between a read of the feed after a position and a
/// read made after it, its count of events after the position and its last position lie
/// between theirs (other writers may append meanwhile on a shared store), and its lag counts
/// at least what it shows.
pub async fn head_counts_what_read_all_shows(store: &dyn EventStore) {
    let ty = unique_type("Head");
    let id = Uuid::new_v4();
    append(store, id, &ty, 0, &events(id, &ty, 0, 2)).await;
    let own = read_all_own(store, 0, &[&ty], Some(2)).await;
    let after = own[0].position - 1;
    append(store, id, &ty, 2, &events(id, &ty, 2, 3)).await;
    read_all_own(store, after, &[&ty], Some(5)).await;

    let shown = |after| async move {
        let all: Vec<StoredEvent> = store.read_all(after).try_collect().await.unwrap();
        (all.len() as u64, all.last().map_or(after, |e| e.position))
    };
    let (count_before, last_before) = shown(after).await;
    let head = store.head(after).await.unwrap();
    let (count_after, last_after) = shown(after).await;
    assert!(
        (count_before..=count_after).contains(&head.events_after),
        "head counts {} events after {after}; the feed showed {count_before}, then {count_after}",
        head.events_after
    );
    assert!(
        (last_before..=last_after).contains(&head.position),
        "head's position {} after {after}; the feed ended at {last_before}, then {last_after}",
        head.position
    );
    assert!(head.lag() >= head.events_after);
    assert!(count_before >= 5, "the feed shows the five events after {after}");
}
