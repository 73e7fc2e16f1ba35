//! Replaying dead letters: the events a subscription or projection gave up on, handed to
//! today's code again once it is fixed (a new upcast, a handler that no longer fails).
//!
//! A replay takes the name's lease first (so it is refused while a consumer runs the name:
//! stop it, or wait for its lease to run out), reads each letter's event from the feed by
//! its position, hands it to the handler on its own, and removes the letter once the handler
//! succeeded: the letters that still fail stay, with their first error. The checkpoint never
//! moves: a projection's replay commits each event in the read model's transaction with the
//! checkpoint it has. The letters are read and handled a page of [`CHUNK`] at a time, the
//! lease renewed between pages, so that a queue of any length is replayed in bounded memory;
//! the report keeps the first [`REPORTED`] letters and counts the rest. A replay stopped
//! between a handled event and the removal of its letter hands that event over again the
//! next time (at least once).
//!
//! The replayed event reaches the handler after events that followed it in the feed: the
//! handler must give the right result for an event applied late (a read model keyed by
//! aggregate that sets what the event says usually does; one that counts, or that an event
//! of the same aggregate overwrote since, may not).

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use super::store::{DeadLetter, SubscriptionStore};
use super::Subscription;
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::subscription::Handler;

/// The letters a replay reads and handles at a time, renewing its lease before the next.
pub const CHUNK: usize = 100;

/// The letters a [`ReplayReport`] lists one by one; it counts every letter.
pub const REPORTED: usize = 1_000;

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
    /// The first [`REPORTED`] letters replayed, in the order recorded, each with its outcome
    /// (the progress callback of [`Projection::replay_dead_letters_with_progress`](crate::projection::Projection::replay_dead_letters_with_progress)
    /// sees every one).
    pub letters: Vec<Replayed>,
    /// Letters replayed: handled, or that would succeed in a dry run.
    pub succeeded: usize,
    /// Letters replayed that failed again.
    pub failed: usize,
    /// Letters left out by the limit.
    pub not_replayed: usize,
}

impl ReplayReport {
    /// How many letters had the given outcome kind: handled (or would succeed) when
    /// `succeeded`, failed otherwise.
    pub fn count(&self, succeeded: bool) -> usize {
        match succeeded {
            true => self.succeeded,
            false => self.failed,
        }
    }

    fn add(&mut self, letter: Replayed) {
        match letter.outcome {
            ReplayOutcome::Failed(_) => self.failed += 1,
            _ => self.succeeded += 1,
        }
        if self.letters.len() < REPORTED {
            self.letters.push(letter);
        }
    }
}

/// What a replay tells as it goes: each letter, once replayed.
pub type OnLetter<'a> = &'a mut (dyn FnMut(&Replayed) + Send);

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
/// ranges) of `store` through `target`, reading their events from `subscription`'s feed, a
/// page at a time; `on_letter` sees each.
pub(crate) async fn replay<R: Replay>(
    subscription: &Subscription,
    store: &dyn SubscriptionStore,
    names: &[String],
    options: ReplayOptions,
    target: &mut R,
    on_letter: OnLetter<'_>,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut budget = options.limit.unwrap_or(usize::MAX);
    for name in names {
        let kept = match budget {
            0 => 0,
            _ => {
                replay_name(
                    subscription,
                    store,
                    name,
                    options,
                    &mut budget,
                    target,
                    &mut report,
                    on_letter,
                )
                .await?
            }
        };
        if budget == 0 {
            report.not_replayed += count_from(store, name, kept).await?;
        }
    }
    Ok(report)
}

/// Replays the letters of `name`, at most `budget` of them (less what it replays); how many
/// it left in place (failed, or a dry run's), which are the first letters of `name` now.
#[allow(clippy::too_many_arguments)]
async fn replay_name<R: Replay>(
    subscription: &Subscription,
    store: &dyn SubscriptionStore,
    name: &str,
    options: ReplayOptions,
    budget: &mut usize,
    target: &mut R,
    report: &mut ReplayReport,
    on_letter: OnLetter<'_>,
) -> Result<usize> {
    let lease = subscription.options().lease;
    let owner = Uuid::new_v4();
    let mut kept = 0;
    // A name may hold one event's letter more than once (recorded again after a crash or a
    // reset), and a removal takes every copy: the copies left in place, by event, so that
    // `kept` loses them when a later copy is handled, and the events handled in this page,
    // whose later copies in it are gone already.
    let mut kept_copies: HashMap<Uuid, usize> = HashMap::new();
    let mut held = false;
    let outcome = async {
        while *budget > 0 {
            // Handled letters are gone: the letters left in place are the first `kept`.
            let page = store.dead_letters(name, kept, CHUNK.min(*budget)).await?;
            if page.is_empty() {
                break;
            }
            if !store.acquire(name, owner, lease).await? {
                return Err(match held {
                    true => lost(name),
                    false => Error::InvalidInput(format!(
                        "{name} is running: a consumer holds its lease; stop it, or wait for the \
                         lease to run out, before replaying its dead letters"
                    )),
                });
            }
            held = true;
            let mut handled = HashSet::new();
            for letter in page {
                if handled.contains(&letter.event_id) {
                    continue;
                }
                *budget -= 1;
                let outcome = replay_letter(subscription, store, name, &letter, options, owner, target).await?;
                match outcome {
                    ReplayOutcome::Handled => {
                        kept -= kept_copies.remove(&letter.event_id).unwrap_or(0);
                        handled.insert(letter.event_id);
                    }
                    _ if options.dry_run => kept += 1,
                    _ => {
                        kept += 1;
                        *kept_copies.entry(letter.event_id).or_default() += 1;
                    }
                }
                tracing::info!(subscription = %name, position = letter.position, event.id = %letter.event_id, outcome = ?outcome, "replayed a dead letter");
                let replayed = Replayed {
                    name: name.to_owned(),
                    position: letter.position,
                    event_id: letter.event_id,
                    event_type: letter.event_type,
                    outcome,
                };
                on_letter(&replayed);
                report.add(replayed);
            }
        }
        Ok(kept)
    }
    .await;
    if held {
        let _ = store.release(name, owner).await;
    }
    outcome
}

/// Hands one letter's event to `target`; what became of it.
async fn replay_letter<R: Replay>(
    subscription: &Subscription,
    store: &dyn SubscriptionStore,
    name: &str,
    letter: &DeadLetter,
    options: ReplayOptions,
    owner: Uuid,
    target: &mut R,
) -> Result<ReplayOutcome> {
    Ok(match event_of(subscription, letter).await? {
        Err(missing) => ReplayOutcome::Failed(missing),
        Ok(event) => match target
            .replay(
                name,
                owner,
                &subscription.open(std::slice::from_ref(&event)).await?[0],
            )
            .await?
        {
            Ok(true) if options.dry_run => ReplayOutcome::WouldSucceed,
            Ok(true) => {
                store.remove_dead_letters(name, &[letter.event_id]).await?;
                ReplayOutcome::Handled
            }
            Ok(false) => return Err(lost(name)),
            Err(error) => ReplayOutcome::Failed(error),
        },
    })
}

/// How many letters `name` has after its first `skip`, counted a page at a time.
async fn count_from(store: &dyn SubscriptionStore, name: &str, mut skip: usize) -> Result<usize> {
    let start = skip;
    loop {
        let page = store.dead_letters(name, skip, CHUNK * 10).await?.len();
        skip += page;
        if page < CHUNK * 10 {
            return Ok(skip - start);
        }
    }
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
        replay(
            self,
            &**self.store(),
            &names,
            options,
            &mut Handing(handler),
            &mut |_| {},
        )
        .await
    }
}

/// The names under which the subscription `name` keeps dead letters in `store`: its own,
/// and those of its consumer group's ranges that hold some.
pub(crate) async fn names_with_letters(store: &dyn SubscriptionStore, name: &str) -> Result<Vec<String>> {
    Ok(letters_by_name(store, name)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// [`names_with_letters`], each with how many letters it holds, from one listing of the
/// store.
pub(crate) async fn letters_by_name(store: &dyn SubscriptionStore, name: &str) -> Result<Vec<(String, u64)>> {
    let mut names = vec![(name.to_owned(), 0)];
    for status in store.subscriptions().await? {
        match super::names::parse(name, &status.name) {
            Some(super::names::Entry::Range(..)) if status.dead_letters > 0 => {
                names.push((status.name, status.dead_letters))
            }
            _ if status.name == name => names[0].1 = status.dead_letters,
            _ => {}
        }
    }
    Ok(names)
}
