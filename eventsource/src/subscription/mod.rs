//! Subscriptions: named, durable consumers of the global feed.
//!
//! A [`Subscription`] reads the feed of an [`EventStore`] (whose contract says a reader that
//! resumes after the last position it saw never misses an event), hands the events it is
//! interested in to a [`Handler`] in batches, and stores its checkpoint in a
//! [`SubscriptionStore`] after each batch, while the handler works on the next one (and the
//! batch after that is read meanwhile). It catches up from its checkpoint, then follows the
//! feed live, woken by the event store's [`AppendSignal`](crate::AppendSignal) where it is given
//! one ([`Consumer::wake_on`], or built by [`Stores::subscription`](crate::backend::Stores::subscription))
//! and polling at a bounded interval besides (so appends of other processes are seen too).
//!
//! What it guarantees:
//!
//! - **At least once.** The checkpoint is stored only after the handler returned `Ok` for the
//!   batch, so a consumer that crashes part way sees the batch again after restart, never
//!   loses an event; the checkpoint is never ahead of what was handled. Since a batch's
//!   checkpoint is stored while the next batch is handled, a crash hands over again at most
//!   the two batches after the stored checkpoint. (A projection commits each batch's
//!   checkpoint in the read model's transaction, with the batch: see [`crate::projection`].)
//! - **One active consumer per name**, across processes: a consumer works only while it holds
//!   the name's lease in the subscription store, renewed as it goes; a second instance waits as
//!   a standby and takes over within about one lease (plus a third) when the first dies. A
//!   consumer that lost its lease cannot move the checkpoint. When one consumer cannot keep
//!   up, run it as a [consumer group](crate::group) ([`Subscription::group`]): one active
//!   consumer per range of slices, ranges shared between any number of workers.
//! - **Bounded retries.** A handler error is retried with jittered exponential backoff; after
//!   the last attempt the subscription either stops with [`Error::SubscriptionStopped`] or, with
//!   [`OnFailure::DeadLetter`], hands the batch over one event at a time and records each event
//!   that still fails as a [`DeadLetter`], and goes on. Both are logged and counted in
//!   [`SubscriptionMetrics`].
//! - **Graceful shutdown.** When the `shutdown` future given to [`Subscription::run`]
//!   completes, the batch in hand is finished, its checkpoint stored, the lease released.
//! - **Catch-up and supervision.** [`Subscription::catch_up`] handles what the feed holds
//!   now and returns; [`Subscription::run_supervised`] starts a subscription that stopped on
//!   an error again after a backoff ([`supervisor`]).
//! - **Per-aggregate order, checked.** The feed hands each aggregate's events over in version
//!   order; the delivery guard checks it on every batch, and counts (or, with
//!   [`OnDisorder::Stop`], stops on) an event handed over twice, after a gap, or late (see
//!   [`Consumer::on_disorder`]).
//!
//! ```
//! # use eventsourcing_kit::prelude::*;
//! # use eventsourcing_kit::subscription::Subscription;
//! # use eventsourcing_kit::{InMemorySubscriptionStore, StoredEvent};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
//! let events = InMemoryEventStore::new();
//! let checkpoints = InMemorySubscriptionStore::new();
//! let subscription = Subscription::new("audit-log", events.clone(), checkpoints)?
//!     .aggregate_type("Account");
//! # let repo = Repository::<Account>::new(events.clone());
//! # for _ in 0..3 { repo.command(Uuid::new_v4()).run(|a| { a.record(Opened {}); Ok::<_, Error>(()) }).await.unwrap(); }
//! let mut seen = 0;
//! let handler = |batch: &[StoredEvent]| {
//!     seen += batch.len();
//!     Ok(())
//! };
//! // Handles what the feed holds now, then returns; `run` would go on following the feed
//! // until its shutdown future completes.
//! let handled = subscription.catch_up(handler).await?;
//! assert_eq!((handled, seen), (3, 3));
//! # Ok(()) }
//! # #[event(aggregate = "Account")] pub struct Opened {}
//! # #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
//! # #[aggregate(name = "Account", events(Opened))]
//! # pub struct Account {}
//! # impl Apply<Opened> for Account { fn apply(&mut self, _: &Opened) {} }
//! ```

pub(crate) mod consumer;
mod guard;
mod handler;
mod lease;
mod metrics;
pub(crate) mod names;
pub(crate) mod range;
pub mod replay;
mod run;
mod store;
pub mod supervisor;

pub use consumer::{Consumer, ConsumerOptions};
pub use guard::{Disorder, OnDisorder};
pub use handler::{Handler, HandlerError, Typed};
pub use metrics::SubscriptionMetrics;
pub use replay::{OnLetter, ReplayOptions, ReplayOutcome, ReplayReport, Replayed};
pub use store::{
    validate_name, validate_stored_name, DeadLetter, SubscriptionStatus, SubscriptionStore, MAX_NAME_LEN,
};
pub use supervisor::Restart;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{self, Either, FusedFuture, FutureExt};
use futures_util::StreamExt;
use uuid::Uuid;

use crate::deadline::{jittered, sleep};
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::event_store::{EventStore, EventStream};
use guard::DeliveryGuard;
use lease::Held;
use range::RangeScope;

/// What a subscription does with events its handler still fails on after the last attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Stop with [`Error::SubscriptionStopped`]; the checkpoint stays before the batch, so a
    /// restart tries it again. The default.
    #[default]
    Stop,
    /// Hand the batch over one event at a time, record each event that still fails as a
    /// [`DeadLetter`], and go on.
    DeadLetter,
}

/// A named, durable consumer of an event store's feed; see the [module docs](self).
pub struct Subscription {
    name: String,
    events: Arc<dyn EventStore>,
    store: Arc<dyn SubscriptionStore>,
    options: ConsumerOptions,
    on_failure: OnFailure,
    start: Start,
    metrics: Arc<SubscriptionMetrics>,
    /// The range of a consumer group this subscription reads, if it is one.
    range: Option<RangeScope>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("aggregate_types", &self.options.aggregate_types)
            .field("event_types", &self.options.event_types)
            .field("batch_size", &self.options.batch_size)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

impl consumer::sealed::Sealed for Subscription {}

impl Consumer for Subscription {
    fn options_mut(&mut self) -> &mut ConsumerOptions {
        &mut self.options
    }
}

impl Subscription {
    /// A subscription named `name` to the feed of `events`, keeping its state in `store`.
    ///
    /// It starts from its stored checkpoint, or from the beginning of the feed if it has none
    /// (see [`starting_at_end`](Self::starting_at_end)); it takes every event until filtered,
    /// in batches of 100, polls every 500 ms besides its wake-ups, makes 5 attempts per batch
    /// with a backoff from 100 ms to 5 s, stops on a batch that still fails, and holds a lease
    /// of 10 s.
    ///
    /// A name that is empty, longer than [`MAX_NAME_LEN`] bytes, or holds a control
    /// character, a line separator or a bidirectional override is [`Error::InvalidInput`]
    /// (see [`validate_name`]): names are printed as they are, by the admin command line among
    /// others.
    pub fn new(
        name: &str,
        events: impl EventStore + 'static,
        store: impl SubscriptionStore + 'static,
    ) -> Result<Self> {
        validate_name(name)?;
        Ok(Subscription {
            name: name.to_owned(),
            events: Arc::new(events),
            store: Arc::new(store),
            options: ConsumerOptions::default(),
            on_failure: OnFailure::Stop,
            start: Start::Beginning,
            metrics: Arc::default(),
            range: None,
        })
    }

    /// The subscription of one range of this subscription's consumer group, named `name`:
    /// the same feed, store, options and counters.
    pub(crate) fn in_range(&self, name: String, scope: RangeScope) -> Subscription {
        Subscription {
            name,
            events: self.events.clone(),
            store: self.store.clone(),
            options: self.options.clone(),
            on_failure: self.on_failure,
            start: Start::Beginning,
            metrics: self.metrics.clone(),
            range: Some(scope),
        }
    }

    /// The slices it reads, if it is a range of a consumer group.
    pub(crate) fn slice_range(&self) -> Option<crate::slice::SliceRange> {
        self.range.as_ref().map(|scope| scope.range)
    }

    /// The head of the feed it reads, after `position`: its range's feed, or the whole feed.
    async fn feed_head(&self, position: u64) -> Result<crate::event_store::FeedHead> {
        match &self.range {
            Some(scope) => scope.head(&*self.events, position).await,
            None => self.events.head(position).await,
        }
    }

    /// What wakes it after an append: an append to one of its slices, if it is a range of a
    /// consumer group that reads the feed by slice; any append otherwise. (A range of a store
    /// without the feed by slice follows the feed's head at each append instead, which
    /// [`ConsumerGroup::wait_for`](crate::group::ConsumerGroup::wait_for) counts on there.)
    fn waiter(&self, signal: &crate::abilities::AppendSignal) -> crate::abilities::AppendWaiter {
        match &self.range {
            Some(scope) if scope.feed.is_some() => signal.waiter_for(scope.slices, scope.range),
            _ => signal.waiter(),
        }
    }

    /// The slices of the store it reads and their parts: the feed by slice tells them;
    /// without one, the feed is one part of
    /// [`SliceCount::DEFAULT`](crate::slice::SliceCount::DEFAULT) slices.
    pub(crate) async fn slices(&self) -> Result<crate::slice::SliceParts> {
        match &self.options.slice_feed {
            Some(feed) => feed.parts().await,
            None => Ok(crate::slice::SliceParts::default()),
        }
    }

    /// Runs it as one range of its consumer group, with `handler`, as `owner`, until `stop`.
    pub(crate) async fn run_range<H: Handler>(
        &self,
        mut handler: H,
        stop: impl Future<Output = ()> + Send,
        owner: Uuid,
    ) -> Result<()> {
        self.run_as(&mut Handled(&mut handler), stop, owner).await
    }

    /// The subscription store it keeps its state in.
    pub(crate) fn store(&self) -> &Arc<dyn SubscriptionStore> {
        &self.store
    }

    /// Its options.
    pub(crate) fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// Where it starts without a checkpoint, given the feed's head: the position after which
    /// it takes events.
    pub(crate) async fn first_position(&self) -> Result<u64> {
        if self.start != Start::Beginning {
            self.one_feed("start anywhere but at the beginning").await?;
        }
        Ok(match self.start {
            Start::Beginning => 0,
            Start::After(position) => position,
            Start::End => self.events.head(0).await?.position,
        })
    }

    /// What to do with a batch that still fails after the last attempt.
    #[must_use]
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// With no checkpoint stored yet, starts after the events there are now instead of from
    /// the beginning of the feed.
    #[must_use]
    pub fn starting_at_end(mut self) -> Self {
        self.start = Start::End;
        self
    }

    /// With no checkpoint stored yet, starts after `position` instead of from the beginning
    /// of the feed.
    #[must_use]
    pub fn starting_after(mut self, position: u64) -> Self {
        self.start = Start::After(position);
        self
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event store it reads.
    pub(crate) fn events(&self) -> &Arc<dyn EventStore> {
        &self.events
    }

    /// Its counters: events handled, retries, dead letters, failures.
    pub fn metrics(&self) -> &Arc<SubscriptionMetrics> {
        &self.metrics
    }

    /// The stored checkpoint, `None` if none is stored yet.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn checkpoint(&self) -> Result<Option<u64>> {
        self.store.checkpoint(&self.name).await
    }

    /// How many events follow the stored checkpoint (all events, before filtering): how far
    /// the subscription is behind. Events stored but held back from the feed by a transaction
    /// that may still store events below them count too ([`FeedHead::lag`](crate::FeedHead::lag)).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn lag(&self) -> Result<u64> {
        self.one_feed("tell its lag as a single consumer").await?;
        let checkpoint = self.checkpoint().await?.unwrap_or(0);
        Ok(self.events.head(checkpoint).await?.lag())
    }

    /// Hands the handler the events of the feed up to its head as it is now, then returns how
    /// many events the handler was given.
    ///
    /// It works as [`run`](Self::run) does (the lease, retries, the failure policy, a
    /// checkpoint after each batch), waiting as a standby while another consumer holds the
    /// name's lease, and returns once the checkpoint reached the position that was the feed's
    /// last when it was called: events appended meanwhile may or may not be handled. The
    /// checkpoint reached by another consumer counts too (then it returns having handled
    /// fewer). Interrupted (the future dropped, the process killed), a later call or `run`
    /// goes on from the last stored checkpoint.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn catch_up<H: Handler>(&self, mut handler: H) -> Result<u64> {
        self.one_feed("catch up as a single consumer").await?;
        let start = match (self.checkpoint().await?, self.start) {
            (Some(position), _) => position,
            (None, Start::Beginning) => 0,
            (None, Start::After(position)) => position,
            // Starting at the end, there is nothing to catch up with.
            (None, Start::End) => return Ok(0),
        };
        let head = self.events.head(start).await?;
        if head.events_after == 0 {
            return Ok(0);
        }
        let mut sink = UpTo {
            handled: Handled(&mut handler),
            target: head.position,
            reached: Arc::new(tokio::sync::Notify::new()),
            delivered: Arc::default(),
        };
        let reached = sink.reached.clone();
        let (store, name, target) = (self.store.clone(), self.name.clone(), head.position);
        // Another consumer may bring the checkpoint there while this one waits as a standby.
        let elsewhere = async move {
            loop {
                sleep(CATCH_UP_POLL).await;
                if store.checkpoint(&name).await.ok().flatten() >= Some(target) {
                    return;
                }
            }
        };
        let done = async move {
            future::select(Box::pin(reached.notified()), Box::pin(elsewhere)).await;
        };
        self.run_into(&mut sink, done).await?;
        Ok(sink.delivered.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Runs the subscription as one consumer of its feed, each batch committed by `sink`
    /// (what [`run`](Self::run) does on a store of one feed).
    pub(crate) async fn run_into<K: Sink>(
        &self,
        sink: &mut K,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        self.run_as(sink, shutdown, Uuid::new_v4()).await
    }

    /// Runs the subscription as [`run_into`](Self::run_into) does, as `owner`. A range of a
    /// consumer group does not wait as a standby: it returns once it does not hold, or lost,
    /// its lease, or once the group has a new layout.
    pub(crate) async fn run_as<K: Sink>(
        &self,
        sink: &mut K,
        shutdown: impl Future<Output = ()> + Send,
        owner: Uuid,
    ) -> Result<()> {
        let mut shutdown = Box::pin(shutdown.fuse());
        let mut waiter = self.options.signal.as_ref().map(|signal| self.waiter(signal));
        let held = Held::new(&*self.store, &self.name, owner, self.options.lease);
        loop {
            match held.renew().await {
                Ok(true) => {
                    if let Err(e) = self.check_not_grouped().await {
                        let _ = self.store.release(&self.name, owner).await;
                        return Err(e);
                    }
                }
                Ok(false) if self.range.is_some() => return Ok(()),
                Ok(false) => {
                    if stopped(&mut shutdown, sleep(self.options.lease / 3)).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => {
                    self.transient(e)?;
                    if stopped(&mut shutdown, sleep(self.options.poll_interval)).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            tracing::info!(subscription = %self.name, "active: this consumer holds the lease");
            let outcome = self.follow(sink, &mut shutdown, &mut waiter, &held).await;
            match outcome {
                Ok(Active::Stopped) => {
                    let _ = self.store.release(&self.name, owner).await;
                    return Ok(());
                }
                Ok(Active::LostLease) if self.range.is_some() => {
                    tracing::warn!(subscription = %self.name, "lost the lease of the range");
                    return Ok(());
                }
                Ok(Active::Replaced) => {
                    let _ = self.store.release(&self.name, owner).await;
                    return Ok(());
                }
                Ok(Active::LostLease) => {
                    tracing::warn!(subscription = %self.name, "lost the lease; waiting as a standby");
                }
                // Taken again from the stored checkpoint, as after a lost lease.
                Err(e) if e.is_transient() => {
                    tracing::warn!(subscription = %self.name, error = %e, "store failed; starting again from the checkpoint");
                    if stopped(&mut shutdown, sleep(self.options.poll_interval)).await {
                        // Stopping: the lease goes at once, as after a stop without an error.
                        let _ = self.store.release(&self.name, owner).await;
                        return Ok(());
                    }
                }
                Err(e) => {
                    let _ = self.store.release(&self.name, owner).await;
                    return Err(e);
                }
            }
        }
    }

    /// [`Error::InvalidConfiguration`] if the store it reads has its slices in several feeds
    /// (a [sharded store](crate::backend::sharded)): to `what` needs one order of every event, and
    /// positions compare only within one feed.
    pub(crate) async fn one_feed(&self, what: &str) -> Result<()> {
        let Some(feed) = &self.options.slice_feed else {
            return Ok(());
        };
        let parts = feed.parts().await?;
        if parts.parts().len() > 1 {
            return Err(Error::InvalidConfiguration(format!(
                "{} cannot {what}: it reads a store of {parts} (a sharded store), with no single order of \
                 its events; run it as a consumer group, with `group`, whose ranges each read one feed",
                self.name
            )));
        }
        Ok(())
    }

    /// A consumer of the whole feed refuses to run under a name that runs as a consumer
    /// group: it would handle again what the group's ranges handle.
    async fn check_not_grouped(&self) -> Result<()> {
        if self.range.is_some() {
            return Ok(());
        }
        let first_layout = names::layout(&self.name, 1);
        if self.store.checkpoint(&first_layout).await?.is_some() {
            return Err(Error::InvalidConfiguration(format!(
                "{} runs as a consumer group (its ranges keep its checkpoint): run it as one, \
                 with `group`, not as a single consumer",
                self.name
            )));
        }
        Ok(())
    }

    /// Catches up and follows the feed while this consumer holds the lease.
    async fn follow<K: Sink, S: Future<Output = ()>>(
        &self,
        sink: &mut K,
        shutdown: &mut std::pin::Pin<Box<future::Fuse<S>>>,
        waiter: &mut Option<crate::abilities::AppendWaiter>,
        held: &Held<'_>,
    ) -> Result<Active> {
        let owner = held.owner();
        let stored = sink.checkpoint(self).await?;
        let mut position = match (stored, self.start) {
            (Some(position), _) => position,
            (None, _) if self.range.is_some() => self.range.as_ref().map_or(0, RangeScope::floor),
            (None, Start::Beginning) => 0,
            (None, start) => {
                let first = match start {
                    Start::After(position) => position,
                    _ => self.events.head(0).await?.position,
                };
                if !self.store.save_checkpoint(&self.name, owner, first).await? {
                    return Ok(Active::LostLease);
                }
                first
            }
        };
        // The checkpoint as stored: what the next commit moves it from.
        let mut after = stored.or((self.start != Start::Beginning).then_some(position));
        // One read of the feed serves batch after batch until it reaches the end.
        let mut feed: Option<EventStream<'_>> = None;
        // Follows the aggregates from here: events before the checkpoint are not its to judge.
        let mut guard = DeliveryGuard::default();
        let mut lag = LagGauge::default();
        // A range's last look for a new layout of its group, and the feed's head when its read
        // started: the range has seen everything up to it once the read ends. The head is
        // read only before a read that follows one that found nothing: a range with events
        // to read does not need it, and the head counts what follows the range's position.
        let mut looked: Option<tokio::time::Instant> = None;
        let mut head: Option<u64> = None;
        let mut wants_head = false;
        // The last read reached the end of what the feed showed: the next waits for an append
        // (whose signal, raised after its commit, is not missed meanwhile) or the poll interval.
        let mut drained = false;
        // The last wait ended without an append: only then does a range whose read finds
        // nothing read the head too. A range woken by appends to its slices follows its own
        // events; an idle one moves its checkpoint to the head at each poll.
        let mut idle = true;
        let by_slice = self.range.as_ref().is_some_and(|scope| scope.feed.is_some());
        // The store of the last batch's checkpoint, left to run beside the next batch's
        // hand-over; waited for before anything else (a wait, a stop, a new read).
        let mut storing: Option<Storing> = None;
        // The next batch of a read under way, read while the last batch was handed over.
        let mut ahead: Option<Result<Vec<StoredEvent>>> = None;
        // Whether the look at the group made during the last batch found a new layout.
        let mut replaced = false;
        // A batch's checkpoint left to be stored is stored before an error is returned too (a
        // batch the delivery guard refuses, a store that fails): the batch before was handled.
        let outcome: Result<Active> = async {
            loop {
                if shutdown.is_terminated() || shutdown.as_mut().now_or_never().is_some() {
                    settled(storing.take()).await?;
                    return Ok(Active::Stopped);
                }
                if !held.keep().await? {
                    return Ok(Active::LostLease);
                }
                if replaced || self.replaced(&mut looked).await? {
                    // Its last checkpoint is final before its lease goes to the ranges after it.
                    if !settled(storing.take()).await? {
                        return Ok(Active::LostLease);
                    }
                    return Ok(Active::Replaced);
                }
                let fetched = match ahead.take() {
                    Some(fetched) => fetched,
                    None if drained => Ok(Vec::new()),
                    None => {
                        if self.range.is_some() && feed.is_none() {
                            head = match wants_head {
                                true => Some(self.feed_head(position).await?.position),
                                false => None,
                            };
                        }
                        self.read_batch(&mut feed, position).await
                    }
                };
                let batch = match fetched {
                    Ok(batch) => batch,
                    Err(e) => {
                        if !settled(storing.take()).await? {
                            return Ok(Active::LostLease);
                        }
                        self.transient(e)?;
                        if stopped(shutdown, sleep(self.options.poll_interval)).await {
                            return Ok(Active::Stopped);
                        }
                        continue;
                    }
                };
                let last = match (batch.last(), head) {
                    (Some(event), _) => Some(event.position),
                    // A range caught up: its checkpoint moves to the feed's head as it was when
                    // the read started, so that its lag and `wait_for` see it current.
                    (None, Some(head)) if head > position && feed.is_none() => Some(head),
                    (None, _) => None,
                };
                let Some(last) = last else {
                    if self.range.is_some() && !wants_head && !drained && (idle || !by_slice) {
                        // An idle range's read found nothing: it reads again at once, the head
                        // first, so that its checkpoint can move there. (A range that reads the
                        // whole feed wakes at every append, and moves at each.)
                        wants_head = true;
                        continue;
                    }
                    if !settled(storing.take()).await? {
                        return Ok(Active::LostLease);
                    }
                    // Caught up with what the feed shows; events may still be held back.
                    if crate::telemetry::ENABLED {
                        lag.measure(self, position).await;
                    }
                    // Caught up: wait for an append, the poll interval, or the lease's renewal.
                    let wait = self.options.poll_interval.min(self.options.lease / 3);
                    let mut appended = false;
                    let woken = async {
                        match waiter {
                            Some(waiter) => {
                                let raised = future::select(Box::pin(waiter.raised()), Box::pin(sleep(wait)));
                                appended = matches!(raised.await, Either::Left(_));
                            }
                            None => sleep(wait).await,
                        }
                    };
                    if stopped(shutdown, woken).await {
                        return Ok(Active::Stopped);
                    }
                    (drained, idle, wants_head) = (false, !appended, false);
                    continue;
                };
                let read = batch.len();
                wants_head = read == 0;
                drained = read < self.options.batch_size;
                let batch: Vec<StoredEvent> = match &self.range {
                    Some(scope) => batch.into_iter().filter(|e| !scope.handled(e)).collect(),
                    None => batch,
                };
                self.guard(&mut guard, &batch)?;
                let taken: Vec<StoredEvent> = batch.into_iter().filter(|e| self.takes(e)).collect();
                let renewing = held.hold();
                // While this batch is handed over, the last batch's checkpoint is stored and the
                // next batch of the read under way is read.
                let reading = async {
                    // A full batch is followed by more, as a rule: a read that ended with it is
                    // followed by a new one.
                    match feed.is_some() || read == self.options.batch_size {
                        true => Some(self.read_batch(&mut feed, last).await),
                        false => None,
                    }
                };
                let committing = future::join4(
                    settled(storing.take()),
                    sink.commit(self, &taken, read, after, last, owner),
                    reading,
                    self.replaced(&mut looked),
                );
                let (before, committed, next, layout) =
                    match future::select(Box::pin(committing), Box::pin(renewing)).await {
                        Either::Left((committed, _)) => committed,
                        Either::Right((lost, committing)) => {
                            // The lease is gone: finish the batch (it may be handled twice, as
                            // at-least-once allows); its checkpoint is fenced and not stored.
                            let _ = committing.await;
                            lost?;
                            return Ok(Active::LostLease);
                        }
                    };
                ahead = next;
                // This batch's checkpoint is kept to be stored before anything else can
                // return: the batch was handled.
                match committed? {
                    Committed::Stored(false) => return Ok(Active::LostLease),
                    Committed::Stored(true) => {}
                    // Stored at once: the last batch's checkpoint is stored by now.
                    Committed::StoringLast(pending) => {
                        if !pending.await? {
                            return Ok(Active::LostLease);
                        }
                    }
                    Committed::Storing(pending) => storing = Some(pending),
                }
                if !before? {
                    return Ok(Active::LostLease);
                }
                replaced = layout?;
                position = last;
                after = Some(last);
                if crate::telemetry::ENABLED && read == self.options.batch_size {
                    lag.measure(self, last).await;
                }
            }
        }
        .await;
        if outcome.is_err() {
            let _ = settled(storing.take()).await;
        }
        outcome
    }

    /// Whether the consumer group of this range has a layout after the range's own: looked
    /// up before the range's first batch and then at least every sixth of its lease, so that
    /// the range stops within about a third of its lease after a new layout is recorded, long
    /// before the ranges that replace it can take its lease and its final checkpoint.
    async fn replaced(&self, looked: &mut Option<tokio::time::Instant>) -> Result<bool> {
        let Some(scope) = &self.range else {
            return Ok(false);
        };
        if looked.is_some_and(|at| at.elapsed() < self.options.lease / 6) {
            return Ok(false);
        }
        let replaced = self.store.checkpoint(&scope.successor).await?.is_some();
        *looked = Some(tokio::time::Instant::now());
        if replaced {
            tracing::info!(subscription = %self.name, "the consumer group has a new layout; this range stops");
        }
        Ok(replaced)
    }

    /// The next events of the feed after `position`, at most a batch of them, from the read
    /// in `feed` (a new one if there is none); the read is dropped at its end or on an error.
    async fn read_batch<'s>(
        &'s self,
        feed: &mut Option<EventStream<'s>>,
        position: u64,
    ) -> Result<Vec<StoredEvent>> {
        let reading = feed.get_or_insert_with(|| match &self.range {
            Some(scope) => scope.read(&*self.events, position),
            None => self.events.read_all(position),
        });
        let mut batch = Vec::with_capacity(self.options.batch_size.min(1024));
        while batch.len() < self.options.batch_size {
            match reading.next().await {
                Some(Ok(event)) => batch.push(event),
                Some(Err(e)) => {
                    *feed = None;
                    return Err(e);
                }
                None => {
                    *feed = None;
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Checks the batch's events of the aggregates followed against the delivery guard:
    /// counts and logs each one out of order, and stops at the first with
    /// [`OnDisorder::Stop`].
    fn guard(&self, guard: &mut DeliveryGuard, batch: &[StoredEvent]) -> Result<()> {
        for event in batch.iter().filter(|e| self.options.follows(&e.aggregate_type)) {
            let Some(kind) = guard.check(event) else {
                continue;
            };
            self.metrics.add_disorder(kind);
            crate::telemetry::subscription(
                &self.name,
                crate::telemetry::SubscriptionEvent::Disorder(kind.as_str()),
            );
            tracing::error!(subscription = %self.name, position = event.position, aggregate.type = %event.aggregate_type, aggregate.id = %event.aggregate_id, version = event.aggregate_version, kind = kind.as_str(), "an event out of its aggregate's version order");
            if self.options.on_disorder == OnDisorder::Stop {
                return Err(Error::SubscriptionStopped {
                    subscription: self.name.clone(),
                    position: event.position,
                    reason: format!(
                        "event {} of {} {} at version {} is a {}",
                        event.event_id,
                        event.aggregate_type,
                        event.aggregate_id,
                        event.aggregate_version,
                        kind.as_str()
                    ),
                });
            }
        }
        Ok(())
    }

    fn takes(&self, event: &StoredEvent) -> bool {
        self.options.takes(&event.aggregate_type, &event.event_type)
    }

    /// Hands `events` to the handler, with retries and the failure policy, in a span at
    /// DEBUG, `eventsource.subscription.batch`, with the subscription's name, the batch's
    /// positions and size, and the error of a batch that failed every attempt.
    pub(crate) async fn deliver<H: Handler>(&self, handler: &mut H, events: &[StoredEvent]) -> Result<()> {
        let span = tracing::debug_span!(
            "eventsource.subscription.batch",
            subscription = %self.name,
            position.first = events.first().map(|e| e.position),
            position.last = events.last().map(|e| e.position),
            events = events.len(),
            error = tracing::field::Empty,
        );
        tracing::Instrument::instrument(self.deliver_in(handler, events, &span), span.clone()).await
    }

    /// The events with their personal fields opened (see [`crate::personal`]), if the
    /// consumer has a keyring.
    pub(crate) async fn open<'e>(
        &self,
        events: &'e [StoredEvent],
    ) -> Result<std::borrow::Cow<'e, [StoredEvent]>> {
        crate::personal::open::open_events(self.options.keys.as_ref(), events).await
    }

    async fn deliver_in<H: Handler>(
        &self,
        handler: &mut H,
        stored: &[StoredEvent],
        span: &tracing::Span,
    ) -> Result<()> {
        // The handler sees personal fields open; a dead letter keeps the event as stored. An
        // event that does not open (its subject has no key, it changed since it was sealed)
        // fails the batch as a handler's error does, under the same policy.
        let (opened, error) = match self.open(stored).await {
            Ok(opened) => match self.attempt(handler, &opened).await {
                Ok(()) => return Ok(()),
                Err(error) => (Some(opened), error.to_string()),
            },
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => (None, e.to_string()),
        };
        span.record("error", tracing::field::display(&error));
        self.metrics.add_failed_batch();
        crate::telemetry::subscription(&self.name, crate::telemetry::SubscriptionEvent::FailedBatch);
        match self.on_failure {
            OnFailure::Stop => {
                tracing::error!(subscription = %self.name, position = stored[0].position, error = %error, "handler failed after every attempt; stopping");
                Err(Error::SubscriptionStopped {
                    subscription: self.name.clone(),
                    position: stored[0].position,
                    reason: error,
                })
            }
            OnFailure::DeadLetter => {
                for (i, event) in stored.iter().enumerate() {
                    let single = match &opened {
                        Some(_) if stored.len() == 1 => Err(error.clone()),
                        Some(opened) => self
                            .attempt(handler, std::slice::from_ref(&opened[i]))
                            .await
                            .map_err(|e| e.to_string()),
                        None => match self.open(std::slice::from_ref(event)).await {
                            Ok(one) => self.attempt(handler, &one).await.map_err(|e| e.to_string()),
                            Err(e) if e.is_transient() => return Err(e),
                            Err(e) => Err(e.to_string()),
                        },
                    };
                    if let Err(error) = single {
                        tracing::error!(subscription = %self.name, position = event.position, event.id = %event.event_id, error, "handler failed on the event after every attempt; recorded as a dead letter");
                        self.store.dead_letter(&self.name, event, &error).await?;
                        self.metrics.add_dead_letter();
                        crate::telemetry::subscription(
                            &self.name,
                            crate::telemetry::SubscriptionEvent::DeadLetter,
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Up to `attempts` tries of the handler on `events`, with backoff between them.
    pub(crate) async fn attempt<H: Handler>(
        &self,
        handler: &mut H,
        events: &[StoredEvent],
    ) -> std::result::Result<(), HandlerError> {
        let mut wait = self.options.backoff;
        for attempt in 1..=self.options.attempts {
            match handler.handle(events).await {
                Ok(()) => {
                    self.metrics.add_handled(events.len() as u64);
                    crate::telemetry::subscription(
                        &self.name,
                        crate::telemetry::SubscriptionEvent::Handled(events.len() as u64),
                    );
                    return Ok(());
                }
                Err(e) if attempt == self.options.attempts => return Err(e),
                Err(e) => {
                    self.metrics.add_retry();
                    crate::telemetry::subscription(&self.name, crate::telemetry::SubscriptionEvent::Retry);
                    tracing::warn!(subscription = %self.name, position = events.first().map(|e| e.position), attempt, error = %e, "handler failed; trying again");
                    sleep(jittered(wait)).await;
                    wait = wait.saturating_mul(2).min(self.options.max_backoff);
                }
            }
        }
        unreachable!("at least one attempt is made")
    }

    /// Gives a transient store error a pass (logged), returns any other.
    fn transient(&self, e: Error) -> Result<()> {
        if !e.is_transient() {
            return Err(e);
        }
        tracing::warn!(subscription = %self.name, error = %e, "store failed; trying again");
        Ok(())
    }
}

/// What a subscription does with each batch it reads: hands the events it takes to their
/// consumer and stores the checkpoint.
#[async_trait::async_trait]
pub(crate) trait Sink: Send {
    /// The stored checkpoint, where a consumer that takes over starts.
    async fn checkpoint(&mut self, subscription: &Subscription) -> Result<Option<u64>>;

    /// Hands over `taken`, the events the subscription takes from a batch of `read` events
    /// of the feed (possibly none), and stores `last`, the batch's last position, as the
    /// checkpoint if `owner` still holds the lease: at once, or by the future it returns,
    /// which the subscription runs beside the next batch's hand-over. `after` is the
    /// checkpoint as this consumer stored it last (`None`: none is stored).
    async fn commit(
        &mut self,
        subscription: &Subscription,
        taken: &[StoredEvent],
        read: usize,
        after: Option<u64>,
        last: u64,
        owner: Uuid,
    ) -> Result<Committed>;
}

/// What a [`Sink`]'s commit did with the checkpoint.
pub(crate) enum Committed {
    /// Stored it (`true`), or found the lease lost (`false`).
    Stored(bool),
    /// Left it to this future, which tells whether it stored it. Until it completes the
    /// checkpoint stays where it was; dropped, it stores nothing more.
    Storing(Storing),
    /// Left it to this future, to be awaited as soon as the last batch's checkpoint is
    /// stored, before another batch is handed over: the batch ends what the sink was run for.
    StoringLast(Storing),
}

/// The store of a checkpoint, left to run beside the next batch.
pub(crate) type Storing = std::pin::Pin<Box<dyn Future<Output = Result<bool>> + Send>>;

impl Committed {
    /// Whether the checkpoint is stored, once it is.
    async fn stored(self) -> Result<bool> {
        match self {
            Committed::Stored(stored) => Ok(stored),
            Committed::Storing(storing) | Committed::StoringLast(storing) => storing.await,
        }
    }
}

/// A plain subscription's sink: the handler, then the checkpoint in the subscription store,
/// stored while the handler works on the next batch.
pub(crate) struct Handled<'h, H>(pub(crate) &'h mut H);

#[async_trait::async_trait]
impl<H: Handler> Sink for Handled<'_, H> {
    async fn checkpoint(&mut self, subscription: &Subscription) -> Result<Option<u64>> {
        subscription.store.checkpoint(&subscription.name).await
    }

    async fn commit(
        &mut self,
        subscription: &Subscription,
        taken: &[StoredEvent],
        read: usize,
        _after: Option<u64>,
        last: u64,
        owner: Uuid,
    ) -> Result<Committed> {
        if !taken.is_empty() {
            subscription.deliver(self.0, taken).await?;
        }
        let (store, name) = (subscription.store.clone(), subscription.name.clone());
        let storing = Box::pin(async move { store.save_checkpoint(&name, owner, last).await });
        Ok(match read {
            // A caught-up range's checkpoint, moved to the feed's head: there is no next batch
            // to store it beside.
            0 => Committed::StoringLast(storing),
            _ => Committed::Storing(storing),
        })
    }
}

/// A plain subscription's sink while it catches up: the handler and the checkpoint, and a
/// signal once the checkpoint reached the target position.
struct UpTo<'h, H> {
    handled: Handled<'h, H>,
    target: u64,
    reached: Arc<tokio::sync::Notify>,
    /// The events handed over in batches whose checkpoint was stored.
    delivered: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait::async_trait]
impl<H: Handler> Sink for UpTo<'_, H> {
    async fn checkpoint(&mut self, subscription: &Subscription) -> Result<Option<u64>> {
        self.handled.checkpoint(subscription).await
    }

    async fn commit(
        &mut self,
        subscription: &Subscription,
        taken: &[StoredEvent],
        read: usize,
        after: Option<u64>,
        last: u64,
        owner: Uuid,
    ) -> Result<Committed> {
        let committed = self
            .handled
            .commit(subscription, taken, read, after, last, owner)
            .await?;
        let (reached, delivered) = (self.reached.clone(), self.delivered.clone());
        let (handed, target) = (taken.len() as u64, self.target);
        let storing = async move {
            let stored = committed.stored().await?;
            if stored {
                delivered.fetch_add(handed, std::sync::atomic::Ordering::Relaxed);
                if last >= target {
                    reached.notify_one();
                }
            }
            Ok(stored)
        };
        Ok(match last >= target {
            // The catch-up ends with this batch: its checkpoint is stored before another
            // batch is handed over.
            true => Committed::StoringLast(Box::pin(storing)),
            false => Committed::Storing(Box::pin(storing)),
        })
    }
}

/// How often a catch-up that waits as a standby looks whether another consumer reached its
/// target.
const CATCH_UP_POLL: Duration = Duration::from_millis(100);

/// Where a subscription with no checkpoint starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Beginning,
    End,
    After(u64),
}

/// How a consumer's time as the active one ended.
enum Active {
    Stopped,
    LostLease,
    /// A range whose consumer group has a new layout.
    Replaced,
}

/// Waits for the store of a checkpoint left running, if there is one; whether it stored it
/// (`true` if there is none).
async fn settled(storing: Option<Storing>) -> Result<bool> {
    match storing {
        Some(storing) => storing.await,
        None => Ok(true),
    }
}

/// Waits for `wait`; whether `shutdown` completed first (or had already).
async fn stopped<S: Future<Output = ()>>(
    shutdown: &mut std::pin::Pin<Box<future::Fuse<S>>>,
    wait: impl Future<Output = ()>,
) -> bool {
    if shutdown.is_terminated() {
        return true;
    }
    match future::select(shutdown.as_mut(), Box::pin(wait)).await {
        Either::Left(_) => true,
        Either::Right(_) => false,
    }
}

/// Measures a subscription's lag for the `eventsource_subscription_lag` and
/// `eventsource_subscription_held_back` gauges, at most once a second: a count of the events
/// after its position, shown by the feed or held back. A feed held back is logged with what
/// holds it, where the store tells.
#[derive(Default)]
struct LagGauge {
    measured: Option<tokio::time::Instant>,
}

impl LagGauge {
    async fn measure(&mut self, subscription: &Subscription, position: u64) {
        if self
            .measured
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.measured = Some(tokio::time::Instant::now());
        if let Ok(head) = subscription.feed_head(position).await {
            let name = &subscription.name;
            crate::telemetry::subscription(name, crate::telemetry::SubscriptionEvent::Lag(head.lag()));
            crate::telemetry::subscription(
                name,
                crate::telemetry::SubscriptionEvent::HeldBack(head.held_back),
            );
            if head.held_back > 0 {
                let holder = head.held_by.as_ref().map(ToString::to_string);
                tracing::warn!(subscription = %name, held_back = head.held_back, holder = holder.as_deref().unwrap_or("unknown"), "the feed holds back stored events while a transaction that may append below them runs");
            }
        }
    }
}
