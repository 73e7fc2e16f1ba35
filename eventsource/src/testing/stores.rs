//! The checks of the [abilities](crate::abilities) a backend hands out with its stores, each
//! against the plain reads and writes it stands for, one `async fn` per point.
//!
//! Each check takes the [`Stores`] and checks one ability; where the stores do not have it,
//! the check passes without checking anything (assert the abilities your backend has with
//! [`assert_abilities`]). Checks write under fresh ids and type names of their own, as the
//! other suites do.

use std::time::Duration;

use futures_util::TryStreamExt;
use uuid::Uuid;

use super::event_store::{append, events, read};
use super::snapshot_store::{delete_by_type, save, snapshot};
use super::unique_type;
use crate::backend::Stores;
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::Batch;
use crate::multi_stream::{MultiStreamAppend, StreamBatches, StreamCheck};
use crate::request::{Fingerprint, RequestId, RequestOutcome, RequestRecord};
use crate::snapshot::{Snapshot, SnapshotVersion};

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __stores_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            the_stream_listing_lists_every_stream_of_a_type
            the_snapshot_listing_lists_every_snapshot_of_a_type
            an_append_with_its_request_is_recorded_as_the_stream_holds_it
            a_recorded_request_id_refuses_every_other_batch
            the_first_refusal_is_kept_until_forgotten
            an_append_raises_the_signal
            a_joint_load_reads_what_two_reads_read
            a_joint_save_stores_what_two_writes_store
            the_slice_feed_reads_what_the_feed_holds_of_its_slices
            a_save_over_several_streams_stores_every_batch_or_none
            a_save_over_several_streams_fails_on_a_checked_stream_that_moved
            a_save_over_several_streams_made_again_is_acknowledged
            a_save_over_several_streams_refuses_an_event_id_stored_before
            of_saves_claiming_one_stream_at_once_exactly_one_goes_in
            checks_hold_when_the_save_commits
        }
    };
}

crate::__stores_checks!(__conformance_runner(Stores));

/// Which abilities a backend hands out, for [`assert_abilities`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Abilities {
    /// [`Stores::append_signal`].
    pub append_signal: bool,
    /// [`Stores::stream_listing`].
    pub stream_listing: bool,
    /// [`Stores::snapshot_listing`].
    pub snapshot_listing: bool,
    /// [`Stores::request_index`].
    pub request_index: bool,
    /// [`Stores::slice_feed`].
    pub slice_feed: bool,
    /// [`Stores::joint_snapshots`].
    pub joint_snapshots: bool,
    /// [`Stores::multi_stream`].
    pub multi_stream: bool,
    /// [`Stores::stream_lifecycle`].
    pub stream_lifecycle: bool,
}

/// Panics unless `stores` has exactly the abilities `expected` names: a backend's own test
/// that its [`Stores`] hand out what it can do, so that the checks above check it.
pub fn assert_abilities(stores: &Stores, expected: Abilities) {
    let actual = Abilities {
        append_signal: stores.append_signal.is_some(),
        stream_listing: stores.stream_listing.is_some(),
        snapshot_listing: stores.snapshot_listing.is_some(),
        request_index: stores.request_index.is_some(),
        slice_feed: stores.slice_feed.is_some(),
        joint_snapshots: stores.joint_snapshots.is_some(),
        multi_stream: stores.multi_stream.is_some(),
        stream_lifecycle: stores.stream_lifecycle.is_some(),
    };
    assert_eq!(actual, expected, "the abilities of {stores:?}");
}

/// The stream listing gives every stream of the type asked about, each once, at the version
/// `stream_version` reads, and none of another type.
pub async fn the_stream_listing_lists_every_stream_of_a_type(stores: &Stores) {
    let Some(listing) = &stores.stream_listing else {
        return;
    };
    let events_store = &*stores.events;
    let (ty, other) = (unique_type("Listed"), unique_type("NotListed"));
    assert!(
        listing.stream_versions(&ty).await.unwrap().is_empty(),
        "a type with no stream lists none"
    );
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    append(events_store, a, &ty, 0, &events(a, &ty, 0, 3)).await;
    append(events_store, b, &ty, 0, &events(b, &ty, 0, 1)).await;
    append(events_store, a, &ty, 3, &events(a, &ty, 3, 2)).await;
    append(events_store, a, &other, 0, &events(a, &other, 0, 7)).await;
    let mut listed = listing.stream_versions(&ty).await.unwrap();
    listed.sort_unstable();
    let mut expected = Vec::new();
    for id in [a, b] {
        expected.push((id, events_store.stream_version(id, &ty).await.unwrap()));
    }
    expected.sort_unstable();
    assert_eq!(
        listed, expected,
        "the streams of {ty} with the versions stream_version reads"
    );
    assert_eq!(listing.stream_versions(&other).await.unwrap(), vec![(a, 7)]);
}

/// The snapshot listing gives each stored snapshot of the type, one per aggregate and schema
/// version, at the version the store's reads return, and none of another type.
pub async fn the_snapshot_listing_lists_every_snapshot_of_a_type(stores: &Stores) {
    let Some(listing) = &stores.snapshot_listing else {
        return;
    };
    let store = &*stores.snapshots;
    let (ty, other) = (unique_type("Listed"), unique_type("NotListed"));
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let listed = |ty: String| async move {
        let mut listed = listing.snapshot_versions(&ty).await.unwrap();
        listed.sort_unstable();
        listed
    };
    assert!(
        listed(ty.clone()).await.is_empty(),
        "a type with no snapshot lists none"
    );
    for s in [
        snapshot(a, &ty, 4, 1),
        snapshot(a, &ty, 9, 1),
        snapshot(a, &ty, 9, 2),
        snapshot(b, &ty, 2, 1),
        snapshot(a, &other, 3, 1),
    ] {
        save(store, &s).await;
    }
    let mut expected = Vec::new();
    for (id, schema_version) in [(a, 1), (a, 2), (b, 1)] {
        let stored = store
            .get_snapshot(id, &ty, schema_version)
            .await
            .unwrap()
            .unwrap();
        expected.push(SnapshotVersion {
            aggregate_id: id,
            schema_version,
            version: stored.version,
        });
    }
    expected.sort_unstable();
    assert_eq!(listed(ty.clone()).await, expected, "the snapshots of {ty}");
    let other_listed = listed(other.clone()).await;
    assert_eq!(
        other_listed,
        vec![SnapshotVersion {
            aggregate_id: a,
            schema_version: 1,
            version: 3
        }]
    );
    delete_by_type(store, &ty, None).await;
    delete_by_type(store, &other, None).await;
}

/// An append with its request stores the batch as an append does and records the request as
/// executed at the batch's last version and position, as the stream reads them, with the
/// fingerprint; the events carry the request id; an id never recorded is not found.
pub async fn an_append_with_its_request_is_recorded_as_the_stream_holds_it(stores: &Stores) {
    let Some(index) = &stores.request_index else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("Requests"));
    append(&*stores.events, id, &ty, 0, &events(id, &ty, 0, 2)).await;
    let request = fresh_request();
    let fingerprint = Fingerprint::of_bytes(b"deposit 5");
    let batch = with_request(events(id, &ty, 2, 3), &request);
    let appended = index
        .append_with_request(id, &ty, 2, &batch, Some(fingerprint))
        .await
        .unwrap();
    let stream = read(&*stores.events, id, &ty, 0).await;
    assert_eq!(
        (appended.version, appended.position),
        (5, stream[4].position),
        "the append's version and last position"
    );
    assert!(
        stream[2..]
            .iter()
            .all(|e| e.request_id.as_ref() == Some(&request)),
        "the batch's events carry the request id"
    );
    let found = index
        .find_request(&request)
        .await
        .unwrap()
        .expect("the request is recorded");
    assert_eq!(
        (
            found.aggregate_type.as_str(),
            found.aggregate_id,
            found.fingerprint
        ),
        (ty.as_str(), id, Some(fingerprint)),
        "the record names the stream and the fingerprint"
    );
    assert_eq!(
        found.outcome,
        RequestOutcome::Executed {
            version: 5,
            position: stream[4].position
        },
        "the record's outcome is the batch as the stream holds it"
    );
    assert_eq!(
        index.find_request(&fresh_request()).await.unwrap(),
        None,
        "an id never recorded"
    );
}

/// A request id recorded already refuses another batch, on any stream, with
/// `Error::RequestRecorded` and nothing stored; the same append made again (a lost answer) is
/// acknowledged; of appends racing with one id on fresh streams, exactly one stores its batch.
pub async fn a_recorded_request_id_refuses_every_other_batch(stores: &Stores) {
    let Some(index) = &stores.request_index else {
        return;
    };
    let ty = unique_type("Requests");
    let (first, other) = (Uuid::new_v4(), Uuid::new_v4());
    let request = fresh_request();
    let batch = with_request(events(first, &ty, 0, 2), &request);
    let appended = index
        .append_with_request(first, &ty, 0, &batch, None)
        .await
        .unwrap();
    let again = index.append_with_request(first, &ty, 0, &batch, None).await;
    assert_eq!(
        again.unwrap(),
        appended,
        "the same append made again is acknowledged"
    );
    let elsewhere = with_request(events(other, &ty, 0, 1), &request);
    match index.append_with_request(other, &ty, 0, &elsewhere, None).await {
        Err(crate::Error::RequestRecorded { request_id }) => assert_eq!(request_id, request.as_str()),
        outcome => {
            panic!("another batch under a recorded request id: expected RequestRecorded, got {outcome:?}")
        }
    }
    assert!(
        read(&*stores.events, other, &ty, 0).await.is_empty(),
        "nothing of it is stored"
    );

    let racing = fresh_request();
    let streams: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let batches: Vec<_> = streams
        .iter()
        .map(|&id| with_request(events(id, &ty, 0, 1), &racing))
        .collect();
    let outcomes = futures_util::future::join_all(
        streams
            .iter()
            .zip(&batches)
            .map(|(&id, batch)| index.append_with_request(id, &ty, 0, batch, None)),
    )
    .await;
    let mut winners = Vec::new();
    for (id, outcome) in streams.iter().zip(outcomes) {
        match outcome {
            Ok(_) => winners.push(*id),
            Err(crate::Error::RequestRecorded { .. }) => {}
            Err(e) => panic!("a racing append with one request id: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "appends racing with one request id: one stores its batch"
    );
    let found = index.find_request(&racing).await.unwrap().unwrap();
    assert_eq!(
        found.aggregate_id, winners[0],
        "the record names the winner's stream"
    );
    for id in streams.iter().filter(|id| **id != winners[0]) {
        assert!(
            read(&*stores.events, *id, &ty, 0).await.is_empty(),
            "a loser stored nothing"
        );
    }
}

/// The first refusal of a request id is kept: a second refusal, or a refusal of an executed
/// request, returns what was recorded first; refusals are forgotten once recorded before
/// the bound asked, executed requests never.
pub async fn the_first_refusal_is_kept_until_forgotten(stores: &Stores) {
    let Some(index) = &stores.request_index else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("Refusals"));
    let request = fresh_request();
    let refusal = RequestRecord::refused(
        request.clone(),
        &ty,
        id,
        Some(Fingerprint::of_bytes(b"a")),
        "no funds",
    );
    assert_eq!(
        index.record_refusal(&refusal).await.unwrap(),
        refusal,
        "a first refusal is recorded"
    );
    let later = RequestRecord::refused(request.clone(), &ty, id, None, "closed");
    assert_eq!(
        index.record_refusal(&later).await.unwrap(),
        refusal,
        "the first refusal stays"
    );
    assert_eq!(index.find_request(&request).await.unwrap(), Some(refusal.clone()));

    let executed = fresh_request();
    let batch = with_request(events(id, &ty, 0, 1), &executed);
    index.append_with_request(id, &ty, 0, &batch, None).await.unwrap();
    let refused_after = RequestRecord::refused(executed.clone(), &ty, id, None, "late");
    let kept = index.record_refusal(&refused_after).await.unwrap();
    assert!(
        matches!(kept.outcome, RequestOutcome::Executed { version: 1, .. }),
        "a refusal of an executed request returns the execution, got {kept:?}"
    );

    let before = refusal.recorded_at - chrono::Duration::seconds(1);
    assert_eq!(
        index.forget_refusals(Some(&request), before).await.unwrap(),
        0,
        "not yet"
    );
    let after = refusal.recorded_at + chrono::Duration::seconds(1);
    assert_eq!(index.forget_refusals(Some(&request), after).await.unwrap(), 1);
    assert_eq!(
        index.find_request(&request).await.unwrap(),
        None,
        "the refusal is forgotten"
    );
    let future = chrono::Utc::now() + chrono::Duration::days(1);
    index.forget_refusals(None, future).await.unwrap();
    assert!(
        index.find_request(&executed).await.unwrap().is_some(),
        "an executed request is never forgotten"
    );
    match index
        .record_refusal(&RequestRecord::refused(fresh_request(), "", id, None, "x"))
        .await
    {
        Err(crate::Error::InvalidInput(_)) => {}
        other => panic!("a refusal of an empty aggregate type: expected InvalidInput, got {other:?}"),
    }
}

pub(super) fn fresh_request() -> RequestId {
    RequestId::new(&format!("request {}", Uuid::new_v4())).expect("a valid request id")
}

pub(super) fn with_request(
    mut batch: Vec<crate::EventEnvelope>,
    request: &RequestId,
) -> Vec<crate::EventEnvelope> {
    for event in &mut batch {
        event.request_id = Some(request.clone());
    }
    batch
}

/// An append raises the append signal: a waiter made before the append wakes within 5 s, and
/// so does a waiter of the one slice of the stream appended to.
pub async fn an_append_raises_the_signal(stores: &Stores) {
    let Some(signal) = &stores.append_signal else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("Signal"));
    let slices = match &stores.slice_feed {
        Some(feed) => feed.slice_count().await.unwrap(),
        None => crate::slice::SliceCount::DEFAULT,
    };
    let slice = slices.slice_of(&ty, id);
    let mut waiter = signal.waiter();
    let mut range_waiter = signal.waiter_for(slices, crate::slice::SliceRange::new(slice, slice).unwrap());
    append(&*stores.events, id, &ty, 0, &events(id, &ty, 0, 1)).await;
    tokio::time::timeout(Duration::from_secs(5), waiter.raised())
        .await
        .expect("an append wakes a waiter of the store's signal within 5 s");
    tokio::time::timeout(Duration::from_secs(5), range_waiter.raised())
        .await
        .expect("an append wakes a waiter of its stream's slice within 5 s");
}

/// A joint load gives the snapshot the snapshot store gives and the events from its version
/// on that the event store reads; with no snapshot stored, it gives none.
pub async fn a_joint_load_reads_what_two_reads_read(stores: &Stores) {
    let Some(joint) = &stores.joint_snapshots else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("JointLoad"));
    append(&*stores.events, id, &ty, 0, &events(id, &ty, 0, 6)).await;
    assert!(
        joint.reader().read(id, &ty, 1).await.unwrap().is_none(),
        "no snapshot stored: the joint load finds none"
    );
    let stream = read(&*stores.events, id, &ty, 0).await;
    let taken = Snapshot {
        event_id: Some(stream[3].event_id),
        ..snapshot(id, &ty, 4, 1)
    };
    save(&**joint.store(), &taken).await;
    let found = joint
        .reader()
        .read(id, &ty, 1)
        .await
        .unwrap()
        .expect("the joint load finds the stored snapshot");
    let plain = stores.snapshots.get_snapshot(id, &ty, 1).await.unwrap();
    assert_eq!(
        Some(&found.snapshot),
        plain.as_ref(),
        "the snapshot, as the store reads it"
    );
    let tail: Vec<StoredEvent> = found.events.try_collect().await.unwrap();
    assert_eq!(
        versions_and_ids(&tail),
        versions_and_ids(&stream[3..]),
        "the events from the snapshot's version on, as the event store reads them"
    );
    delete_by_type(&*stores.snapshots, &ty, None).await;
}

/// A joint save stores the batch as an append does and the snapshot as the snapshot store's
/// save does; made again, it is acknowledged, stores nothing twice, and says the snapshot was
/// not stored by it; at a stale version it is the append's conflict and stores neither.
pub async fn a_joint_save_stores_what_two_writes_store(stores: &Stores) {
    let Some(joint) = &stores.joint_snapshots else {
        return;
    };
    let (id, ty) = (Uuid::new_v4(), unique_type("JointSave"));
    let batch = events(id, &ty, 0, 3);
    let taken = Snapshot {
        event_id: Some(batch[2].event_id),
        ..snapshot(id, &ty, 3, 1)
    };
    let (appended, stored) = joint
        .writer()
        .append_with_snapshot(id, &ty, 0, &batch, &taken)
        .await
        .unwrap();
    let stream = read(&*stores.events, id, &ty, 0).await;
    assert!(stored, "the snapshot is stored with the batch");
    assert_eq!(appended.version, 3, "the version after the batch");
    assert_eq!(appended.position, stream[2].position, "the batch's last position");
    assert_eq!(
        versions_and_ids(&stream),
        batch
            .iter()
            .map(|e| (e.aggregate_version, e.event_id))
            .collect::<Vec<_>>(),
        "the batch, as the event store reads it"
    );
    let plain = stores.snapshots.get_snapshot(id, &ty, 1).await.unwrap();
    assert_eq!(
        plain.as_ref(),
        Some(&taken),
        "the snapshot, as the snapshot store reads it"
    );

    let (again, stored_again) = joint
        .writer()
        .append_with_snapshot(id, &ty, 0, &batch, &taken)
        .await
        .unwrap();
    assert_eq!(again, appended, "the save made again is acknowledged");
    assert!(
        !stored_again,
        "the save made again did not store the snapshot itself"
    );
    assert_eq!(
        read(&*stores.events, id, &ty, 0).await.len(),
        3,
        "nothing stored twice"
    );

    let late = events(id, &ty, 1, 1);
    let later = snapshot(id, &ty, 2, 2);
    match joint
        .writer()
        .append_with_snapshot(id, &ty, 1, &late, &later)
        .await
    {
        Err(crate::Error::Conflict {
            expected: 1,
            actual: 3,
            ..
        }) => {}
        other => panic!("a joint save at a stale version: expected the append's conflict, got {other:?}"),
    }
    let newest = stores.snapshots.get_snapshot(id, &ty, 2).await.unwrap();
    assert_eq!(
        newest.map(|s| (s.schema_version, s.version)),
        Some((1, 3)),
        "the refused save stored no snapshot"
    );
    delete_by_type(&*stores.snapshots, &ty, None).await;
}

/// The feed of a range of slices yields, after a position, exactly the events the whole feed
/// yields there of streams in those slices (by the store's number of slices), in the same
/// order, and a reader that resumes after the last position it saw misses nothing; a range
/// beyond the store's slices is refused.
pub async fn the_slice_feed_reads_what_the_feed_holds_of_its_slices(stores: &Stores) {
    use futures_util::StreamExt;

    use crate::slice::SliceRange;

    let Some(feed) = &stores.slice_feed else {
        return;
    };
    let slices = feed.slice_count().await.unwrap();
    assert_eq!(
        feed.slice_count().await.unwrap(),
        slices,
        "the number of slices is the same on every call"
    );
    let store = &*stores.events;
    let start = store.head(0).await.unwrap().position;
    let ty = unique_type("Sliced");
    let streams: Vec<Uuid> = (0..24).map(|_| Uuid::new_v4()).collect();
    // The range holding the first stream's slice and a quarter of the slices after it.
    let first = slices.slice_of(&ty, streams[0]);
    let quarter = (slices.get() / 4).max(1);
    let range = SliceRange::new(first, (first + quarter - 1).min(slices.get() - 1)).unwrap();
    let holds = |id: Uuid| range.contains(slices.slice_of(&ty, id));
    for round in 0..3u64 {
        for id in &streams {
            append(store, *id, &ty, round, &events(*id, &ty, round, 1)).await;
        }
    }
    let own = |events: Vec<StoredEvent>| -> Vec<(u64, Uuid, u64)> {
        events
            .into_iter()
            .filter(|e| *e.aggregate_type == *ty)
            .map(|e| (e.position, e.aggregate_id, e.aggregate_version))
            .collect()
    };
    let whole: Vec<StoredEvent> = store.read_all(start).try_collect().await.unwrap();
    let expected: Vec<_> = own(whole).into_iter().filter(|(_, id, _)| holds(*id)).collect();
    assert!(
        expected.len() >= 3,
        "the range holds the first stream's three events at least"
    );
    let sliced: Vec<StoredEvent> = feed.read_slices(range, start).try_collect().await.unwrap();
    assert!(
        sliced
            .iter()
            .all(|e| range.contains(slices.slice_of(&e.aggregate_type, e.aggregate_id))),
        "every event read is of a stream in the range"
    );
    assert_eq!(own(sliced), expected, "the range's events, in the feed's order");

    // Resumed after each event in turn, it reads the rest.
    let mut resumed = Vec::new();
    let mut after = start;
    loop {
        let mut next = feed.read_slices(range, after);
        let Some(event) = next.next().await.transpose().unwrap() else {
            break;
        };
        after = event.position;
        resumed.push(event);
    }
    assert_eq!(own(resumed), expected, "read one event at a time");

    if slices < crate::slice::SliceCount::MAX {
        let beyond = SliceRange::new(0, slices.get()).unwrap();
        let refused = feed.read_slices(beyond, start).try_collect::<Vec<_>>().await;
        assert!(
            matches!(refused, Err(crate::Error::InvalidInput(_))),
            "{beyond} of a store of {slices}: {refused:?}"
        );
    }
}

fn versions_and_ids(events: &[StoredEvent]) -> Vec<(u64, Uuid)> {
    events.iter().map(|e| (e.aggregate_version, e.event_id)).collect()
}

/// The outcome of saving `writes` (stream, type, expected version, events) conditioned on
/// `checks` with the stores' multi-stream saves.
async fn save_streams(
    multi: &dyn MultiStreamAppend,
    writes: &[(Uuid, &str, u64, Vec<EventEnvelope>)],
    checks: &[StreamCheck],
) -> crate::Result<Vec<crate::event_store::Appended>> {
    let batches: Vec<Batch<'_>> = writes
        .iter()
        .map(|(id, ty, expected, events)| Batch {
            aggregate_id: *id,
            aggregate_type: ty,
            expected_version: *expected,
            events,
        })
        .collect();
    multi
        .append_streams(StreamBatches::checked(&batches, checks)?)
        .await
}

/// The streams named by a conflict, with what was expected, found and whether written.
fn conflicted(error: crate::Error) -> Vec<(Uuid, u64, u64, bool)> {
    match error {
        crate::Error::Conflicts { streams } => {
            let mut named: Vec<_> = streams
                .into_iter()
                .map(|c| (c.aggregate_id, c.expected, c.actual, c.written))
                .collect();
            named.sort_unstable();
            named
        }
        other => panic!("expected the conflict of a save over several streams, got {other}"),
    }
}

/// A save writes every batch (a new stream and one that has events), each at the versions
/// and positions it returns, together in the feed in the order of its batches; a save with
/// one written stream not at its expected version writes nothing and names that stream.
pub async fn a_save_over_several_streams_stores_every_batch_or_none(stores: &Stores) {
    let Some(multi) = &stores.multi_stream else {
        return;
    };
    let store = &*stores.events;
    let ty = unique_type("Multi");
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    append(store, b, &ty, 0, &events(b, &ty, 0, 2)).await;
    let before = store.head(0).await.unwrap().position;
    let appended = save_streams(
        &**multi,
        &[
            (a, &ty, 0, events(a, &ty, 0, 2)),
            (b, &ty, 2, events(b, &ty, 2, 3)),
        ],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(appended.iter().map(|x| x.version).collect::<Vec<_>>(), vec![2, 5]);
    let (in_a, in_b) = (read(store, a, &ty, 0).await, read(store, b, &ty, 2).await);
    assert_eq!((in_a.len(), in_b.len()), (2, 3));
    assert_eq!(
        appended[0].position, in_a[1].position,
        "the position of a's last event"
    );
    assert_eq!(
        appended[1].position, in_b[2].position,
        "the position of b's last event"
    );
    // Other writers may share the store: the save's events are those of its type, and no
    // other event lies between them.
    let feed: Vec<StoredEvent> = store.read_all(before).try_collect().await.unwrap();
    let ours: Vec<usize> = (0..feed.len())
        .filter(|i| *feed[*i].aggregate_type == *ty)
        .collect();
    let order: Vec<(Uuid, u64)> = ours
        .iter()
        .map(|i| (feed[*i].aggregate_id, feed[*i].aggregate_version))
        .collect();
    assert_eq!(
        order,
        vec![(a, 1), (a, 2), (b, 3), (b, 4), (b, 5)],
        "the save's events in the feed, batch after batch"
    );
    assert_eq!(
        ours.last().map(|last| last - ours[0] + 1),
        Some(ours.len()),
        "the save's events together in the feed, no other event between them"
    );

    // b is at 5, not 4: nothing of the save goes in, c stays absent.
    let refused = save_streams(
        &**multi,
        &[
            (c, &ty, 0, events(c, &ty, 0, 1)),
            (b, &ty, 4, events(b, &ty, 4, 1)),
        ],
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(conflicted(refused), vec![(b, 4, 5, true)]);
    assert_eq!(store.stream_version(c, &ty).await.unwrap(), 0, "all or nothing");
    assert_eq!(store.stream_version(b, &ty).await.unwrap(), 5);
}

/// A checked stream that is not at its version (one that exists where absence was expected,
/// one past the version expected) fails the save, each named, and nothing is written; checks
/// that hold let it in.
pub async fn a_save_over_several_streams_fails_on_a_checked_stream_that_moved(stores: &Stores) {
    let Some(multi) = &stores.multi_stream else {
        return;
    };
    let store = &*stores.events;
    let ty = unique_type("Checked");
    let (written, exists, at_three, absent) =
        (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    append(store, exists, &ty, 0, &events(exists, &ty, 0, 1)).await;
    append(store, at_three, &ty, 0, &events(at_three, &ty, 0, 3)).await;
    let refused = save_streams(
        &**multi,
        &[(written, &ty, 0, events(written, &ty, 0, 1))],
        &[
            StreamCheck::absent(ty.clone(), exists),
            StreamCheck::at(ty.clone(), at_three, 2),
            StreamCheck::absent(ty.clone(), absent),
        ],
    )
    .await
    .unwrap_err();
    let mut expected = vec![(exists, 0, 1, false), (at_three, 2, 3, false)];
    expected.sort_unstable();
    assert_eq!(conflicted(refused), expected);
    assert_eq!(
        store.stream_version(written, &ty).await.unwrap(),
        0,
        "nothing written"
    );
    let appended = save_streams(
        &**multi,
        &[(written, &ty, 0, events(written, &ty, 0, 1))],
        &[
            StreamCheck::at(ty.clone(), exists, 1),
            StreamCheck::at(ty.clone(), at_three, 3),
            StreamCheck::absent(ty.clone(), absent),
        ],
    )
    .await
    .unwrap();
    assert_eq!(appended[0].version, 1);
    for (id, version) in [(written, 1), (exists, 1), (at_three, 3), (absent, 0)] {
        assert_eq!(
            store.stream_version(id, &ty).await.unwrap(),
            version,
            "a checked stream is not written"
        );
    }
    let feed: Vec<StoredEvent> = store.read_all(0).try_collect().await.unwrap();
    assert!(
        feed.iter().filter(|e| *e.aggregate_type == *ty).count() == 5,
        "the feed holds the events and nothing else of the save"
    );
}

/// A save made again after it committed (its answer lost) is acknowledged with the same
/// outcome, and nothing is stored twice.
pub async fn a_save_over_several_streams_made_again_is_acknowledged(stores: &Stores) {
    let Some(multi) = &stores.multi_stream else {
        return;
    };
    let store = &*stores.events;
    let ty = unique_type("Again");
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let writes = [
        (a, ty.as_str(), 0, events(a, &ty, 0, 2)),
        (b, ty.as_str(), 0, events(b, &ty, 0, 1)),
    ];
    let first = save_streams(&**multi, &writes, &[]).await.unwrap();
    let again = save_streams(&**multi, &writes, &[]).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(read(store, a, &ty, 0).await.len(), 2);
    assert_eq!(read(store, b, &ty, 0).await.len(), 1);
}

/// A save with an event id stored before (by another stream) is refused as invalid input,
/// and nothing is written.
pub async fn a_save_over_several_streams_refuses_an_event_id_stored_before(stores: &Stores) {
    let Some(multi) = &stores.multi_stream else {
        return;
    };
    let store = &*stores.events;
    let ty = unique_type("Reused");
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let stored = events(a, &ty, 0, 1);
    append(store, a, &ty, 0, &stored).await;
    let mut reused = events(c, &ty, 0, 1);
    reused[0].event_id = stored[0].event_id;
    let refused = save_streams(
        &**multi,
        &[(b, &ty, 0, events(b, &ty, 0, 1)), (c, &ty, 0, reused)],
        &[],
    )
    .await;
    assert!(
        matches!(refused, Err(crate::Error::InvalidInput(_))),
        "a reused event id: {refused:?}"
    );
    assert_eq!(store.stream_version(b, &ty).await.unwrap(), 0, "nothing written");
    assert_eq!(store.stream_version(c, &ty).await.unwrap(), 0, "nothing written");
}

/// Sixteen saves at once, each writing a stream of its own and claiming one shared stream
/// (expected absent): exactly one goes in, the others meet a conflict on the claim.
pub async fn of_saves_claiming_one_stream_at_once_exactly_one_goes_in(stores: &Stores) {
    let Some(multi) = &stores.multi_stream else {
        return;
    };
    let ty = unique_type("Claim");
    let claimed = Uuid::new_v4();
    let saves = (0..16).map(|_| {
        let (multi, ty) = (multi.clone(), ty.clone());
        async move {
            let own = Uuid::new_v4();
            let writes = [
                (claimed, ty.as_str(), 0, events(claimed, &ty, 0, 1)),
                (own, ty.as_str(), 0, events(own, &ty, 0, 1)),
            ];
            save_streams(&*multi, &writes, &[]).await
        }
    });
    let outcomes = futures_util::future::join_all(saves).await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 1, "exactly one claim: {outcomes:?}");
    for refused in outcomes.into_iter().filter_map(|o| o.err()) {
        assert_eq!(conflicted(refused), vec![(claimed, 0, 1, true)]);
    }
    assert_eq!(stores.events.stream_version(claimed, &ty).await.unwrap(), 1);
}

/// Write skew cannot happen: of two saves run at once, one writing X if Y is absent and the
/// other writing Y if X is absent, at most one goes in (both would need to commit before the
/// other), round after round.
pub async fn checks_hold_when_the_save_commits(stores: &Stores) {
    let Some(multi) = &stores.multi_stream else {
        return;
    };
    let ty = unique_type("Skew");
    for _ in 0..40 {
        let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
        let one = |write: Uuid, check: Uuid| {
            let (multi, ty) = (multi.clone(), ty.clone());
            async move {
                let writes = [(write, ty.as_str(), 0, events(write, &ty, 0, 1))];
                save_streams(&*multi, &writes, &[StreamCheck::absent(ty.clone(), check)]).await
            }
        };
        let (a, b) = tokio::join!(one(x, y), one(y, x));
        assert!(
            !(a.is_ok() && b.is_ok()),
            "both saves went in though each required the other's stream absent"
        );
        for outcome in [a, b] {
            if let Err(e) = outcome {
                assert!(
                    e.is_conflict() || e.is_transient(),
                    "a refusal other than a conflict: {e}"
                );
            }
        }
    }
}
