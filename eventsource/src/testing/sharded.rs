//! The checks of a [sharded store](crate::backend::sharded), one `async fn` per point: the event store
//! checks that do not read one feed of the whole store, run through the router, and what a
//! sharded store adds: each event in the feed of its shard alone, each range of the map read
//! from its shard, no single feed, saves over several streams within one shard.
//!
//! The global-order checks of the event store suite hold per shard: each shard is an
//! ordinary store, checked by its backend's own suite; [`the_feed_of_each_range_is_its_shards`]
//! checks that the router reads each range from it. The snapshot store suite runs on
//! [`Stores::snapshots`](crate::backend::Stores::snapshots) unchanged. Two event store checks
//! do not hold across shards, as the [sharded store's docs](crate::backend::sharded) say: an event id
//! reused on another shard's stream, and a request id recorded with another shard's
//! aggregate, are not refused.

use futures_util::TryStreamExt;
use uuid::Uuid;

use super::event_store::{self, append, events};
use super::unique_type;
use crate::backend::sharded::ShardMap;
use crate::backend::Stores;
use crate::error::Error;
use crate::event::StoredEvent;
use crate::event_store::Batch;
use crate::multi_stream::StreamBatches;

/// The checks of this suite: the one list that both the test macro and [`run_all`] use.
#[doc(hidden)]
#[macro_export]
macro_rules! __sharded_checks {
    ($callback:ident($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            append_returns_the_new_version
            read_stream_returns_every_field_as_appended
            stale_expected_version_is_a_conflict
            invalid_batches_are_refused_and_write_nothing
            an_append_made_again_is_acknowledged
            read_stream_after_a_version_returns_the_rest
            empty_stream_reads_nothing
            same_id_under_two_types_is_two_streams
            long_stream_reads_back_in_order
            racing_appends_have_one_winner_per_version
            load_stream_replays_what_read_stream_reads
            positions_are_found_by_version
            the_stream_listing_lists_every_stream_of_a_type
            the_snapshot_listing_lists_every_snapshot_of_a_type
            an_append_with_its_request_is_recorded_as_the_stream_holds_it
            the_first_refusal_is_kept_until_forgotten
            an_append_raises_the_signal
            every_event_is_in_the_feed_of_its_shard_alone
            the_feed_of_each_range_is_its_shards
            there_is_no_single_feed_across_shards
            a_save_over_several_streams_stays_within_one_shard
        }
    };
}

crate::__sharded_checks!(__conformance_runner(Stores));

/// Generates one `#[tokio::test]` per check of the sharded store suite, named after it; the
/// argument is an expression that gives a future of a sharded store's
/// [`Stores`](crate::backend::Stores) (of [`sharded::open`](crate::backend::sharded::open)), after
/// `optional:` of an `Option` of them, as in
/// [`event_store_conformance!`](crate::event_store_conformance).
#[macro_export]
macro_rules! sharded_store_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__sharded_checks, sharded, [] $($args)*);
    };
}

/// The event store checks that hold through the router, each on the sharded event store.
macro_rules! through_the_router {
    ($($check:ident)*) => {
        $(
            #[doc = concat!("[`event_store::", stringify!($check), "`] through the sharded event store.")]
            pub async fn $check(stores: &Stores) {
                event_store::$check(&*stores.events).await;
            }
        )*
    };
}

through_the_router! {
    append_returns_the_new_version
    read_stream_returns_every_field_as_appended
    stale_expected_version_is_a_conflict
    invalid_batches_are_refused_and_write_nothing
    an_append_made_again_is_acknowledged
    read_stream_after_a_version_returns_the_rest
    empty_stream_reads_nothing
    same_id_under_two_types_is_two_streams
    long_stream_reads_back_in_order
    racing_appends_have_one_winner_per_version
    load_stream_replays_what_read_stream_reads
    positions_are_found_by_version
}

/// The ability checks of [`super::stores`] that hold through the router.
macro_rules! abilities_through_the_router {
    ($($check:ident)*) => {
        $(
            #[doc = concat!("[`stores::", stringify!($check), "`](super::stores::", stringify!($check), ") on the sharded stores.")]
            pub async fn $check(stores: &Stores) {
                super::stores::$check(stores).await;
            }
        )*
    };
}

abilities_through_the_router! {
    the_stream_listing_lists_every_stream_of_a_type
    the_snapshot_listing_lists_every_snapshot_of_a_type
    an_append_with_its_request_is_recorded_as_the_stream_holds_it
    the_first_refusal_is_kept_until_forgotten
    an_append_raises_the_signal
}

/// The map and the shards' stores, or a panic: the suite runs on a sharded store.
fn sharded(stores: &Stores) -> (&ShardMap, &[Stores]) {
    match (stores.shard_map(), stores.shards()) {
        (Some(map), Some(shards)) => (map, shards),
        _ => panic!("the sharded store suite runs on the stores of sharded::open, not on {stores:?}"),
    }
}

/// Where each shard's feed ends now.
async fn heads(shards: &[Stores]) -> Vec<u64> {
    let mut heads = Vec::new();
    for shard in shards {
        heads.push(shard.events.head(0).await.unwrap().position);
    }
    heads
}

/// The events of type `ty` in `shard`'s own feed after `after`.
async fn own_in_shard(shard: &Stores, after: u64, ty: &str) -> Vec<StoredEvent> {
    let all: Vec<StoredEvent> = shard.events.read_all(after).try_collect().await.unwrap();
    all.into_iter().filter(|e| *e.aggregate_type == *ty).collect()
}

/// Events appended through the sharded store are each in the feed of the shard the map gives
/// their slice to, once, and in no other shard's; each shard's feed holds them in the order
/// they were appended.
pub async fn every_event_is_in_the_feed_of_its_shard_alone(stores: &Stores) {
    let (map, shards) = sharded(stores);
    let starts = heads(shards).await;
    let ty = unique_type("ShardedFeed");
    let streams: Vec<Uuid> = (0..32).map(|_| Uuid::new_v4()).collect();
    for round in 0..2 {
        for id in &streams {
            append(&*stores.events, *id, &ty, round, &events(*id, &ty, round, 1)).await;
        }
    }
    for (index, shard) in shards.iter().enumerate() {
        let own = own_in_shard(shard, starts[index], &ty).await;
        let expected: Vec<(Uuid, u64)> = (1..=2)
            .flat_map(|version| streams.iter().map(move |id| (*id, version)))
            .filter(|(id, _)| map.shard_of(&ty, *id) == index)
            .collect();
        let found: Vec<(Uuid, u64)> = own
            .iter()
            .map(|e| (e.aggregate_id, e.aggregate_version))
            .collect();
        assert_eq!(
            found, expected,
            "shard {index}'s feed holds its streams' events, in order"
        );
        assert!(
            own.windows(2).all(|pair| pair[0].position < pair[1].position),
            "shard {index}'s positions increase"
        );
    }
}

/// The feed by slice of each range of the map yields what the feed of the range's shard holds
/// of the range's slices, in the same order, and resumes after any position it gave.
pub async fn the_feed_of_each_range_is_its_shards(stores: &Stores) {
    use futures_util::StreamExt;

    let (map, shards) = sharded(stores);
    let feed = stores
        .slice_feed
        .as_ref()
        .expect("a sharded store has a feed by slice");
    assert_eq!(
        &feed.parts().await.unwrap(),
        map.parts(),
        "its parts are the map's ranges"
    );
    let starts = heads(shards).await;
    let ty = unique_type("ShardedRanges");
    for id in (0..48).map(|_| Uuid::new_v4()) {
        append(&*stores.events, id, &ty, 0, &events(id, &ty, 0, 2)).await;
    }
    let slices = map.slice_count();
    for (range, index) in map.ranges() {
        let in_range = |e: &StoredEvent| range.contains(slices.slice_of(&e.aggregate_type, e.aggregate_id));
        let expected: Vec<(u64, Uuid)> = own_in_shard(&shards[index], starts[index], &ty)
            .await
            .into_iter()
            .filter(in_range)
            .map(|e| (e.position, e.event_id))
            .collect();
        let read: Vec<StoredEvent> = feed
            .read_slices(range, starts[index])
            .try_collect()
            .await
            .unwrap();
        let read: Vec<(u64, Uuid)> = read
            .into_iter()
            .filter(|e| *e.aggregate_type == *ty)
            .map(|e| (e.position, e.event_id))
            .collect();
        assert_eq!(read, expected, "{range}: the feed of shard {index}");
        let mut resumed = Vec::new();
        let mut after = starts[index];
        loop {
            let mut next = feed.read_slices(range, after);
            let Some(event) = next.next().await.transpose().unwrap() else {
                break;
            };
            after = event.position;
            if *event.aggregate_type == *ty {
                resumed.push((event.position, event.event_id));
            }
        }
        assert_eq!(resumed, expected, "{range}: read one event at a time");
    }
}

/// A store of more than one shard has no single feed: `read_all` and `head` are
/// [`Error::InvalidInput`], and so is a range of slices that crosses a bound of the map.
pub async fn there_is_no_single_feed_across_shards(stores: &Stores) {
    let (map, _) = sharded(stores);
    let parts = map.parts().parts();
    let [first, second, ..] = parts else {
        return;
    };
    let read: crate::error::Result<Vec<StoredEvent>> = stores.events.read_all(0).try_collect().await;
    assert!(matches!(read, Err(Error::InvalidInput(_))), "read_all: {read:?}");
    let head = stores.events.head(0).await;
    assert!(matches!(head, Err(Error::InvalidInput(_))), "head: {head:?}");
    let feed = stores
        .slice_feed
        .as_ref()
        .expect("a sharded store has a feed by slice");
    let across = crate::slice::SliceRange::new(first.last(), second.first()).unwrap();
    let read: crate::error::Result<Vec<StoredEvent>> = feed.read_slices(across, 0).try_collect().await;
    assert!(matches!(read, Err(Error::InvalidInput(_))), "{across}: {read:?}");
}

/// A save over several streams of one shard stores every batch; one over streams of two
/// shards is [`Error::InvalidInput`] and stores nothing.
pub async fn a_save_over_several_streams_stays_within_one_shard(stores: &Stores) {
    let Some(multi) = &stores.multi_stream else {
        return;
    };
    let (map, _) = sharded(stores);
    let ty = unique_type("ShardedSave");
    let first = Uuid::new_v4();
    let on = |shard: usize| loop {
        let id = Uuid::new_v4();
        if map.shard_of(&ty, id) == shard {
            break id;
        }
    };
    let home = map.shard_of(&ty, first);
    let together = on(home);
    let (a, b) = (events(first, &ty, 0, 1), events(together, &ty, 0, 2));
    let batches = [
        Batch {
            aggregate_id: first,
            aggregate_type: &ty,
            expected_version: 0,
            events: &a,
        },
        Batch {
            aggregate_id: together,
            aggregate_type: &ty,
            expected_version: 0,
            events: &b,
        },
    ];
    let saved = multi
        .append_streams(StreamBatches::checked(&batches, &[]).unwrap())
        .await
        .unwrap();
    assert_eq!(saved.iter().map(|s| s.version).collect::<Vec<_>>(), [1, 2]);
    if map.shards() < 2 {
        return;
    }
    let elsewhere = on((home + 1) % map.shards());
    let (c, d) = (events(first, &ty, 1, 1), events(elsewhere, &ty, 0, 1));
    let across = [
        Batch {
            aggregate_id: first,
            aggregate_type: &ty,
            expected_version: 1,
            events: &c,
        },
        Batch {
            aggregate_id: elsewhere,
            aggregate_type: &ty,
            expected_version: 0,
            events: &d,
        },
    ];
    let refused = multi
        .append_streams(StreamBatches::checked(&across, &[]).unwrap())
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "across shards: {refused:?}"
    );
    for (id, version) in [(first, 1), (elsewhere, 0)] {
        assert_eq!(
            stores.events.stream_version(id, &ty).await.unwrap(),
            version,
            "the refused save stored nothing"
        );
    }
}
