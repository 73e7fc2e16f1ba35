//! Replaying dead letters: the events a subscription or projection gave up on, handed to
//! today's code again once it is fixed (a new upcast, a handler that no longer fails).
//!
//! A replay takes the name's lease first (so it is refused while a consumer runs the name:
//! stop it, or wait for its lease to run out), reads each letter's event from the feed by
//! its position, hands it to the handler on its own, and removes the letter once the handler
//! succeeded: the letters that still fail stay, with their first error. The checkpoint never
//! moves: a projection's replay commits each event in the read model's transaction with the
//! checkpoint it has. The letters are handled in chunks of [`CHUNK`], the lease renewed
//! between them. A replay stopped between a handled event and the removal of its letter
//! hands that event over again the next time (at least once).
//!
//! The replayed event reaches the handler after events that followed it in the feed: the
//! handler must give the right result for an event applied late (a read model keyed by
//! aggregate that sets what the event says usually does; one that counts, or that an event
//! of the same aggregate overwrote since, may not).

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use super::store::{DeadLetter, SubscriptionStore};
use super::Subscription;
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::subscription::Handler;

/// The letters a replay handles before it renews its lease.
pub const CHUNK: usize = 100;

/// How a replay runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// Runs the handler and rolls its change back (a projection's transaction): reports what
    /// would now succeed, removes nothing. A plain subscription's handler cannot be rolled
    /// back, so its replay refuses a dry run.
    pub dry_run: bool,
    /// At most this many letters, the first recorded first; all of them with `None`.
    pub limit: Option<usize>,
}

impl ReplayOptions {
    /// A replay of every letter, for real.
    pub fn new() -> Self {
        Self::default()
    }

    /// A dry run: see [`ReplayOptions::dry_run`].
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// At most `letters` letters.
    #[must_use]
    pub fn limit(mut self, letters: usize) -> Self {
        self.limit = Some(letters);
        self
    }
}

/// What became of one letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "error", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplayOutcome {
    /// The handler succeeded; the letter is removed.
    Handled,
    /// The handler succeeded and its change was rolled back (a dry run); the letter stays.
    WouldSucceed,
    /// The handler failed again, with this error; the letter stays.
    Failed(String),
}

/// One letter of a replay and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Replayed {
    /// The name the letter was recorded under: the subscription's, or one range's of its
    /// consumer group.
    pub name: String,
    /// The event's position in the feed.
    pub position: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: ReplayOutcome,
}

/// What a replay did, letter by letter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Each letter handled, in the order recorded.
    pub letters: Vec<Replayed>,
    /// Letters left out by the limit.
    pub not_replayed: usize,
}

impl ReplayReport {
    /// How many letters had the given outcome kind: handled (or would succeed) when
    /// `succeeded`, failed otherwise.
    pub fn count(&self, succeeded: bool) -> usize {
        self.letters
            .iter()
            .filter(|l| matches!(l.outcome, ReplayOutcome::Failed(_)) != succeeded)
            .count()
    }
}

/// What a replay hands each letter's event to.
pub(crate) trait Replay {
    /// Hands `event`, recorded under `name` (held by `owner`), to the handler; `Ok(false)`
    /// if the name's lease was lost or its checkpoint moved meanwhile, which ends the replay.
    async fn replay(
        &mut self,
        name: &str,
        owner: Uuid,
        event: &StoredEvent,
    ) -> Result<std::result::Result<bool, String>>;
}

/// Replays the letters of `names` (a subscription's own name, and those of its group's
/// ranges) of `store` through `target`, reading their events from `subscription`'s feed.
pub(crate) async fn replay<R: Replay>(
    subscription: &Subscription,
    store: &dyn SubscriptionStore,
    names: &[String],
    options: ReplayOptions,
    target: &mut R,
) -> Result<ReplayReport> {
    let lease = subscription.options().lease;
    let mut report = ReplayReport::default();
    let mut budget = options.limit.unwrap_or(usize::MAX);
    for name in names {
        let letters = store.dead_letters(name).await?;
        if letters.is_empty() {
            continue;
        }
        let taken = letters.len().min(budget);
        report.not_replayed += letters.len() - taken;
        budget -= taken;
        if taken == 0 {
            continue;
        }
        let owner = Uuid::new_v4();
        if !store.acquire(name, owner, lease).await? {
            return Err(Error::InvalidInput(format!(
                "{name} is running: a consumer holds its lease; stop it, or wait for the lease to \
                 run out, before replaying its dead letters"
            )));
        }
        let outcome = replay_name(
            subscription,
            store,
            name,
            &letters[..taken],
            options,
            owner,
            lease,
            target,
            &mut report,
        )
        .await;
        let _ = store.release(name, owner).await;
        outcome?;
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn replay_name<R: Replay>(
    subscription: &Subscription,
    store: &dyn SubscriptionStore,
    name: &str,
    letters: &[DeadLetter],
    options: ReplayOptions,
    owner: Uuid,
    lease: Duration,
    target: &mut R,
    report: &mut ReplayReport,
) -> Result<()> {
    for (i, letter) in letters.iter().enumerate() {
        if i > 0 && i % CHUNK == 0 && !store.acquire(name, owner, lease).await? {
            return Err(lost(name));
        }
        let outcome = match event_of(subscription, letter).await? {
            Err(missing) => ReplayOutcome::Failed(missing),
            Ok(event) => match target.replay(name, owner, &event).await? {
                Ok(true) if options.dry_run => ReplayOutcome::WouldSucceed,
                Ok(true) => {
                    store.remove_dead_letters(name, &[letter.event_id]).await?;
                    ReplayOutcome::Handled
                }
                Ok(false) => return Err(lost(name)),
                Err(error) => ReplayOutcome::Failed(error),
            },
        };
        tracing::info!(subscription = %name, position = letter.position, event.id = %letter.event_id, outcome = ?outcome, "replayed a dead letter");
        report.letters.push(Replayed {
            name: name.to_owned(),
            position: letter.position,
            event_id: letter.event_id,
            event_type: letter.event_type.clone(),
            outcome,
        });
    }
    Ok(())
}

fn lost(name: &str) -> Error {
    Error::InvalidInput(format!(
        "{name} lost its lease or moved its checkpoint during the replay: a consumer took it over; \
         the letters handled so far are removed, the others stay"
    ))
}

/// The letter's event, read from the feed at its position; a description of what is there
/// instead if it is not the letter's.
async fn event_of(
    subscription: &Subscription,
    letter: &DeadLetter,
) -> Result<std::result::Result<StoredEvent, String>> {
    let feed = subscription.options().slice_feed.as_deref();
    match letter_event(&**subscription.events(), feed, letter).await? {
        Some(event) => Ok(Ok(event)),
        None => Ok(Err(format!(
            "the feed holds no event {} at position {}: it cannot be replayed",
            letter.event_id, letter.position
        ))),
    }
}

/// The letter's event, read from the feed at its position, if it is there. A letter of a
/// consumer group's range is read from the feed of the range's slices (on a
/// [sharded store](crate::backend::sharded), its shard's: the position is of that feed).
pub(crate) async fn letter_event(
    events: &dyn crate::event_store::EventStore,
    feed: Option<&dyn crate::abilities::SliceFeed>,
    letter: &DeadLetter,
) -> Result<Option<StoredEvent>> {
    let after = letter.position.saturating_sub(1);
    let mut read = match (super::names::slices_of(&letter.subscription), feed) {
        (Some(range), Some(feed)) => feed.read_slices(range, after),
        _ => events.read_all(after),
    };
    Ok(read
        .next()
        .await
        .transpose()?
        .filter(|event| event.position == letter.position && event.event_id == letter.event_id))
}

/// A plain subscription's handler: it takes the event, or fails.
struct Handing<'h, H>(&'h mut H);

impl<H: Handler> Replay for Handing<'_, H> {
    async fn replay(
        &mut self,
        _name: &str,
        _owner: Uuid,
        event: &StoredEvent,
    ) -> Result<std::result::Result<bool, String>> {
        Ok(self
            .0
            .handle(std::slice::from_ref(event))
            .await
            .map(|()| true)
            .map_err(|e| e.to_string()))
    }
}

impl Subscription {
    /// Hands the events this subscription gave up on (see [`DeadLetter`]) to `handler` again,
    /// one by one, and removes the letter of each it now takes; see the
    /// [module docs](crate::subscription::replay) for what a replay guarantees. The letters of the ranges of
    /// its consumer group are replayed too.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a dry run (a plain handler's effects cannot be rolled
    /// back), while a consumer holds the lease of a name with letters, or if one takes it
    /// over meanwhile; a store error as the store gives it. A handler that fails again is no
    /// error: the report says so, and the letter stays.
    ///
    /// # Cancel safety
    ///
    /// Each letter is handled and then removed: dropped, the letter in the handler's hands
    /// stays, to be replayed again.
    pub async fn replay_dead_letters<H: Handler>(
        &self,
        handler: &mut H,
        options: ReplayOptions,
    ) -> Result<ReplayReport> {
        if options.dry_run {
            return Err(Error::InvalidInput(format!(
                "{}: a plain subscription's handler cannot be rolled back, so its dead letters \
                 have no dry run",
                self.name()
            )));
        }
        let names = names_with_letters(&**self.store(), self.name()).await?;
        replay(self, &**self.store(), &names, options, &mut Handing(handler)).await
    }
}

/// The names under which the subscription `name` keeps dead letters in `store`: its own,
/// and those of its consumer group's ranges that hold some.
pub(crate) async fn names_with_letters(store: &dyn SubscriptionStore, name: &str) -> Result<Vec<String>> {
    let mut names = vec![name.to_owned()];
    for status in store.subscriptions().await? {
        let range = matches!(
            super::names::parse(name, &status.name),
            Some(super::names::Entry::Range(..))
        );
        if range && status.dead_letters > 0 {
            names.push(status.name);
        }
    }
    Ok(names)
}
