//! The runner of one projection: a subscription whose batches commit with their checkpoint.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use futures_util::future::{self, Either};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::ReadModelStore;
use crate::deadline::sleep;
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::event_store::EventStore;
use crate::group::ConsumerGroup;
use crate::subscription::{
    Committed, Consumer, ConsumerOptions, Handler, HandlerError, Sink, Subscription, SubscriptionMetrics,
};

/// How often [`Projection::wait_for`] looks at the stored checkpoint, besides being woken by
/// this process's own commits.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// How often a catch-up looks whether the head it aims at was committed by another instance.
const CATCH_UP_POLL: Duration = Duration::from_millis(100);

/// A named projection of an event store's feed into a read model; see the
/// [module docs](super).
pub struct Projection {
    subscription: Subscription,
    model: Arc<dyn ReadModelStore>,
    /// The last position this process committed.
    committed: watch::Sender<u64>,
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

/// How far a [`Projection::catch_up`] or [`Projection::rebuild`] has come.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Events of the feed handled so far (those the projection does not take included).
    pub done: u64,
    /// Events left before the feed's head as it was when the catch-up started.
    pub remaining: u64,
    /// Time since the catch-up started.
    pub elapsed: Duration,
}

impl Progress {
    /// Events per second so far.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.done as f64 / seconds
        } else {
            0.0
        }
    }

    /// The time left at the rate so far, if there is a rate yet.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64(self.remaining as f64 / rate))
    }
}

impl crate::subscription::consumer::sealed::Sealed for Projection {}

impl Consumer for Projection {
    fn options_mut(&mut self) -> &mut ConsumerOptions {
        self.subscription.options_mut()
    }
}

impl Projection {
    /// A projection named `name` of the feed of `events` into `model`.
    ///
    /// The name is its checkpoint's and lease's, unique among the subscriptions and
    /// projections of the database; give a new version of a read model a new name (see
    /// [`go_live`](Self::go_live)). The defaults are a subscription's (every event, batches of
    /// 100, a lease of 10 s); a batch whose commit still fails after the last attempt stops
    /// the projection with [`Error::SubscriptionStopped`], as skipping an event would leave
    /// the read model wrong. A name that [`validate_name`](crate::subscription::validate_name)
    /// refuses (empty, longer than [`MAX_NAME_LEN`](crate::subscription::MAX_NAME_LEN) bytes,
    /// or with a control character) is [`Error::InvalidInput`].
    pub fn new(
        name: &str,
        events: impl EventStore + 'static,
        model: impl ReadModelStore + 'static,
    ) -> Result<Self> {
        let model: Arc<dyn ReadModelStore> = Arc::new(model);
        let subscription = Subscription::new(name, events, model.subscriptions())?;
        Ok(Projection {
            subscription,
            model,
            committed: watch::Sender::new(0),
        })
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        self.subscription.name()
    }

    /// Its counters: events handled, retries, failures.
    pub fn metrics(&self) -> &Arc<SubscriptionMetrics> {
        self.subscription.metrics()
    }

    /// The position of the last event committed into the read model, `None` before the first.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn checkpoint(&self) -> Result<Option<u64>> {
        self.model.checkpoint(self.name()).await
    }

    /// How many events of the feed follow the checkpoint: how far the read model is behind.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn lag(&self) -> Result<u64> {
        self.subscription
            .one_feed("tell its lag as a single consumer")
            .await?;
        let checkpoint = self.checkpoint().await?.unwrap_or(0);
        Ok(self.subscription.events().head(checkpoint).await?.lag())
    }

    /// Runs the projection until `shutdown` completes: creates the read model's tables if
    /// missing, waits as a standby while another instance holds the name's lease, then
    /// catches up and follows the feed, each batch committed with its checkpoint.
    ///
    /// # Errors
    ///
    /// [`Error::ReadModel`](crate::Error::ReadModel) if the read model cannot be set up;
    /// [`Error::SubscriptionStopped`](crate::Error::SubscriptionStopped) for a batch that
    /// failed every attempt; a store error another try cannot cure.
    ///
    /// # Cancel safety
    ///
    /// Dropped, the projection stops at its last committed batch: each batch commits with its
    /// checkpoint in one transaction, run to its end in a task of its own on PostgreSQL (and on
    /// SQLite's connection thread), so the read model is never left half applied. The lease
    /// runs out after its duration; complete `shutdown` instead to let it go at once.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.setup().await?;
        let mut sink = Committing::new(self, None);
        self.subscription.run_consumer(&mut sink, shutdown).await
    }

    /// Brings the read model up to the feed's head as it is now, calling `progress` after each
    /// batch, and returns. Another instance holding the lease makes it wait as a standby.
    /// Interrupted (the future dropped, the process killed), a later call goes on from the
    /// last committed batch.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn catch_up(&self, mut progress: impl FnMut(Progress) + Send) -> Result<Progress> {
        if self.subscription.reads_split_feed().await {
            return self.catch_up_in_ranges(&mut progress).await;
        }
        self.setup().await?;
        let start = self.checkpoint().await?.unwrap_or(0);
        let head = self.subscription.events().head(start).await?;
        let mut sink = Committing::new(self, Some((head.position, head.events_after)));
        sink.progress = Some(&mut progress);
        if head.events_after > 0 {
            // Done when this process commits the head, or finds it committed (by another
            // instance while this one waited as a standby, or before a takeover).
            let (finished, model, name) = (sink.finished.clone(), self.model.clone(), self.name().to_owned());
            let reached = async move {
                loop {
                    sleep(CATCH_UP_POLL).await;
                    if model
                        .checkpoint(&name)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|c| c >= head.position)
                    {
                        return;
                    }
                }
            };
            let done = async move {
                future::select(Box::pin(finished.notified()), Box::pin(reached)).await;
            };
            self.subscription.run_into(&mut sink, done).await?;
        }
        Ok(sink.report())
    }

    /// [`catch_up`](Self::catch_up) on a store of several feeds (a
    /// [sharded store](crate::backend::sharded)): as a consumer group of one range, cut at the
    /// feeds' bounds, run until each range has reached where its feed ended when the catch-up
    /// started. The remaining count of its progress is the events those feeds held after the
    /// lowest checkpoint of each: an estimate.
    async fn catch_up_in_ranges(&self, progress: &mut (dyn FnMut(Progress) + Send)) -> Result<Progress> {
        self.setup().await?;
        let feed = self
            .subscription
            .options()
            .slice_feed
            .clone()
            .expect("a store of several feeds is read by slice");
        let slices = feed.parts().await?;
        let store = self.model.subscriptions();
        // Where each part stands: the lowest position its ranges have handled, from one read
        // of the group's state.
        let (store_read, slices_read) = (&*store, &slices);
        let lowest = || async move {
            let ranges = crate::group::reached(store_read, slices_read, self.name()).await?;
            Ok::<Vec<u64>, Error>(
                slices_read
                    .parts()
                    .iter()
                    .map(|part| {
                        ranges
                            .iter()
                            .filter(|(range, _)| range_within(*range, *part))
                            .map(|(_, at)| *at)
                            .min()
                            .unwrap_or(0)
                    })
                    .collect(),
            )
        };
        let (mut targets, mut total) = (Vec::new(), 0);
        for (part, low) in slices.parts().iter().zip(lowest().await?) {
            let head = feed.feed_head(*part, low).await?;
            targets.push(head.position);
            total += head.events_after;
        }
        let mut sink = Committing::new(self, Some((u64::MAX, total)));
        sink.progress = Some(progress);
        let reached = async {
            loop {
                sleep(CATCH_UP_POLL).await;
                let done = lowest()
                    .await
                    .is_ok_and(|lows| lows.iter().zip(&targets).all(|(low, target)| low >= target));
                if done {
                    return;
                }
            }
        };
        self.subscription.run_consumer(&mut sink, reached).await?;
        Ok(Progress {
            remaining: 0,
            ..sink.report()
        })
    }

    /// Empties the read model and replays the whole feed into it ([`reset`](Self::reset),
    /// then [`catch_up`](Self::catch_up)). Stop the projection's other consumers first: one
    /// that runs keeps its place. Interrupted, continue with `catch_up`, not `rebuild`,
    /// which would start from the beginning again.
    ///
    /// # Errors
    ///
    /// As [`reset`](Self::reset), then as [`run`](Self::run).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run): the rebuild goes on from its last committed batch with
    /// [`catch_up`](Self::catch_up).
    pub async fn rebuild(&self, progress: impl FnMut(Progress) + Send) -> Result<Progress> {
        self.reset().await?;
        self.catch_up(progress).await
    }

    /// Empties the read model and forgets the checkpoint, in one transaction.
    ///
    /// # Errors
    ///
    /// [`Error::ReadModel`](crate::Error::ReadModel) if the read model's reset failed (nothing
    /// changed).
    ///
    /// # Cancel safety
    ///
    /// The reset is one transaction, run to its end even if the future is dropped.
    pub async fn reset(&self) -> Result<()> {
        self.setup().await?;
        self.model
            .reset(self.name())
            .await
            .map_err(|e| self.failed("reset", e))?;
        self.committed.send_replace(0);
        Ok(())
    }

    /// Makes this read model the one queries read (its projection's `go_live`, in one
    /// transaction): for a blue/green rebuild, once this version has caught up, while the
    /// previous version kept serving.
    ///
    /// # Errors
    ///
    /// [`Error::ReadModel`](crate::Error::ReadModel) if the switch failed (nothing changed),
    /// for instance after its lock timeout.
    ///
    /// # Cancel safety
    ///
    /// The switch is one transaction, run to its end even if the future is dropped.
    pub async fn go_live(&self) -> Result<()> {
        self.model
            .go_live()
            .await
            .map_err(|e| self.failed("switch to", e))
    }

    /// Waits until the read model has committed `position` (a save's
    /// [`AggregateRoot::position`](crate::AggregateRoot::position), a command's
    /// [`Executed::position`](crate::repository::Executed::position)), at most `timeout`;
    /// whether it has. Commits of this process wake it at once, those of other processes
    /// within 20 ms.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// Waiting only.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<bool> {
        self.subscription
            .one_feed("wait for a position of the whole feed")
            .await?;
        let deadline = Instant::now() + timeout;
        let mut committed = self.committed.subscribe();
        loop {
            if *committed.borrow_and_update() >= position
                || self.checkpoint().await?.is_some_and(|c| c >= position)
            {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let woken = Box::pin(committed.changed());
            match future::select(woken, Box::pin(sleep(left.min(WAIT_POLL)))).await {
                Either::Left((Ok(()), _)) | Either::Right(_) => {}
                // The sender lives in `self`: it cannot be dropped while this runs.
                Either::Left((Err(_), _)) => return Ok(false),
            }
        }
    }

    /// Creates the read model's tables if missing (the projection's `setup`), so that queries
    /// can read them before the first batch; [`run`](Self::run), [`catch_up`](Self::catch_up)
    /// and [`reset`](Self::reset) call it too.
    ///
    /// # Errors
    ///
    /// [`Error::ReadModel`](crate::Error::ReadModel) if the tables cannot be created.
    ///
    /// # Cancel safety
    ///
    /// Creating the tables is one transaction; doing it again is safe.
    pub async fn setup(&self) -> Result<()> {
        self.model.setup().await.map_err(|e| self.failed("set up", e))
    }

    /// This projection as a [consumer group](crate::group) of `ranges` ranges, each range
    /// committed with its own checkpoint in the read model's transaction; see
    /// [`Subscription::group`](crate::subscription::Subscription::group), which checks the
    /// same.
    pub fn group(self, ranges: u32) -> Result<ConsumerGroup<Projection>> {
        ConsumerGroup::of(self, Projection::subscription, ranges)
    }

    /// What to do with a batch whose commit still fails after the last attempt:
    /// [`OnFailure::Stop`](crate::subscription::OnFailure::Stop) by default, since skipping an
    /// event leaves the read model without it. With
    /// [`OnFailure::DeadLetter`](crate::subscription::OnFailure::DeadLetter) the batch is
    /// committed one event at a time, each with its checkpoint; an event that fails alone is
    /// recorded as a dead letter and passed over, and the read model lacks it until it is
    /// replayed ([`replay_dead_letters`](Self::replay_dead_letters), `admin deadletters
    /// replay`) once the code is fixed.
    #[must_use]
    pub fn on_failure(mut self, policy: crate::subscription::OnFailure) -> Self {
        self.subscription = self.subscription.on_failure(policy);
        self
    }

    /// The subscription that reads its feed.
    pub(crate) fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Its read model.
    pub(crate) fn model(&self) -> &dyn ReadModelStore {
        &*self.model
    }

    /// Runs `range`, one range of its consumer group, as `owner` until `stop`, each batch
    /// committed with the range's checkpoint.
    pub(crate) async fn run_range(
        &self,
        range: Subscription,
        stop: impl Future<Output = ()> + Send,
        owner: Uuid,
    ) -> Result<()> {
        let mut sink = Committing::new(self, None);
        range.run_as(&mut sink, stop, owner).await
    }

    fn failed(&self, action: &'static str, e: HandlerError) -> Error {
        Error::ReadModel {
            projection: self.name().to_owned(),
            action,
            reason: e.to_string(),
        }
    }
}

/// A projection's sink: each batch applied and its checkpoint stored in one transaction.
struct Committing<'p> {
    projection: &'p Projection,
    /// The position to stop at, and how many events lead there.
    until: Option<(u64, u64)>,
    finished: Arc<Notify>,
    progress: Option<&'p mut (dyn FnMut(Progress) + Send)>,
    done: u64,
    started: Instant,
}

impl<'p> Committing<'p> {
    fn new(projection: &'p Projection, until: Option<(u64, u64)>) -> Self {
        Committing {
            projection,
            until,
            finished: Arc::new(Notify::new()),
            progress: None,
            done: 0,
            started: Instant::now(),
        }
    }

    fn report(&self) -> Progress {
        let total = self.until.map_or(0, |(_, total)| total);
        Progress {
            done: self.done,
            remaining: total.saturating_sub(self.done),
            elapsed: self.started.elapsed(),
        }
    }
}

#[async_trait]
impl Sink for Committing<'_> {
    async fn checkpoint(&mut self, subscription: &Subscription) -> Result<Option<u64>> {
        // The projection's, or that of the range of its consumer group being run.
        self.projection.model.checkpoint(subscription.name()).await
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
        let model = &*self.projection.model;
        let mut transaction = Transaction {
            model,
            name: subscription.name(),
            owner,
            after,
            last,
            batch: taken.len(),
            fenced: false,
        };
        if taken.is_empty() {
            // Only the checkpoint moves, with the retries of any batch.
            subscription
                .attempt(&mut transaction, &[])
                .await
                .map_err(|e| self.projection.failed("commit the checkpoint of", e))?;
        } else {
            subscription.deliver(&mut transaction, taken).await?;
            if !transaction.fenced && transaction.after != Some(last) {
                // Committed one event at a time, the last dead-lettered or followed by
                // events the projection does not take: the checkpoint moves to the batch's end.
                subscription
                    .attempt(&mut transaction, &[])
                    .await
                    .map_err(|e| self.projection.failed("commit the checkpoint of", e))?;
            }
        }
        if transaction.fenced {
            return Ok(Committed::Stored(false));
        }
        if subscription.name() == self.projection.name() {
            self.projection.committed.send_replace(last);
        }
        self.done += read as u64;
        let report = self.report();
        if let Some(progress) = self.progress.as_mut() {
            progress(report);
        }
        if self.until.is_some_and(|(position, _)| last >= position) {
            self.finished.notify_one();
        }
        Ok(Committed::Stored(true))
    }
}

/// One attempt at a batch: the read model's transaction.
///
/// The whole batch (or none of its events) commits the batch's last position; a part of it
/// (under [`OnFailure::DeadLetter`](crate::subscription::OnFailure::DeadLetter), one event at a
/// time) commits up to its own last event, so that an event recorded as a dead letter between
/// two others is passed over by the next commit.
struct Transaction<'m> {
    model: &'m dyn ReadModelStore,
    name: &'m str,
    owner: Uuid,
    /// The checkpoint as stored: where the next commit moves it from.
    after: Option<u64>,
    last: u64,
    /// How many events the batch hands over.
    batch: usize,
    /// Whether a commit was refused: the lease is lost, or another consumer moved on.
    fenced: bool,
}

#[async_trait]
impl Handler for Transaction<'_> {
    async fn handle(&mut self, events: &[StoredEvent]) -> std::result::Result<(), HandlerError> {
        let last = match events.last() {
            Some(event) if events.len() < self.batch => event.position,
            _ => self.last,
        };
        if self
            .model
            .commit(self.name, self.owner, self.after, events, last)
            .await?
        {
            self.after = Some(last);
        } else {
            self.fenced = true;
        }
        Ok(())
    }
}

/// Whether `inner` lies within `outer`.
fn range_within(inner: crate::slice::SliceRange, outer: crate::slice::SliceRange) -> bool {
    outer.first() <= inner.first() && inner.last() <= outer.last()
}
