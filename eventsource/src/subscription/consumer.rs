//! What a [`Subscription`](super::Subscription) and a [`Projection`](crate::projection::Projection)
//! both are: a named consumer of the feed. How it reads the feed is declared once, here, and
//! both take it through [`Consumer`].

use std::time::Duration;

use std::sync::Arc;

use super::guard::OnDisorder;
use crate::abilities::{AppendSignal, SliceFeed};
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::personal::Keyring;

const DEFAULT_BATCH: usize = 100;
const DEFAULT_POLL: Duration = Duration::from_millis(500);
const DEFAULT_ATTEMPTS: u32 = 5;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
const DEFAULT_LEASE: Duration = Duration::from_secs(10);
const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);

/// How a consumer reads the feed: which events it takes, in what batches, how often it looks,
/// how it retries a failing batch, the lease it holds, and what wakes it. Set through the
/// methods of [`Consumer`].
#[derive(Clone)]
pub struct ConsumerOptions {
    pub(crate) aggregate_types: Vec<String>,
    pub(crate) event_types: Vec<String>,
    pub(crate) batch_size: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) lease: Duration,
    pub(crate) signal: Option<AppendSignal>,
    pub(crate) slice_feed: Option<Arc<dyn SliceFeed>>,
    pub(crate) on_disorder: OnDisorder,
    pub(crate) keys: Option<Keyring>,
}

impl std::fmt::Debug for ConsumerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerOptions")
            .field("aggregate_types", &self.aggregate_types)
            .field("event_types", &self.event_types)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("attempts", &self.attempts)
            .field("lease", &self.lease)
            .field("wakes", &self.signal.is_some())
            .field("slice_feed", &self.slice_feed.is_some())
            .field("on_disorder", &self.on_disorder)
            .field("personal_data", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ConsumerOptions {
    /// Every event, in batches of 100, a look at the feed every 500 ms besides the wake-ups, 5
    /// attempts per batch with a backoff from 100 ms to 5 s, a lease of 10 s, no wake-ups.
    fn default() -> Self {
        ConsumerOptions {
            aggregate_types: Vec::new(),
            event_types: Vec::new(),
            batch_size: DEFAULT_BATCH,
            poll_interval: DEFAULT_POLL,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            lease: DEFAULT_LEASE,
            signal: None,
            slice_feed: None,
            on_disorder: OnDisorder::Count,
            keys: None,
        }
    }
}

impl ConsumerOptions {
    /// Whether the consumer takes events of this aggregate type (of some event types).
    pub(crate) fn follows(&self, aggregate_type: &str) -> bool {
        self.aggregate_types.is_empty() || self.aggregate_types.iter().any(|t| *t == aggregate_type)
    }

    /// Whether the consumer takes an event of this aggregate type and event type.
    pub(crate) fn takes(&self, aggregate_type: &str, event_type: &str) -> bool {
        self.follows(aggregate_type)
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| *t == event_type))
    }
}

/// Keeps [`Consumer`] to the consumers of this crate, which implement it beside their own type.
pub(crate) mod sealed {
    pub trait Sealed {}
}

/// A named consumer of the feed: a [`Subscription`](super::Subscription) or a
/// [`Projection`](crate::projection::Projection). Its methods set how it reads the feed; a
/// value out of its bounds is [`Error::InvalidConfiguration`]. In the prelude.
pub trait Consumer: sealed::Sealed + Sized {
    /// The consumer's options, which the provided methods set.
    #[doc(hidden)]
    fn options_mut(&mut self) -> &mut ConsumerOptions;

    /// Wakes on `signal` (an event store's [`AppendSignal`]) to read new events as soon as
    /// they are appended, instead of at the next poll. Without it, the consumer polls at its
    /// [`poll_interval`](Self::poll_interval); with it, it still polls (for appends the
    /// signal does not see). [`Stores::subscription`](crate::backend::Stores::subscription)
    /// and [`Stores::projection`](crate::backend::Stores::projection) wire the backend's
    /// signal.
    #[must_use]
    fn wake_on(mut self, signal: AppendSignal) -> Self {
        self.options_mut().signal = Some(signal);
        self
    }

    /// Reads the feed of its slices through `feed` (the event store's
    /// [`SliceFeed`]) when it runs as a [consumer group](crate::group), so that each range
    /// costs what it holds. Without it, each range reads the whole feed and keeps its own
    /// events. [`Stores::subscription`](crate::backend::Stores::subscription) and
    /// [`Stores::projection`](crate::backend::Stores::projection) wire the backend's feed.
    #[must_use]
    fn slice_feed(mut self, feed: Arc<dyn SliceFeed>) -> Self {
        self.options_mut().slice_feed = Some(feed);
        self
    }

    /// Opens the personal fields of the events it hands over with `keys` (see
    /// [`crate::personal`]): a handler then reads each as known or forgotten. Dead letters
    /// keep the events sealed, as stored. [`Stores::subscription`](crate::backend::Stores::subscription)
    /// and [`Stores::projection`](crate::backend::Stores::projection) wire the backend's keys.
    /// Without it, sealed fields fail to decode, saying why.
    #[must_use]
    fn personal_data(mut self, keys: Keyring) -> Self {
        self.options_mut().keys = Some(keys);
        self
    }

    /// Takes the events of this aggregate type too (by default, every event is taken).
    #[must_use]
    fn aggregate_type(mut self, aggregate_type: &str) -> Self {
        self.options_mut().aggregate_types.push(aggregate_type.to_owned());
        self
    }

    /// Takes the events of `A`.
    #[must_use]
    fn for_aggregate<A: Aggregate>(self) -> Self {
        self.aggregate_type(A::TYPE_NAME)
    }

    /// Takes events of this event type too (by default, events of every type are taken).
    #[must_use]
    fn event_type(mut self, event_type: &str) -> Self {
        self.options_mut().event_types.push(event_type.to_owned());
        self
    }

    /// Hands over at most `events` events at a time (a projection commits them in one
    /// transaction). Zero is [`Error::InvalidConfiguration`].
    fn batch_size(mut self, events: usize) -> Result<Self> {
        if events == 0 {
            return Err(Error::InvalidConfiguration(
                "a consumer's batch size must be at least 1".into(),
            ));
        }
        self.options_mut().batch_size = events;
        Ok(self)
    }

    /// Looks at the feed at least this often, whether woken or not. Zero is
    /// [`Error::InvalidConfiguration`].
    fn poll_interval(mut self, interval: Duration) -> Result<Self> {
        if interval.is_zero() {
            return Err(Error::InvalidConfiguration(
                "a consumer's poll interval must be above zero".into(),
            ));
        }
        self.options_mut().poll_interval = interval;
        Ok(self)
    }

    /// Tries a failing batch `attempts` times, waiting `backoff`, then twice that and so on up
    /// to `max_backoff` (each wait jittered by up to half), before giving up on it (see
    /// [`Subscription::on_failure`](super::Subscription::on_failure)). Zero attempts is
    /// [`Error::InvalidConfiguration`].
    fn retry(mut self, attempts: u32, backoff: Duration, max_backoff: Duration) -> Result<Self> {
        if attempts == 0 {
            return Err(Error::InvalidConfiguration(
                "a consumer makes at least one attempt per batch".into(),
            ));
        }
        let options = self.options_mut();
        options.attempts = attempts;
        options.backoff = backoff;
        options.max_backoff = max_backoff.max(backoff);
        Ok(self)
    }

    /// What to do when an aggregate's events come out of order: a version handed over twice, a
    /// gap, or a version after a gap handed over late (see [`Disorder`](super::Disorder)). Every one is counted
    /// in [`SubscriptionMetrics`](super::SubscriptionMetrics) and the metric
    /// `eventsource_subscription_disorder_total` (labelled by kind) and logged; with
    /// [`OnDisorder::Stop`] the consumer also stops before handing the batch over. The default
    /// is [`OnDisorder::Count`]. The guard follows every aggregate of the types the consumer
    /// takes (whatever event types it takes), from the first event it sees of each after it
    /// starts, up to 100,000 aggregates at a time.
    #[must_use]
    fn on_disorder(mut self, policy: OnDisorder) -> Self {
        self.options_mut().on_disorder = policy;
        self
    }

    /// Holds the name's lease for `lease` at a time, renewed every third of it: a standby
    /// takes over within about `lease` plus a third after the active consumer died. A consumer
    /// whose renewal is late by more than the lease (a pause, a lost connection) gives the
    /// lease up as lost and starts again from the stored checkpoint. Below 30 ms or above a day
    /// is [`Error::InvalidConfiguration`].
    fn lease(mut self, lease: Duration) -> Result<Self> {
        if lease < Duration::from_millis(30) || lease > MAX_LEASE {
            return Err(Error::InvalidConfiguration(format!(
                "a consumer's lease must be between 30 ms and a day, not {lease:?}"
            )));
        }
        self.options_mut().lease = lease;
        Ok(self)
    }
}
