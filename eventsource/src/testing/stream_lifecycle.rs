//! The checks of the [`StreamLifecycle`] contract:
//! deleting a stream behind a tombstone, archiving its events and restoring them, one
//! `async fn` per point.
//!
//! Each check takes the [`Stores`] and passes without checking anything where they have no
//! stream lifecycle. Checks write under fresh ids and type names of their own, and look at
//! the feed after their own first event only, so they run in parallel on one database.

use std::time::Duration;

use futures_util::TryStreamExt;
use uuid::Uuid;

use super::event_store::{append, events, read};
use super::stores::{fresh_request, with_request};
use super::unique_type;
use crate::backend::Stores;
use crate::error::Error;
use crate::event::StoredEvent;
use crate::lifecycle::{StreamLifecycle, DELETED};
use crate::slice::SliceRange;

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __stream_lifecycle_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            a_deleted_stream_reads_as_its_tombstone
            a_deletion_made_again_is_acknowledged
            a_deletion_of_a_stream_that_moved_conflicts
            archived_events_read_in_their_stream_and_leave_the_feed
            an_archive_keeps_the_last_event_live
            a_restore_puts_archived_events_back_at_their_positions
            a_deletion_racing_a_restore_leaves_the_tombstone_alone
            a_restore_refuses_an_event_id_stored_again
        }
    };
}

crate::__stream_lifecycle_checks!(__conformance_runner(Stores));

/// A tombstone of the stream at `version`.
fn tombstone(id: Uuid, ty: &str, version: u64) -> crate::EventEnvelope {
    crate::EventEnvelope::from_json(id, ty, version, DELETED, 1, "{}")
}

/// A stream of `count` events appended in batches of `batch`; the position of its first
/// event, after which the checks read the feed.
async fn stream(stores: &Stores, id: Uuid, ty: &str, count: u64, batch: u64) -> u64 {
    let mut first = None;
    let mut version = 0;
    while version < count {
        let n = batch.min(count - version);
        let appended = stores
            .events
            .append(id, ty, version, &events(id, ty, version, n))
            .await
            .unwrap();
        first.get_or_insert(appended.position - (n - 1));
        version = appended.version;
    }
    first.expect("at least one event") - 1
}

/// The stream's events that the feed holds after `after`, and the feed by slice too where
/// the stores have one (the two must agree; a store of several feeds, a sharded one, has the
/// feed by slice only): their versions and positions.
async fn in_feed_now(stores: &Stores, id: Uuid, ty: &str, after: u64) -> Vec<(u64, u64)> {
    let own = |events: Vec<StoredEvent>| -> Vec<(u64, u64)> {
        events
            .iter()
            .filter(|e| e.aggregate_id == id && *e.aggregate_type == *ty)
            .map(|e| (e.aggregate_version, e.position))
            .collect()
    };
    let one_feed = stores.shards().is_none_or(|shards| shards.len() == 1);
    let fed = match one_feed {
        true => Some(own(stores.events.read_all(after).try_collect().await.unwrap())),
        false => None,
    };
    let sliced = match &stores.slice_feed {
        Some(feed) => {
            let slice = feed.slice_count().await.unwrap().slice_of(ty, id);
            let range = SliceRange::new(slice, slice).unwrap();
            Some(own(feed.read_slices(range, after).try_collect().await.unwrap()))
        }
        None => None,
    };
    match (fed, sliced) {
        (Some(fed), Some(sliced)) => {
            assert_eq!(
                sliced, fed,
                "the feed by slice holds what the feed holds of {ty} {id}"
            );
            fed
        }
        (Some(events), None) | (None, Some(events)) => events,
        (None, None) => panic!("stores of several feeds without a feed by slice"),
    }
}

/// [`in_feed_now`] once it shows `count` events of the stream, waiting up to 30 s: the feed
/// holds events back while transactions of other writers that could commit below them run.
async fn in_feed(stores: &Stores, id: Uuid, ty: &str, after: u64, count: usize) -> Vec<(u64, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = in_feed_now(stores, id, ty, after).await;
        if found.len() >= count || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lifecycle(stores: &Stores) -> Option<&dyn StreamLifecycle> {
    stores.stream_lifecycle.as_deref()
}

/// A deletion appends the tombstone at the next version and removes the stream's other
/// events and the request ids they recorded: the stream reads as the tombstone alone, the
/// feed holds the tombstone and none of the earlier events, and other streams stay.
pub async fn a_deleted_stream_reads_as_its_tombstone(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let ty = unique_type("Deleted");
    let (id, kept) = (Uuid::new_v4(), Uuid::new_v4());
    let after = stream(stores, id, &ty, 3, 2).await;
    stream(stores, kept, &ty, 2, 2).await;
    let request = fresh_request();
    if let Some(index) = &stores.request_index {
        let batch = with_request(events(id, &ty, 3, 1), &request);
        index.append_with_request(id, &ty, 3, &batch, None).await.unwrap();
    } else {
        append(&*stores.events, id, &ty, 3, &events(id, &ty, 3, 1)).await;
    }
    let appended = lifecycle
        .delete_stream(id, &ty, 4, &tombstone(id, &ty, 5))
        .await
        .unwrap();
    assert_eq!(appended.version, 5, "the tombstone takes the next version");
    let left = read(&*stores.events, id, &ty, 0).await;
    assert_eq!(left.len(), 1, "the stream reads as its tombstone alone");
    assert_eq!(
        (&*left[0].event_type, left[0].aggregate_version, left[0].position),
        (DELETED, 5, appended.position)
    );
    assert_eq!(stores.events.stream_version(id, &ty).await.unwrap(), 5);
    assert_eq!(
        in_feed(stores, id, &ty, after, 1).await,
        [(5, appended.position)],
        "the feed holds the tombstone only"
    );
    if let Some(index) = &stores.request_index {
        assert_eq!(
            index.find_request(&request).await.unwrap(),
            None,
            "the request id its events recorded is gone"
        );
    }
    assert_eq!(
        read(&*stores.events, kept, &ty, 0).await.len(),
        2,
        "other streams stay"
    );
    assert_eq!(lifecycle.archived(id, &ty).await.unwrap(), 0);
}

/// A deletion made again with its tombstone, after an answer that was lost, is acknowledged;
/// with another tombstone it is a conflict.
pub async fn a_deletion_made_again_is_acknowledged(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let (ty, id) = (unique_type("DeletedTwice"), Uuid::new_v4());
    stream(stores, id, &ty, 2, 2).await;
    let last = tombstone(id, &ty, 3);
    let first = lifecycle.delete_stream(id, &ty, 2, &last).await.unwrap();
    let again = lifecycle.delete_stream(id, &ty, 2, &last).await.unwrap();
    assert_eq!(again, first, "the same deletion made again is acknowledged");
    let other = lifecycle.delete_stream(id, &ty, 2, &tombstone(id, &ty, 3)).await;
    assert!(
        other.as_ref().is_err_and(Error::is_conflict),
        "another tombstone at the version taken: expected a conflict, got {other:?}"
    );
    assert_eq!(read(&*stores.events, id, &ty, 0).await.len(), 1);
}

/// A deletion expecting a version the stream has left is a conflict, and removes nothing.
pub async fn a_deletion_of_a_stream_that_moved_conflicts(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let (ty, id) = (unique_type("Moved"), Uuid::new_v4());
    stream(stores, id, &ty, 3, 3).await;
    let outcome = lifecycle.delete_stream(id, &ty, 2, &tombstone(id, &ty, 3)).await;
    match outcome {
        Err(Error::Conflict { expected, actual, .. }) => assert_eq!((expected, actual), (2, 3)),
        other => panic!("deleting a stream that moved on: expected a conflict, got {other:?}"),
    }
    assert_eq!(
        read(&*stores.events, id, &ty, 0).await.len(),
        3,
        "nothing was removed"
    );
}

/// Archived events read in their stream exactly as before (whole, from a version, in a load,
/// at their positions) and leave the feed; the stream's version stays and appends go on.
pub async fn archived_events_read_in_their_stream_and_leave_the_feed(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let (ty, id) = (unique_type("Archived"), Uuid::new_v4());
    let after = stream(stores, id, &ty, 5, 2).await;
    let before = read(&*stores.events, id, &ty, 0).await;
    assert_eq!(lifecycle.archive_stream(id, &ty, 4).await.unwrap(), 3);
    assert_eq!(lifecycle.archived(id, &ty).await.unwrap(), 3);
    assert_eq!(
        read(&*stores.events, id, &ty, 0).await,
        before,
        "the stream reads whole"
    );
    assert_eq!(
        read(&*stores.events, id, &ty, 1).await,
        before[1..],
        "and from a version"
    );
    let loaded: Vec<StoredEvent> = stores.events.load_stream(id, &ty, 0).try_collect().await.unwrap();
    let ids = |events: &[StoredEvent]| -> Vec<(u64, Uuid)> {
        events.iter().map(|e| (e.aggregate_version, e.event_id)).collect()
    };
    assert_eq!(ids(&loaded), ids(&before), "a load reads them too");
    assert_eq!(
        stores.events.position_of(id, &ty, 2).await.unwrap(),
        Some(before[1].position),
        "an archived event keeps its position"
    );
    assert_eq!(
        in_feed(stores, id, &ty, after, 2).await,
        [(4, before[3].position), (5, before[4].position)],
        "the feed holds the live events only"
    );
    assert_eq!(stores.events.stream_version(id, &ty).await.unwrap(), 5);
    append(&*stores.events, id, &ty, 5, &events(id, &ty, 5, 1)).await;
    assert_eq!(
        lifecycle.archive_stream(id, &ty, 4).await.unwrap(),
        0,
        "none left to move"
    );
    assert_eq!(lifecycle.archive_stream(id, &ty, 6).await.unwrap(), 2);
    assert_eq!(read(&*stores.events, id, &ty, 0).await.len(), 6);
}

/// An archive never moves a stream's last event: a bound past its version is
/// `InvalidInput`, and nothing moves.
pub async fn an_archive_keeps_the_last_event_live(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let (ty, id) = (unique_type("Bounded"), Uuid::new_v4());
    stream(stores, id, &ty, 3, 3).await;
    let refused = lifecycle.archive_stream(id, &ty, 4).await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "archiving past the stream's version: expected InvalidInput, got {refused:?}"
    );
    assert_eq!(lifecycle.archived(id, &ty).await.unwrap(), 0, "nothing moved");
    assert_eq!(lifecycle.archive_stream(id, &ty, 3).await.unwrap(), 2);
    let never = Uuid::new_v4();
    assert!(
        lifecycle.archive_stream(never, &ty, 1).await.is_err(),
        "a stream without events"
    );
}

/// A restore moves the archived events back at their positions: the feed holds them again,
/// in order, and the archive holds none of the stream's.
pub async fn a_restore_puts_archived_events_back_at_their_positions(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let (ty, id) = (unique_type("Restored"), Uuid::new_v4());
    let after = stream(stores, id, &ty, 4, 1).await;
    let whole = in_feed(stores, id, &ty, after, 4).await;
    assert_eq!(lifecycle.archive_stream(id, &ty, 4).await.unwrap(), 3);
    assert_eq!(lifecycle.restore_stream(id, &ty).await.unwrap(), 3);
    assert_eq!(
        lifecycle.restore_stream(id, &ty).await.unwrap(),
        0,
        "nothing left to restore"
    );
    assert_eq!(lifecycle.archived(id, &ty).await.unwrap(), 0);
    assert_eq!(
        in_feed(stores, id, &ty, after, 4).await,
        whole,
        "back in the feed, where they were"
    );
    assert_eq!(read(&*stores.events, id, &ty, 0).await.len(), 4);
}

/// A deletion racing a restore of the same stream leaves the tombstone alone, whichever
/// commits first: no archived event comes back beside it.
pub async fn a_deletion_racing_a_restore_leaves_the_tombstone_alone(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let ty = unique_type("Raced");
    for _ in 0..10 {
        let id = Uuid::new_v4();
        stream(stores, id, &ty, 6, 3).await;
        assert_eq!(lifecycle.archive_stream(id, &ty, 6).await.unwrap(), 5);
        let last = tombstone(id, &ty, 7);
        let (restored, deleted) = futures_util::future::join(
            lifecycle.restore_stream(id, &ty),
            lifecycle.delete_stream(id, &ty, 6, &last),
        )
        .await;
        restored.unwrap();
        deleted.unwrap();
        let left = read(&*stores.events, id, &ty, 0).await;
        assert_eq!(
            left.iter().map(|e| e.aggregate_version).collect::<Vec<_>>(),
            [7],
            "the stream reads as its tombstone alone"
        );
        assert_eq!(lifecycle.archived(id, &ty).await.unwrap(), 0);
    }
}

/// An event id stored again after its event was archived (the live table's key does not see
/// the archive) makes the stream's restore `InvalidInput`, and nothing moves; a store that
/// refuses the append is right too.
pub async fn a_restore_refuses_an_event_id_stored_again(stores: &Stores) {
    let Some(lifecycle) = lifecycle(stores) else {
        return;
    };
    let (ty, id) = (unique_type("Reused"), Uuid::new_v4());
    stream(stores, id, &ty, 3, 3).await;
    let archived = read(&*stores.events, id, &ty, 0).await;
    assert_eq!(lifecycle.archive_stream(id, &ty, 3).await.unwrap(), 2);
    // In the same stream, so in the same database of a store of several.
    let mut again = events(id, &ty, 3, 1);
    again[0].event_id = archived[0].event_id;
    if stores.events.append(id, &ty, 3, &again).await.is_err() {
        return;
    }
    let before = read(&*stores.events, id, &ty, 1).await;
    let refused = lifecycle.restore_stream(id, &ty).await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "restoring an event whose id was stored again: expected InvalidInput, got {refused:?}"
    );
    assert_eq!(lifecycle.archived(id, &ty).await.unwrap(), 2, "nothing moved");
    assert_eq!(
        read(&*stores.events, id, &ty, 1).await,
        before,
        "the stream reads as before"
    );
}
