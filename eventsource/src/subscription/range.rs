//! What a subscription reads when it is one range of a consumer group (see
//! [`crate::group`]): the events of its slices, minus those that the ranges it replaced in
//! an earlier layout had handled already.

use std::sync::Arc;

use futures_util::StreamExt;

use crate::abilities::SliceFeed;
use crate::error::Result;
use crate::event::StoredEvent;
use crate::event_store::{EventStore, EventStream, FeedHead};
use crate::slice::{SliceCount, SliceRange};

/// One range of a consumer group, as its subscription reads it.
#[derive(Clone)]
pub(crate) struct RangeScope {
    /// Its slices.
    pub(crate) range: SliceRange,
    /// The feed by slice, if the store has one; without it, the whole feed is read and
    /// filtered.
    pub(crate) feed: Option<Arc<dyn SliceFeed>>,
    /// The number of slices of the feed's store.
    pub(crate) slices: SliceCount,
    /// For each part of the range, the position up to which the ranges of earlier layouts
    /// handled its events: those are skipped.
    pub(crate) done: Vec<(SliceRange, u64)>,
    /// The name under which the next layout of the group would be recorded: once it is, this
    /// range stops.
    pub(crate) successor: String,
}

impl RangeScope {
    /// Where the range starts without a checkpoint of its own: the lowest position its
    /// predecessors reached.
    pub(crate) fn floor(&self) -> u64 {
        self.done.iter().map(|(_, position)| *position).min().unwrap_or(0)
    }

    /// Whether an earlier layout's range handled `event` already.
    pub(crate) fn handled(&self, event: &StoredEvent) -> bool {
        // Past every earlier range's checkpoint (as soon as a new range catches up), the
        // event's slice need not be computed.
        if self.done.iter().all(|(_, position)| event.position > *position) {
            return false;
        }
        let slice = self.slices.slice_of(&event.aggregate_type, event.aggregate_id);
        self.done
            .iter()
            .any(|(part, position)| part.contains(slice) && event.position <= *position)
    }

    /// The head of the feed the range reads, after `position`.
    pub(crate) async fn head(&self, events: &dyn EventStore, position: u64) -> Result<FeedHead> {
        match &self.feed {
            Some(feed) => feed.feed_head(self.range, position).await,
            None => events.head(position).await,
        }
    }

    /// The range's events after `position`, from the feed by slice or from the whole feed.
    pub(crate) fn read<'a>(&'a self, events: &'a dyn EventStore, position: u64) -> EventStream<'a> {
        match &self.feed {
            // Every slice: the feed as it is, with nothing to merge.
            _ if self.range == self.slices.all() => events.read_all(position),
            Some(feed) => feed.read_slices(self.range, position),
            None => {
                let (range, slices) = (self.range, self.slices);
                Box::pin(events.read_all(position).filter(move |event| {
                    let keep = match event {
                        Ok(event) => {
                            range.contains(slices.slice_of(&event.aggregate_type, event.aggregate_id))
                        }
                        Err(_) => true,
                    };
                    std::future::ready(keep)
                }))
            }
        }
    }
}
