//! The sharded event store: every call on one stream goes to the shard that holds the
//! stream's slice; the feed is read per range of the map, from the range's shard.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use futures_util::stream;
use uuid::Uuid;

use super::map::ShardMap;
use crate::abilities::{RequestIndex, SliceFeed, StreamListing};
use crate::backend::Stores;
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, EventStore, EventStream, FeedHead};
use crate::lifecycle::StreamLifecycle;
use crate::multi_stream::{MultiStreamAppend, StreamBatches};
use crate::request::{Fingerprint, RequestId, RequestRecord};
use crate::slice::{SliceCount, SliceParts, SliceRange};

/// An event store split by slice over the event stores of several shards: see
/// [`crate::backend::sharded`]. Cheap to clone; clones share the shards.
#[derive(Clone)]
pub struct ShardedEventStore {
    map: Arc<ShardMap>,
    shards: Arc<[Stores]>,
}

impl std::fmt::Debug for ShardedEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedEventStore")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl ShardedEventStore {
    /// The store over `shards`, which `map` gives their slices to; the caller has checked
    /// that each shard has a feed by slice of the map's number of slices.
    pub(super) fn new(map: Arc<ShardMap>, shards: Arc<[Stores]>) -> Self {
        ShardedEventStore { map, shards }
    }

    /// The stores of the shard that holds the stream.
    fn shard(&self, aggregate_type: &str, aggregate_id: Uuid) -> &Stores {
        &self.shards[self.map.shard_of(aggregate_type, aggregate_id)]
    }

    /// The one shard's stores, if the store has one shard: then it has one feed.
    fn only_shard(&self) -> Option<&Stores> {
        match &*self.shards {
            [only] => Some(only),
            _ => None,
        }
    }

    fn no_single_feed(&self) -> Error {
        Error::InvalidInput(format!(
            "a sharded store of {} has no single feed: read each range of slices from its \
             shard (the feed by slice, a consumer group), or each shard's own feed",
            self.map.parts()
        ))
    }

    /// An ability every shard has (the builder hands the sharded one out only then).
    fn ability<T: ?Sized>(stores: &Stores, ability: &Option<Arc<T>>, name: &str) -> Result<Arc<T>> {
        ability.clone().ok_or_else(|| {
            Error::InvalidConfiguration(format!(
                "a shard's {} stores have no {name}",
                stores.backend_name()
            ))
        })
    }

    /// The feed by slice of the shard that holds `range`, if one holds it within one range of
    /// the map.
    fn feed_of(&self, range: SliceRange) -> Result<&Arc<dyn SliceFeed>> {
        self.map
            .shard_of_range(range)
            .and_then(|shard| self.shards[shard].slice_feed.as_ref())
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{range} are no range within one feed of a sharded store of {}",
                    self.map
                ))
            })
    }

    fn lifecycle(&self, aggregate_type: &str, aggregate_id: Uuid) -> Result<Arc<dyn StreamLifecycle>> {
        let stores = self.shard(aggregate_type, aggregate_id);
        Self::ability(stores, &stores.stream_lifecycle, "stream lifecycle")
    }

    fn request_index(&self, stores: &Stores) -> Result<Arc<dyn RequestIndex>> {
        Self::ability(stores, &stores.request_index, "index of request ids")
    }
}

/// The first error of `results`, else their values.
fn all<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl EventStore for ShardedEventStore {
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        self.shard(aggregate_type, aggregate_id)
            .events
            .append(aggregate_id, aggregate_type, expected_version, events)
            .await
    }

    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        self.shard(aggregate_type, aggregate_id).events.read_stream(
            aggregate_id,
            aggregate_type,
            after_version,
        )
    }

    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        self.shard(aggregate_type, aggregate_id)
            .events
            .stream_version(aggregate_id, aggregate_type)
            .await
    }

    /// The feed of the one shard, if the store has one; otherwise one
    /// [`Error::InvalidInput`]: there is no order across shards.
    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        match self.only_shard() {
            Some(only) => only.events.read_all(after_position),
            None => Box::pin(stream::iter([Err(self.no_single_feed())])),
        }
    }

    /// The head of the one shard's feed, if the store has one; otherwise
    /// [`Error::InvalidInput`]: there is no order across shards.
    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        match self.only_shard() {
            Some(only) => only.events.head(after_position).await,
            None => Err(self.no_single_feed()),
        }
    }

    fn load_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        self.shard(aggregate_type, aggregate_id).events.load_stream(
            aggregate_id,
            aggregate_type,
            after_version,
        )
    }

    async fn position_of(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        version: u64,
    ) -> Result<Option<u64>> {
        self.shard(aggregate_type, aggregate_id)
            .events
            .position_of(aggregate_id, aggregate_type, version)
            .await
    }
}

#[async_trait]
impl SliceFeed for ShardedEventStore {
    async fn slice_count(&self) -> Result<SliceCount> {
        Ok(self.map.slice_count())
    }

    async fn parts(&self) -> Result<SliceParts> {
        Ok(self.map.parts().clone())
    }

    fn read_slices(&self, range: SliceRange, after_position: u64) -> EventStream<'_> {
        match self.feed_of(range) {
            Ok(feed) => feed.read_slices(range, after_position),
            Err(e) => Box::pin(stream::iter([Err(e)])),
        }
    }

    async fn feed_head(&self, range: SliceRange, after_position: u64) -> Result<FeedHead> {
        self.feed_of(range)?.feed_head(range, after_position).await
    }
}

/// Lists every shard's streams: all of them, or the first error.
#[async_trait]
impl StreamListing for ShardedEventStore {
    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>> {
        let lists = join_all(self.shards.iter().map(|stores| async move {
            let listing = Self::ability(stores, &stores.stream_listing, "listing of streams")?;
            listing.stream_versions(aggregate_type).await
        }))
        .await;
        Ok(all(lists)?.into_iter().flatten().collect())
    }
}

/// A stream is deleted, archived and restored on the shard that holds it.
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl StreamLifecycle for ShardedEventStore {
    async fn delete_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        tombstone: &EventEnvelope,
    ) -> Result<Appended> {
        self.lifecycle(aggregate_type, aggregate_id)?
            .delete_stream(aggregate_id, aggregate_type, expected_version, tombstone)
            .await
    }

    async fn archive_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        before_version: u64,
    ) -> Result<u64> {
        self.lifecycle(aggregate_type, aggregate_id)?
            .archive_stream(aggregate_id, aggregate_type, before_version)
            .await
    }

    async fn restore_stream(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        self.lifecycle(aggregate_type, aggregate_id)?
            .restore_stream(aggregate_id, aggregate_type)
            .await
    }

    async fn archived(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        self.lifecycle(aggregate_type, aggregate_id)?
            .archived(aggregate_id, aggregate_type)
            .await
    }
}

/// Each request is recorded on the shard of the aggregate its command ran on, with its
/// events; a request id is looked up on every shard.
#[async_trait]
impl RequestIndex for ShardedEventStore {
    /// What any shard records for `request_id`: found on one, it is the answer, whatever the
    /// others say; found on none, the first shard that failed fails the lookup (the id may be
    /// recorded there).
    async fn find_request(&self, request_id: &RequestId) -> Result<Option<RequestRecord>> {
        let found = join_all(
            self.shards
                .iter()
                .map(|stores| async move { self.request_index(stores)?.find_request(request_id).await }),
        )
        .await;
        let mut failed = None;
        for result in found {
            match result {
                Ok(Some(record)) => return Ok(Some(record)),
                Ok(None) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    async fn append_with_request(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
        fingerprint: Option<Fingerprint>,
    ) -> Result<Appended> {
        let stores = self.shard(aggregate_type, aggregate_id);
        self.request_index(stores)?
            .append_with_request(
                aggregate_id,
                aggregate_type,
                expected_version,
                events,
                fingerprint,
            )
            .await
    }

    async fn record_refusal(&self, refusal: &RequestRecord) -> Result<RequestRecord> {
        let stores = self.shard(&refusal.aggregate_type, refusal.aggregate_id);
        self.request_index(stores)?.record_refusal(refusal).await
    }

    async fn forget_refusals(
        &self,
        request_id: Option<&RequestId>,
        recorded_before: DateTime<Utc>,
    ) -> Result<u64> {
        let forgotten = join_all(self.shards.iter().map(|stores| async move {
            self.request_index(stores)?
                .forget_refusals(request_id, recorded_before)
                .await
        }))
        .await;
        Ok(all(forgotten)?.into_iter().sum())
    }
}

/// A save over several streams within one shard is that shard's; across shards there is no
/// transaction, and it is refused.
#[async_trait]
impl MultiStreamAppend for ShardedEventStore {
    async fn append_streams(&self, save: StreamBatches<'_>) -> Result<Vec<Appended>> {
        let written = save
            .writes()
            .iter()
            .map(|b| self.map.shard_of(b.aggregate_type, b.aggregate_id));
        let checked = save
            .checks()
            .iter()
            .map(|c| self.map.shard_of(&c.aggregate_type, c.aggregate_id));
        let mut shards: Vec<usize> = written.chain(checked).collect();
        shards.sort_unstable();
        shards.dedup();
        match shards[..] {
            [shard] => {
                let stores = &self.shards[shard];
                Self::ability(stores, &stores.multi_stream, "saves over several streams")?
                    .append_streams(save)
                    .await
            }
            _ => Err(Error::InvalidInput(format!(
                "a save over several streams on a sharded store writes and checks streams of one shard; \
                 these are on shards {shards:?}, and no transaction spans shards"
            ))),
        }
    }
}
