//! What only some stores can do, handed out by the backend as values of their own rather than
//! found on the store traits: the append wake-up signal, the listings operators read, the
//! index of request ids, and the feed read by slices. Saves over several streams at once are
//! [`MultiStreamAppend`](crate::multi_stream::MultiStreamAppend), beside the types it takes.
//! Reading and writing events with a snapshot in one statement is
//! [`JointSnapshots`](crate::snapshot::JointSnapshots), beside the snapshots it writes.
//!
//! [`backend::Stores`](crate::backend::Stores) carries the abilities its backend has, and
//! builds repositories and subscriptions that use them. A wrapper or router store has the
//! abilities its builder gives it: none is lost by forgetting to forward a method.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::event::EventEnvelope;
use crate::event_store::{Appended, EventStream, FeedHead};
#[cfg(doc)]
use crate::request::RequestOutcome;
use crate::request::{Fingerprint, RequestId, RequestRecord};
use crate::slice::mask::{SliceMask, GRAIN};
use crate::slice::{SliceCount, SliceParts, SliceRange};
use crate::snapshot::SnapshotVersion;

/// Tells the consumers of a feed that events were appended, and which slices they went to, so
/// that a consumer of a range of slices wakes only for appends to its own. Cheap to clone;
/// clones share it.
#[derive(Clone, Debug)]
pub struct AppendSignal(Arc<tokio::sync::watch::Sender<Raised>>);

/// What an [`AppendSignal`] has been raised for.
struct Raised {
    /// The number of raises so far.
    count: u64,
    /// The last raise that concerned every slice.
    all: u64,
    /// For each slice of the mask's grain (see [`SliceMask`]), the last raise that concerned it.
    grains: Box<[u64; GRAIN]>,
}

impl std::fmt::Debug for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raised")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Raised {
    /// The slices raised for after raise `seen`, and whether every slice was.
    fn since(&self, seen: u64) -> (SliceMask, bool) {
        (
            SliceMask::of_grains(|grain| self.grains[grain] > seen),
            self.all > seen,
        )
    }

    /// Whether a raise after raise `seen` concerned a slice of `mask`.
    fn concerns(&self, mask: &SliceMask, seen: u64) -> bool {
        self.all > seen || mask.grains().any(|grain| self.grains[grain] > seen)
    }
}

impl Default for AppendSignal {
    fn default() -> Self {
        AppendSignal(Arc::new(tokio::sync::watch::Sender::new(Raised {
            count: 0,
            all: 0,
            grains: Box::new([0; GRAIN]),
        })))
    }
}

impl AppendSignal {
    /// A new signal, not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal for every slice: every waiter wakes. For a store that cannot tell
    /// which streams an append went to.
    pub fn raise(&self) {
        self.0.send_modify(|raised| {
            raised.count += 1;
            raised.all = raised.count;
        });
    }

    /// Raises the signal for the slices of `streams` (aggregate type and id): the waiters of
    /// every slice, and of ranges holding one of them, wake.
    pub fn raise_streams<'a>(&self, streams: impl IntoIterator<Item = (&'a str, Uuid)>) {
        self.raise_slices(&SliceMask::of_streams(streams));
    }

    /// Raises the signal for the slices of `mask` (nothing if it is empty).
    pub(crate) fn raise_slices(&self, mask: &SliceMask) {
        if mask.is_empty() {
            return;
        }
        self.0.send_modify(|raised| {
            raised.count += 1;
            for grain in mask.grains() {
                raised.grains[grain] = raised.count;
            }
        });
    }

    /// Raises this signal at each raise of `other`, for the same slices, for as long as both
    /// live: a store made of others (a [sharded store](crate::backend::sharded)) wakes its
    /// consumers at each of theirs. Needs a Tokio runtime, on which it runs a task.
    pub fn follow(&self, other: &AppendSignal) {
        let mut raised = other.0.subscribe();
        let mut seen = raised.borrow_and_update().count;
        let signal = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            while raised.changed().await.is_ok() {
                let Some(signal) = signal.upgrade() else {
                    return;
                };
                let (mask, all) = {
                    let raised = raised.borrow_and_update();
                    let since = raised.since(seen);
                    seen = raised.count;
                    since
                };
                let signal = AppendSignal(signal);
                match all {
                    true => signal.raise(),
                    false => signal.raise_slices(&mask),
                }
            }
        });
    }

    /// A waiter that wakes at each raise from now on.
    pub fn waiter(&self) -> AppendWaiter {
        self.waiter_of(None)
    }

    /// A waiter that wakes at each raise from now on for a slice of `range` (of a store of
    /// `slices` slices), or for every slice. It may also wake for an append to another slice
    /// (see [`crate::slice`]'s grain), never misses one to its own.
    pub fn waiter_for(&self, slices: SliceCount, range: SliceRange) -> AppendWaiter {
        self.waiter_of(Some(SliceMask::of_range(slices, range)))
    }

    fn waiter_of(&self, mask: Option<SliceMask>) -> AppendWaiter {
        let mut receiver = self.0.subscribe();
        let seen = receiver.borrow_and_update().count;
        AppendWaiter { receiver, seen, mask }
    }
}

/// Waits for an [`AppendSignal`].
#[derive(Debug)]
pub struct AppendWaiter {
    receiver: tokio::sync::watch::Receiver<Raised>,
    /// The last raise it has looked at.
    seen: u64,
    /// The slices it waits for; `None`: every slice.
    mask: Option<SliceMask>,
}

impl AppendWaiter {
    /// Returns once the signal was raised for its slices since the last call (at once if it
    /// was meanwhile).
    pub async fn raised(&mut self) {
        loop {
            if self.receiver.changed().await.is_err() {
                // The store is gone: nothing will ever be appended through it again.
                std::future::pending::<()>().await;
            }
            let raised = self.receiver.borrow_and_update();
            let concerned = self
                .mask
                .as_ref()
                .is_none_or(|mask| raised.concerns(mask, self.seen));
            self.seen = raised.count;
            if concerned {
                return;
            }
        }
    }
}

/// Lists the streams an event store holds, for operators (statistics, snapshot warming).
///
/// # Contract
///
/// The list is complete and exact at some moment during the call, in no particular order, and
/// costs what the store holds of the one aggregate type, read from an index: never a read of
/// the feed. Deleted streams (see [`crate::lifecycle`]) are left out. The conformance suite
/// checks it against what the feed shows.
#[async_trait]
pub trait StreamListing: Send + Sync {
    /// Every stream of one aggregate type with its version.
    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>>;
}

/// Lists the snapshots a snapshot store holds, for operators (statistics, snapshot warming
/// and coverage).
///
/// # Contract
///
/// The list is complete and exact at some moment during the call, in no particular order, and
/// costs what the store holds of the one aggregate type. The conformance suite checks it
/// against what the store's reads return.
#[async_trait]
pub trait SnapshotListing: Send + Sync {
    /// Every stored snapshot of one aggregate type: its aggregate, schema version and version.
    async fn snapshot_versions(&self, aggregate_type: &str) -> Result<Vec<SnapshotVersion>>;
}

/// The index of request ids: the first outcome of every command run with one, whatever
/// aggregate it ran on, events and refusals alike (see [`crate::request`]).
///
/// # Contract
///
/// Every backend of this crate keeps it, and the conformance suite checks:
///
/// - **Executed requests are recorded with their events.**
///   [`append_with_request`](Self::append_with_request) appends as
///   [`EventStore::append`](crate::EventStore::append) does (checked, atomic, acknowledged
///   when made again after a lost answer) and, in the same transaction, records the batch's
///   request id as executed at the batch's last version and position, with the fingerprint.
///   If the id is recorded already (by another batch, on any stream, or as a refusal), nothing
///   is stored and the append is [`Error::RequestRecorded`](crate::Error::RequestRecorded):
///   of two commands racing with one id, one stores its events and the other finds its
///   outcome. [`find_request`](Self::find_request) then gives the stream, and the version and
///   position of the batch's last event as the stream holds them. (Events appended with a
///   request id by [`EventStore::append`](crate::EventStore::append) carry it, and record
///   nothing.)
/// - **The first refusal is kept.** [`record_refusal`](Self::record_refusal) records a
///   refusal unless the id is recorded already, and returns what is recorded: the given
///   refusal, or the first outcome.
/// - **Refusals are kept until forgotten.** [`forget_refusals`](Self::forget_refusals)
///   deletes refusals recorded before a time (one id's, or every one); executed requests
///   stay, as their events do. The repository does not use a refusal older than its
///   retention ([`Repository::with_request_retention`](crate::Repository::with_request_retention)).
#[async_trait]
pub trait RequestIndex: Send + Sync {
    /// What is recorded for `request_id`, if anything.
    async fn find_request(&self, request_id: &RequestId) -> Result<Option<RequestRecord>>;

    /// Appends `events`, which all carry one request id, and records that id as executed by
    /// them, with `fingerprint`, in one transaction; see the contract.
    async fn append_with_request(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
        fingerprint: Option<Fingerprint>,
    ) -> Result<Appended>;

    /// Records `refusal` (a record with a [`RequestOutcome::Refused`] outcome) unless its
    /// request id is recorded already; returns what is recorded.
    async fn record_refusal(&self, refusal: &RequestRecord) -> Result<RequestRecord>;

    /// Deletes the refusals recorded before `recorded_before`: of `request_id` only, or every
    /// one when it is `None`; returns how many it deleted.
    async fn forget_refusals(
        &self,
        request_id: Option<&RequestId>,
        recorded_before: DateTime<Utc>,
    ) -> Result<u64>;
}

/// The feed of a range of slices (see [`crate::slice`]): what a consumer that shares a feed
/// with others reads.
///
/// # Contract
///
/// [`slice_count`](Self::slice_count) is the number of slices the store was created with,
/// the same on every call. [`read_slices`](Self::read_slices) yields exactly the events that
/// [`EventStore::read_all`](crate::EventStore::read_all) yields after the same position whose
/// stream's slice ([`SliceCount::slice_of`]) is in the range, in position order,
/// and never skips in the same sense: a reader that asks again after the last position it saw
/// misses nothing; a range beyond the store's slices, or across two of its
/// [`parts`](Self::parts), yields one [`Error::InvalidInput`](crate::Error::InvalidInput).
/// It reads an index of events by slice, so it costs what the range holds,
/// not what the store holds. The conformance suite checks both against `read_all`.
#[async_trait]
pub trait SliceFeed: Send + Sync {
    /// How many slices the store has (see [`crate::slice`]).
    async fn slice_count(&self) -> Result<SliceCount>;

    /// The parts of the slices whose events one feed orders: a range read here lies within
    /// one of them, since positions compare only within one feed. A store with one feed has
    /// one part, every slice ([`SliceParts::whole`]); a [sharded store](crate::backend::sharded) has a
    /// part for each range of its map.
    async fn parts(&self) -> Result<SliceParts>;

    /// The events of the slices of `range` with a position greater than `after_position`.
    fn read_slices(&self, range: SliceRange, after_position: u64) -> EventStream<'_>;

    /// The head of the feed that holds `range`, as [`EventStore::head`](crate::EventStore::head)
    /// of that feed gives it after `after_position` (of every slice of the feed, not only the
    /// range's): where a consumer of the range stands against what is stored. A store with one
    /// feed gives its head; a range across two [`parts`](Self::parts) is
    /// [`Error::InvalidInput`](crate::Error::InvalidInput).
    async fn feed_head(&self, range: SliceRange, after_position: u64) -> Result<FeedHead>;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A stream of `slice` among `slices`, found by trying ids.
    fn stream_in(slices: SliceCount, slice: u32) -> Uuid {
        loop {
            let id = Uuid::new_v4();
            if slices.slice_of("Order", id) == slice {
                return id;
            }
        }
    }

    async fn wakes(waiter: &mut AppendWaiter) -> bool {
        tokio::time::timeout(Duration::from_millis(50), waiter.raised())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_range_waiter_wakes_for_its_own_slices_only() {
        let slices = SliceCount::new(8).unwrap();
        let (low, high) = (SliceRange::new(0, 3).unwrap(), SliceRange::new(4, 7).unwrap());
        let signal = AppendSignal::new();
        let (mut any, mut lows, mut highs) = (
            signal.waiter(),
            signal.waiter_for(slices, low),
            signal.waiter_for(slices, high),
        );
        signal.raise_streams([("Order", stream_in(slices, 5))]);
        assert!(wakes(&mut any).await && wakes(&mut highs).await);
        assert!(
            !wakes(&mut lows).await,
            "an append to slice 5 leaves the range 0-3 asleep"
        );
        // Raises for other slices between two waits are passed over, not kept.
        signal.raise_streams([("Order", stream_in(slices, 6))]);
        signal.raise_streams([("Order", stream_in(slices, 2))]);
        assert!(wakes(&mut lows).await && wakes(&mut highs).await);
        assert!(!wakes(&mut lows).await && !wakes(&mut highs).await);
        signal.raise();
        assert!(wakes(&mut lows).await && wakes(&mut highs).await && wakes(&mut any).await);
        signal.raise_streams([]);
        assert!(!wakes(&mut any).await, "a raise for no stream wakes nobody");
    }

    #[tokio::test]
    async fn a_following_signal_raises_for_the_same_slices() {
        let slices = SliceCount::DEFAULT;
        let (shard, router) = (AppendSignal::new(), AppendSignal::new());
        router.follow(&shard);
        let (mut first, mut last) = (
            router.waiter_for(slices, SliceRange::new(0, 511).unwrap()),
            router.waiter_for(slices, SliceRange::new(512, 1023).unwrap()),
        );
        shard.raise_streams([("Order", stream_in(slices, 700))]);
        assert!(wakes(&mut last).await);
        assert!(!wakes(&mut first).await);
        shard.raise();
        assert!(wakes(&mut first).await && wakes(&mut last).await);
    }
}
