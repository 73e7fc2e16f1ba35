//! Consumer groups: one subscription or projection spread over many workers, in one process
//! or many, each aggregate's events still handled in order.
//!
//! A [`ConsumerGroup`] splits the store's [slices](crate::slice) (1,024 unless the store was
//! created with another number) into a number of ranges (its
//! *layout*), and each range is a subscription of its own: its own lease, so that one worker
//! at a time runs it, and its own checkpoint (for a projection, committed in the read model's
//! transaction, so each range is exactly once). Every stream is in one slice, so each
//! aggregate's events are handled by one range, in version order, never in two batches at
//! once; the [delivery guard](crate::subscription::Disorder) checks it on every batch.
//!
//! - **Workers.** [`ConsumerGroup::run`] starts a number of workers in this process; start it
//!   in as many processes as needed. Each worker holds a slot (a lease) while it lives, and
//!   takes its fair share of the ranges: an equal part each, the rest one each to the lowest
//!   slots. A worker that joins gets its share within about two thirds of a lease (the others
//!   let ranges go at their next look); the ranges of a worker that stops are free at once,
//!   those of one that died or froze once their leases run out, about one lease. A worker runs
//!   the ranges it holds at the same time, each with its own handler.
//! - **From one consumer to a group.** A subscription that ran as a single consumer keeps its
//!   checkpoint: the group's first ranges start from it. The single consumer must stop first:
//!   the ranges wait for its lease, and a single consumer started under the name of a group
//!   refuses to run ([`Error::InvalidConfiguration`]).
//! - **Rescaling.** [`ConsumerGroup::rescale`] (or `admin projections rescale`) records a new layout
//!   with another number of ranges, under traffic. The ranges of the old layout each finish
//!   their batch and stop within about a third of their lease; a range of the new layout
//!   starts once every old range it overlaps has let go of its lease, from the lowest
//!   checkpoint among them, and skips, slice by slice, what each of them had handled already.
//!   No event is handled twice or skipped. It costs a pause of about a third of a lease, and
//!   a new range rereads what lies between the lowest and the highest checkpoint of the
//!   ranges it replaces (skipping those events is cheap, but they are read).
//! - **Status.** [`status`] shows each range's owner, checkpoint and lag; the admin command
//!   line's `projections status NAME` prints it, and metrics and logs name each range as
//!   `NAME#LAYOUT:FIRST-LAST`.
//! - **Reset and rebuild.** [`SubscriptionStore::reset`] (and a read model's reset, in the
//!   transaction that empties it) forgets the checkpoints of the group's ranges and its
//!   layouts with the name's own: stop the workers first. The name then runs as one that
//!   never ran, as a single consumer (a [`Projection::rebuild`](crate::projection::Projection::rebuild)
//!   catches up that way) or as a group of a new first layout, which starts where the single
//!   consumer stopped.
//!
//! The group keeps its state in the subscription store under names derived from its own (see
//! [`MAX_GROUP_NAME_LEN`]); it needs nothing from a store beyond the subscription store
//! contract, so it runs on every backend. Where the event store can read the
//! [feed by slice](crate::SliceFeed) (every backend of this crate can, wired by
//! [`Stores::subscription`](crate::backend::Stores::subscription)), each range reads only its
//! own slices; otherwise each reads the whole feed and keeps its own.
//!
//! **Wake-ups.** A store's append signal says which slices an append went to (across
//! processes too, in the PostgreSQL notification), so a range that reads by slice wakes only
//! for appends to its own slices, reads once, and waits again once the read reached the end.
//! A range with nothing of its own to read moves its checkpoint past the others' events at
//! each poll interval; [`ConsumerGroup::wait_for`] does not wait for that, since it looks at
//! the feed of a range that stands still. Eight ranges therefore cost about one read per
//! append, not eight.
//!
//! How many ranges: a range is the unit of parallelism, so at least as many as the workers
//! you mean to run, and a few times more lets workers join and leave in small steps. Each
//! range holds a lease, renewed every third of it, and reads the feed on its own, so
//! thousands of ranges cost more than they give.
//!
//! ```
//! # use eventsourcing_kit::prelude::*;
//! # use eventsourcing_kit::backend::Stores;
//! # use std::sync::{Arc, Mutex};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
//! let stores = Stores::in_memory();
//! # let repo = stores.repository::<Account>();
//! # for _ in 0..20 { repo.command(Uuid::new_v4()).run(|a| { a.record(Opened {}); Ok::<_, Error>(()) }).await.unwrap(); }
//! let group = stores.subscription("welcome-mails")?.for_aggregate::<Account>().group(4)?;
//! let sent = Arc::new(Mutex::new(0));
//! // Two workers in this process; each range it holds gets its own handler.
//! let handlers = |_range| {
//!     let sent = sent.clone();
//!     move |batch: &[StoredEvent]| {
//!         *sent.lock().unwrap() += batch.len();
//!         Ok(())
//!     }
//! };
//! let until_done = async {
//!     while *sent.lock().unwrap() < 20 {
//!         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!     }
//! };
//! group.run(2, handlers, until_done).await?;
//! assert_eq!(*sent.lock().unwrap(), 20);
//! # Ok(()) }
//! # #[event(aggregate = "Account")] pub struct Opened {}
//! # #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
//! # #[aggregate(name = "Account", events(Opened))]
//! # pub struct Account {}
//! # impl Apply<Opened> for Account { fn apply(&mut self, _: &Opened) {} }
//! ```

mod state;
pub(crate) mod worker;

pub use crate::subscription::names::MAX_GROUP_NAME_LEN;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::future::{self, FutureExt};
use futures_util::StreamExt;
use uuid::Uuid;

use crate::abilities::SliceFeed;
use crate::deadline::sleep;
use crate::error::{Error, Result};
use crate::event_store::EventStore;
use crate::slice::{SliceCount, SliceParts, SliceRange};
use crate::subscription::names::{self, validate_group_name};
use crate::subscription::{Handler, Subscription, SubscriptionStore};
use state::GroupState;
use worker::{RunRange, Worker};

/// How often [`ConsumerGroup::wait_for`] looks at the checkpoints.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// A lease taken for the moment it takes to record a layout.
const RECORD_LEASE: Duration = Duration::from_secs(10);

/// A subscription or projection run as a consumer group; see the [module docs](self).
#[derive(Debug)]
pub struct ConsumerGroup<C> {
    pub(crate) consumer: C,
    /// The subscription that reads the consumer's feed: the template of its ranges.
    template: fn(&C) -> &Subscription,
    /// The number of ranges of the first layout, if the group has none yet.
    pub(crate) ranges: u32,
}

impl<C> ConsumerGroup<C> {
    /// `consumer`, whose feed `template` reads, as a consumer group of `ranges` ranges; see
    /// [`Subscription::group`].
    pub(crate) fn of(consumer: C, template: fn(&C) -> &Subscription, ranges: u32) -> Result<Self> {
        validate_group_name(template(&consumer).name())?;
        check_count(ranges, SliceCount::MAX)?;
        Ok(ConsumerGroup {
            consumer,
            template,
            ranges,
        })
    }

    /// The subscription that reads the group's feed.
    pub(crate) fn template(&self) -> &Subscription {
        (self.template)(&self.consumer)
    }

    /// See [`status`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn status(&self) -> Result<Option<GroupStatus>> {
        let template = self.template();
        let slices = template.slices().await?;
        let feed = template.options().slice_feed.as_deref();
        status(
            &**template.events(),
            feed,
            &**template.store(),
            &slices,
            template.name(),
        )
        .await
    }

    /// Records a new layout of `ranges` ranges; see the [module docs](self) and
    /// [`rescale`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] for a number of
    /// ranges the store's slices cannot split into;
    /// [`Error::InvalidInput`] while a single consumer of the name
    /// holds its lease; [`Error::Store`] if the store failed (transient
    /// for a lost connection or a timeout: see
    /// [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// The new layout is recorded in one write, or not at all.
    pub async fn rescale(&self, ranges: u32) -> Result<u32> {
        rescale(self.template(), ranges).await
    }

    /// Waits until every range of the current layout has handled `position` (a save's
    /// position), at most `timeout`; whether it has. For a projection, the read model then
    /// shows the caller's own change.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient));
    /// [`Error::InvalidConfiguration`] on a [sharded store](crate::backend::sharded), whose positions
    /// compare only within one shard.
    ///
    /// # Cancel safety
    ///
    /// Waiting only.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<bool> {
        let template = self.template();
        template.one_feed("wait for a position of the whole feed").await?;
        let slices = template.slices().await?;
        let feed = template.options().slice_feed.as_deref();
        wait_for(
            &**template.store(),
            &slices,
            feed,
            template.name(),
            position,
            timeout,
        )
        .await
    }
}

impl Subscription {
    /// This subscription as a [consumer group](crate::group) of `ranges` ranges: run by any
    /// number of workers, in this process and others, each aggregate's events still handled
    /// in order. `ranges` is the number of ranges of the group's first layout; a group that
    /// has a layout keeps it until [rescaled](ConsumerGroup::rescale).
    ///
    /// A name longer than [`MAX_GROUP_NAME_LEN`] bytes or
    /// holding `#` is [`Error::InvalidInput`]; zero ranges is [`Error::InvalidConfiguration`],
    /// and so is more ranges than the store has slices (1,024 unless it was created with
    /// another number; see [`crate::slice`]), when the group first runs.
    pub fn group(self, ranges: u32) -> Result<ConsumerGroup<Subscription>> {
        ConsumerGroup::of(self, |subscription| subscription, ranges)
    }
}

impl ConsumerGroup<Subscription> {
    /// Runs `workers` workers of the group in this process until `shutdown` completes (then
    /// each range finishes its batch, stores its checkpoint and lets its lease go), or until
    /// a range stops on an error another try cannot cure, which stops them all and is
    /// returned. `handlers` makes the handler of each range a worker takes.
    ///
    /// Zero workers is [`Error::InvalidConfiguration`].
    ///
    /// # Errors
    ///
    /// As [`Subscription::run`](crate::subscription::Subscription::run);
    /// [`Error::InvalidConfiguration`] for zero workers.
    ///
    /// # Cancel safety
    ///
    /// As [`Subscription::run`](crate::subscription::Subscription::run), for each range.
    pub async fn run<H, F>(
        &self,
        workers: usize,
        handlers: F,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()>
    where
        H: Handler,
        F: Fn(SliceRange) -> H + Send + Sync,
    {
        let run_range =
            move |subscription: Subscription, stop: Pin<Box<dyn Future<Output = ()> + Send>>, owner: Uuid| {
                let range = subscription
                    .slice_range()
                    .expect("a range of a group has its slices");
                let handler = handlers(range);
                Box::pin(async move { subscription.run_range(handler, stop, owner).await })
                    as Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>
            };
        run_workers(&self.consumer, self.ranges, workers, &run_range, shutdown).await
    }

    /// The subscription the group runs.
    pub fn subscription(&self) -> &Subscription {
        &self.consumer
    }
}

/// Runs `workers` workers of the group of `template`, each range through `run_range`.
pub(crate) async fn run_workers<'a>(
    template: &'a Subscription,
    ranges: u32,
    workers: usize,
    run_range: &'a RunRange<'a>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    if workers == 0 {
        return Err(Error::InvalidConfiguration(format!(
            "consumer group {} needs at least one worker",
            template.name()
        )));
    }
    let slices = template.slices().await?;
    check_count(ranges, slices.count())?;
    // One worker's error stops the others, as the shutdown does.
    let (abort, aborted) = tokio::sync::watch::channel(false);
    let shutdown = shutdown.boxed().shared();
    let runs = (0..workers).map(|_| {
        let mut aborted = aborted.clone();
        let stop = future::select(
            shutdown.clone(),
            Box::pin(async move {
                let _ = aborted.wait_for(|a| *a).await;
            }),
        )
        .map(drop);
        let (abort, slices) = (&abort, slices.clone());
        async move {
            let outcome = Worker::new(template.name(), template, ranges, slices)
                .run(run_range, stop)
                .await;
            if outcome.is_err() {
                abort.send_replace(true);
            }
            outcome
        }
    });
    future::join_all(runs).await.into_iter().collect()
}

/// Records the group's first layout of `ranges` ranges, unless it has one; whether it has one
/// now. A group that never ran as a single consumer first gets the single consumer's
/// checkpoint where the subscription starts ([`Subscription::starting_at_end`],
/// [`Subscription::starting_after`]), so that its first ranges start there.
pub(crate) async fn record_first_layout(
    template: &Subscription,
    group: &str,
    ranges: u32,
    owner: Uuid,
) -> Result<bool> {
    let store = &**template.store();
    let slices = template.slices().await?;
    check_count(ranges, slices.count())?;
    if store.checkpoint(group).await?.is_none() {
        let first = template.first_position().await?;
        if first > 0 {
            if !store.acquire(group, owner, RECORD_LEASE).await? {
                // The single consumer runs: the group waits for it.
                return Ok(false);
            }
            let stored = match store.checkpoint(group).await? {
                Some(_) => true,
                None => store.save_checkpoint(group, owner, first).await?,
            };
            let _ = store.release(group, owner).await;
            if !stored {
                return Ok(false);
            }
        }
    }
    record_layout(store, group, 1, ranges, owner).await?;
    Ok(GroupState::read(store, group, &slices).await?.current().is_some())
}

/// Records layout `generation` of `ranges` ranges unless it is recorded already; whether this
/// call recorded it. A layout once recorded never changes: its record is written under its
/// own lease, only where none is, and a writer that lost the lease meanwhile is fenced out.
async fn record_layout(
    store: &dyn SubscriptionStore,
    group: &str,
    generation: u32,
    ranges: u32,
    owner: Uuid,
) -> Result<bool> {
    let name = names::layout(group, generation);
    if !store.acquire(&name, owner, RECORD_LEASE).await? {
        return Ok(false);
    }
    let recorded = match store.checkpoint(&name).await? {
        Some(_) => false,
        None => store.save_checkpoint(&name, owner, u64::from(ranges)).await?,
    };
    let _ = store.release(&name, owner).await;
    Ok(recorded)
}

/// Records a new layout of `ranges` ranges for the group of `template` (the first one, if it
/// has none) and returns its generation; the group's current one if it has that many ranges
/// already. The running workers move to it on their own; see the [module docs](self).
/// Outside 1 to the store's number of slices (see [`crate::slice`]) is
/// [`Error::InvalidConfiguration`]; another rescale recording
/// the same generation meanwhile is [`Error::InvalidInput`], and nothing changed.
///
/// # Errors
///
/// As above; [`Error::Store`] if the store failed.
///
/// # Cancel safety
///
/// The layout is recorded in one write, or not at all.
pub async fn rescale(template: &Subscription, ranges: u32) -> Result<u32> {
    let group = template.name();
    validate_group_name(group)?;
    let slices = template.slices().await?;
    check_count(ranges, slices.count())?;
    let store = &**template.store();
    let owner = Uuid::new_v4();
    let state = GroupState::read(store, group, &slices).await?;
    let Some((generation, count)) = state.current() else {
        if !record_first_layout(template, group, ranges, owner).await? {
            return Err(Error::InvalidInput(format!(
                "{group} runs as a single consumer: stop it before it becomes a consumer group"
            )));
        }
        return Ok(GroupState::read(store, group, &slices)
            .await?
            .current()
            .map_or(1, |(g, _)| g));
    };
    if count == ranges {
        return Ok(generation);
    }
    if !record_layout(store, group, generation + 1, ranges, owner).await? {
        return Err(Error::InvalidInput(format!(
            "layout {} of consumer group {group} was recorded by another call meanwhile; look at \
             its status and try again",
            generation + 1
        )));
    }
    tracing::info!(
        group,
        layout = generation + 1,
        ranges,
        "recorded a new layout of the consumer group"
    );
    Ok(generation + 1)
}

/// [`Error::InvalidConfiguration`] unless a group of `ranges` ranges fits a store of
/// `slices` slices: one slice at least a range.
fn check_count(ranges: u32, slices: SliceCount) -> Result<()> {
    if ranges == 0 || ranges > slices.get() {
        return Err(Error::InvalidConfiguration(format!(
            "a consumer group has 1 to {} ranges (one slice at least each, of a store of {slices}), not {ranges}",
            slices.get()
        )));
    }
    Ok(())
}

/// A consumer group as its store shows it: see [`status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The group's name.
    pub name: String,
    /// The generation of its current layout (from 1).
    pub layout: u32,
    /// The ranges of the current layout, in slice order.
    pub ranges: Vec<RangeStatus>,
    /// How many workers hold a slot now.
    pub workers: usize,
    /// How many ranges of earlier layouts are still held by a worker (they stop within about
    /// a third of their lease after a rescale).
    pub replaced_still_held: usize,
}

/// One range of a consumer group: see [`GroupStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RangeStatus {
    /// Its slices.
    pub range: SliceRange,
    /// The name under which it keeps its lease and checkpoint (metrics and logs show it).
    pub name: String,
    /// The owner of its lease, if a worker holds it.
    pub owner: Option<Uuid>,
    /// Its checkpoint, `None` before its first batch (it then starts where the ranges it
    /// replaces stopped).
    pub checkpoint: Option<u64>,
    /// How many events of the feed (of every slice) follow its checkpoint. A range follows the
    /// events of its own slices as they are appended, and moves its checkpoint past those of
    /// other slices when it polls with nothing to read (every poll interval), so this counts
    /// some of theirs until then.
    pub lag: u64,
    /// Whether its last lease ran out without being let go: the worker that held it died
    /// (see [`SubscriptionStatus::abandoned`](crate::subscription::SubscriptionStatus::abandoned)).
    pub abandoned: bool,
}

/// The status of consumer group `name` from its subscription store, with each range's lag
/// from the head of the feed it reads (`feed`'s, or without one `events`'), a store of
/// `slices` slices and parts
/// ([`SliceFeed::parts`], or [`Stores::slice_parts`](crate::backend::Stores::slice_parts));
/// `None` if `name` never ran as a group.
///
/// # Errors
///
/// [`Error::Store`] if a store failed.
///
/// # Cancel safety
///
/// A read: dropping the future loses nothing.
pub async fn status(
    events: &dyn EventStore,
    feed: Option<&dyn crate::abilities::SliceFeed>,
    store: &dyn SubscriptionStore,
    slices: &SliceParts,
    name: &str,
) -> Result<Option<GroupStatus>> {
    let state = GroupState::read(store, name, slices).await?;
    let Some((generation, _)) = state.current() else {
        return Ok(None);
    };
    let mut ranges = Vec::new();
    for range in state.ranges_of(generation) {
        let held = state.range(generation, range);
        let reached = state.reached(generation, range);
        let head = match feed {
            Some(feed) => feed.feed_head(range, reached).await?,
            None => events.head(reached).await?,
        };
        let lag = head.lag();
        ranges.push(RangeStatus {
            range,
            name: names::range(name, generation, range),
            owner: held.owner,
            checkpoint: held.checkpoint,
            lag,
            abandoned: held.abandoned,
        });
    }
    let replaced_still_held = state
        .ranges
        .iter()
        .filter(|((g, _), held)| *g < generation && held.owner.is_some())
        .count();
    Ok(Some(GroupStatus {
        name: name.to_owned(),
        layout: generation,
        ranges,
        workers: state.live_members(),
        replaced_still_held,
    }))
}

/// The position up to which consumer `name` (a single consumer, or the ranges of a consumer
/// group) has handled the events of `slice`, of a store of `slices` slices.
pub(crate) async fn handled_slice(
    store: &dyn SubscriptionStore,
    slices: &SliceParts,
    name: &str,
    slice: u32,
) -> Result<u64> {
    Ok(GroupState::read(store, name, slices).await?.handled_slice(slice))
}

/// Each range of the current layout of group `name` with the position up to which it has
/// handled its events (its checkpoint, or where the ranges it replaces left off); none before
/// the group has a layout.
pub(crate) async fn reached(
    store: &dyn SubscriptionStore,
    slices: &SliceParts,
    name: &str,
) -> Result<Vec<(SliceRange, u64)>> {
    let state = GroupState::read(store, name, slices).await?;
    let Some((generation, _)) = state.current() else {
        return Ok(Vec::new());
    };
    Ok(state
        .ranges_of(generation)
        .into_iter()
        .map(|range| (range, state.reached(generation, range)))
        .collect())
}

/// Waits until every range of the current layout of group `name` has handled the events up to
/// `position`, at most `timeout`; whether it has (see [`handled_up_to`]).
pub(crate) async fn wait_for(
    store: &dyn SubscriptionStore,
    slices: &SliceParts,
    feed: Option<&dyn SliceFeed>,
    name: &str,
    position: u64,
    timeout: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    loop {
        let ranges = reached(store, slices, name).await?;
        if !ranges.is_empty() && handled_up_to(feed, &ranges, &last, position).await? {
            return Ok(true);
        }
        last = ranges;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        sleep(left.min(WAIT_POLL)).await;
    }
}

/// Whether each of `ranges`, with the position it has reached, has handled the events of its
/// slices up to `position`: its checkpoint is there, or it is idle (where it was at the `last`
/// look) and, read by slice from `feed`, the feed shows every event up to `position` and none
/// of the range's after its checkpoint. A range that reads by slice wakes only for appends to
/// its own slices, so an idle one's checkpoint stays behind the feed's head until it next
/// polls; a range still moving is left to move, without reads of the feed.
async fn handled_up_to(
    feed: Option<&dyn SliceFeed>,
    ranges: &[(SliceRange, u64)],
    last: &[(SliceRange, u64)],
    position: u64,
) -> Result<bool> {
    let behind: Vec<&(SliceRange, u64)> = ranges.iter().filter(|(_, reached)| *reached < position).collect();
    let (Some(feed), true) = (feed, behind.iter().all(|range| last.contains(range))) else {
        return Ok(behind.is_empty());
    };
    for (range, reached) in behind {
        // Events up to `position` may still be held back by a transaction in flight: the
        // feed's head says when all of them show.
        if feed.feed_head(*range, *reached).await?.position < position {
            return Ok(false);
        }
        let next = feed.read_slices(*range, *reached).next().await.transpose()?;
        if next.is_some_and(|event| event.position <= position) {
            return Ok(false);
        }
    }
    Ok(true)
}
