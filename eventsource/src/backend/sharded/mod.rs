//! Past one database: the event store split by [slice](crate::slice) over several stores,
//! each an ordinary store of any backend (a PostgreSQL database per shard, typically).
//!
//! A [`ShardMap`] gives each range of slices to a shard; [`open`] puts the shards' stores
//! together into one [`Stores`] whose repositories and consumers an application uses as it
//! would one database's:
//!
//! - **One aggregate, one shard.** Appends, stream reads, loads, snapshots and request ids of
//!   an aggregate go to the shard that holds its slice. Commands, the command loop,
//!   snapshots and optimistic concurrency are unchanged.
//! - **A feed per shard, no global order.** Each shard keeps its own gap-free feed; there is
//!   no order between events of different shards, and positions of two shards do not
//!   compare. [`EventStore::read_all`](crate::EventStore::read_all) of a store of more than
//!   one shard is [`Error::InvalidInput`]. Consumers read the feed by slice
//!   ([`SliceFeed`](crate::SliceFeed)): its [`parts`](crate::SliceFeed::parts) are the map's
//!   ranges, and a [consumer group](crate::group) cuts its ranges at their bounds, so that
//!   each range reads one shard's feed and keeps a checkpoint in that shard's positions. A
//!   subscription or projection run as a single consumer (`run`) is such a group of one
//!   range with one worker in the process; run it as a group (`group(n)`) to spread it over
//!   workers; a projection's catch-up and rebuild run the same way, until each range reaches
//!   where its feed ended when they started. Consumers start from the beginning of the feed.
//!   What needs one order of every event is [`Error::InvalidConfiguration`]: a plain
//!   subscription's catch-up, a single consumer's lag, a group that starts at the end or
//!   after a position, and waiting for a position.
//! - **Consumers' state on shard 0.** Checkpoints, leases and dead letters live in the
//!   subscription store of shard 0 (the first stores given to [`open`]; in a map file, the
//!   first URL), as they would in one database.
//! - **One shard down is one shard down.** A call that needs a shard that cannot be reached
//!   fails as that shard's store fails (a transient [`Error::Store`]); the other shards go on
//!   serving commands, loads and the consumer ranges of their slices. Two exceptions: a
//!   lookup of a request id asks every shard (the id may have been recorded with another
//!   aggregate), so a command carrying one fails while any shard is down unless a shard that
//!   answers has the id; and consumers stop while shard 0, which keeps their state, is down.
//! - **What spans shards.** A save over several streams is atomic within one shard and
//!   refused across shards ([`Error::InvalidInput`]). A request id is recorded on the shard
//!   of the aggregate it ran on: two commands that race with one id on aggregates of two
//!   shards may both run; one sent after the other finished finds its outcome.
//!
//! Resharding is offline: [`copy`] copies every event of a store into another (new databases
//! under a new map), and [`compare`] checks the copy stream by stream (the admin command
//! line's `copy --to URL` runs both); the sharding guide has the procedure around them.
//!
//! Each shard must have been created with the map's number of slices, and hold no event of
//! a slice the map gives to another shard: [`open`] checks both, and
//! [`Stores::migrate`](crate::backend::Stores::migrate) checks the shards it migrated. The map file read by
//! [`ShardMap::parse`] is what `backend::open("shards:PATH")` and the admin command line's
//! `--url shards:PATH` take.

mod events;
mod map;
mod reshard;
mod snapshots;

pub use events::ShardedEventStore;
pub use map::ShardMap;
pub use reshard::{compare, copy, Comparison, Copied, StreamDifference};
pub use snapshots::ShardedSnapshotStore;

use std::sync::Arc;

use futures_util::StreamExt;

use crate::abilities::AppendSignal;
use crate::backend::Stores;
use crate::error::{Error, Result};

/// The stores of a sharded store over `shards`, shard `i` holding the ranges `map` gives to
/// index `i`: see the [module docs](self). Each shard is an ordinary [`Stores`] (of
/// [`backend::open`](crate::backend::open), or put together by hand) with a
/// [feed by slice](crate::SliceFeed); the sharded stores have every ability all the shards
/// have but the joint statements, and the subscription store of shard 0.
///
/// # Errors
///
/// [`Error::InvalidConfiguration`] if the map names another number of shards, a shard has no
/// feed by slice, was created with another number of slices than the map's, or holds events
/// of a slice the map gives to another shard (the map is not the one its events were written
/// with); a shard's [`Error::Store`] if one cannot be read.
///
/// # Cancel safety
///
/// Reads only: dropping the future leaves nothing behind.
pub async fn open(map: ShardMap, shards: Vec<Stores>) -> Result<Stores> {
    if shards.len() != map.shards() {
        return Err(Error::InvalidConfiguration(format!(
            "the shard map has {} shards, and {} stores were given",
            map.shards(),
            shards.len()
        )));
    }
    check_shards(&map, &shards).await?;
    let (map, shards) = (Arc::new(map), Arc::<[Stores]>::from(shards));
    let events = ShardedEventStore::new(map.clone(), shards.clone());
    let snapshots = ShardedSnapshotStore::new(map.clone(), shards.clone());
    let every = |has: fn(&Stores) -> bool| shards.iter().all(has);
    let mut stores = Stores::of_shards(events.clone(), snapshots.clone(), map, shards.clone())
        .with_slice_feed(Arc::new(events.clone()));
    if every(|s| s.stream_listing.is_some()) {
        stores = stores.with_stream_listing(Arc::new(events.clone()));
    }
    if every(|s| s.request_index.is_some()) {
        stores = stores.with_request_index(Arc::new(events.clone()));
    }
    if every(|s| s.stream_lifecycle.is_some()) {
        stores = stores.with_stream_lifecycle(Arc::new(events.clone()));
    }
    if every(|s| s.multi_stream.is_some()) {
        stores = stores.with_multi_stream(Arc::new(events));
    }
    if every(|s| s.snapshot_listing.is_some()) {
        stores = stores.with_snapshot_listing(Arc::new(snapshots));
    }
    if every(|s| s.append_signal.is_some()) {
        let signal = AppendSignal::new();
        for shard in shards.iter() {
            signal.follow(shard.append_signal.as_ref().expect("every shard has one"));
        }
        stores = stores.with_append_signal(signal);
    }
    Ok(stores)
}

/// Opens the stores of a shard map file (see [`ShardMap::parse`]): each shard's URL with
/// [`backend::open`](crate::backend::open), then [`open`].
///
/// # Errors
///
/// As [`ShardMap::parse`], [`backend::open`](crate::backend::open) for each URL, and
/// [`open`]; a file that cannot be read is [`Error::InvalidConfiguration`].
///
/// # Cancel safety
///
/// Dropped, nothing is left open: the stores opened so far are closed.
pub async fn open_file(path: &str) -> Result<Stores> {
    let owned = path.to_owned();
    let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(owned)).await;
    let text = read
        .map_err(std::io::Error::other)
        .and_then(|read| read)
        .map_err(|e| Error::InvalidConfiguration(format!("cannot read the shard map file {path:?}: {e}")))?;
    let (map, urls) = ShardMap::parse(&text)?;
    let mut shards = Vec::with_capacity(urls.len());
    for url in &urls {
        if url.starts_with("shards:") {
            return Err(Error::InvalidConfiguration(format!(
                "the shard map {path:?} names another shard map as a shard; a shard is one store"
            )));
        }
        shards.push(Box::pin(crate::backend::open(url)).await?);
    }
    open(map, shards).await
}

/// Checks that each shard can serve the ranges `map` gives it: see [`check_shard`].
///
/// A shard that cannot be reached now (a transient failure) is not checked, with a warning:
/// the others can serve while it is down, and its own calls fail until it is back.
pub(crate) async fn check_shards(map: &ShardMap, shards: &[Stores]) -> Result<()> {
    for (index, stores) in shards.iter().enumerate() {
        match check_shard(map, index, stores).await {
            Err(e) if e.is_transient() => {
                tracing::warn!(shard = index, error = %e, "cannot check a shard against the shard map now; it is used unchecked");
            }
            checked => checked?,
        }
    }
    Ok(())
}

/// Checks that shard `index` can serve the ranges `map` gives it: a feed by slice of the
/// map's number of slices, and no event of another shard's ranges. A shard whose tables are
/// not migrated yet (PostgreSQL before [`Stores::migrate`]) holds nothing to check: it is
/// checked once migrated.
async fn check_shard(map: &ShardMap, index: usize, stores: &Stores) -> Result<()> {
    if let Some((applied, latest)) = stores.layout_version().await? {
        if applied < latest {
            return Ok(());
        }
    }
    let Some(feed) = &stores.slice_feed else {
        return Err(Error::InvalidConfiguration(format!(
            "shard {index} ({} stores) has no feed by slice: a shard must be read by slice",
            stores.backend_name()
        )));
    };
    let count = feed.slice_count().await?;
    if count != map.slice_count() {
        return Err(Error::InvalidConfiguration(format!(
            "shard {index} was created with {count}, and the shard map has {}",
            map.slice_count()
        )));
    }
    for (range, holder) in map.ranges().filter(|(_, holder)| *holder != index) {
        if let Some(event) = feed.read_slices(range, 0).next().await {
            let event = event?;
            return Err(Error::InvalidConfiguration(format!(
                "shard {index} holds events of {range} (of {} {}), which the shard map gives to \
                 shard {holder}: the map is not the one these shards were written with",
                event.aggregate_type, event.aggregate_id
            )));
        }
    }
    Ok(())
}
