//! The subscription store contract: checkpoints, leases and dead letters, by subscription name.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::StoredEvent;

/// An event a subscription gave up on, with why.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The subscription that gave up.
    pub subscription: String,
    /// The event's position in the feed.
    pub position: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// The handler's last error.
    pub error: String,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// The letter of `subscription` for the event `event_id` of `event_type` at feed
    /// `position`, given up with `error` at `failed_at`: what a backend reads back.
    pub fn new(
        subscription: impl Into<String>,
        position: u64,
        event_id: Uuid,
        event_type: impl Into<String>,
        error: impl Into<String>,
        failed_at: DateTime<Utc>,
    ) -> Self {
        DeadLetter {
            subscription: subscription.into(),
            position,
            event_id,
            event_type: event_type.into(),
            error: error.into(),
            failed_at,
        }
    }
}

/// One subscription as its store knows it: see [`SubscriptionStore::subscriptions`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionStatus {
    /// Its name.
    pub name: String,
    /// Its checkpoint, `None` if it never stored one (or was reset).
    pub checkpoint: Option<u64>,
    /// The owner of its lease, if a lease is held and has not run out: the active consumer.
    pub owner: Option<Uuid>,
    /// How many events it gave up on.
    pub dead_letters: u64,
    /// Whether its last lease ran out without being let go: the consumer that held it
    /// stopped without a shutdown (a crash, a kill, a lost connection), and none has taken
    /// it since. `false` while a consumer holds it, and once one let it go.
    pub abandoned: bool,
}

impl SubscriptionStatus {
    /// The subscription `name` with no checkpoint, no lease, no dead letters, not
    /// abandoned; a backend sets the fields it read (they are public).
    pub fn new(name: impl Into<String>) -> Self {
        SubscriptionStatus {
            name: name.into(),
            checkpoint: None,
            owner: None,
            dead_letters: 0,
            abandoned: false,
        }
    }
}

/// Where subscriptions keep their state: a checkpoint (the position of the last event
/// handled), the lease that makes one consumer the active one, and the events given up on.
///
/// # Contract
///
/// Every backend guarantees, and the conformance suite in `eventsourcing_kit::testing` checks:
///
/// - **One owner at a time.** [`acquire`](Self::acquire) gives the lease on a name to an owner
///   if nobody holds it, if that owner holds it already (a renewal), or if the holder's lease
///   has run out; it returns whether the owner holds the lease now, until `ttl` from now.
///   Two owners never both hold a lease that has not run out.
/// - **Fenced checkpoints.** [`save_checkpoint`](Self::save_checkpoint) stores the position
///   only while the owner holds a lease that has not run out, and returns whether it did: a
///   consumer that lost its lease (it paused longer than the lease, and another took over)
///   can never move the checkpoint of the one that replaced it.
/// - **Durable.** A stored checkpoint or dead letter survives the process; on the SQL
///   backends it is in the same database as the events.
/// - **Checked names.** A name that [`validate_name`] refuses is [`Error::InvalidInput`] where
///   it would enter the store ([`acquire`](Self::acquire), [`dead_letter`](Self::dead_letter));
///   the other calls refuse only the names no store can hold, empty or with a NUL character
///   ([`validate_stored_name`]), so that a subscription named before those rules can still be
///   read, reset and released.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Takes or renews the lease on `name` for `owner`; whether `owner` holds it now.
    async fn acquire(&self, name: &str, owner: Uuid, ttl: Duration) -> Result<bool>;

    /// Gives the lease up, if `owner` holds it, so that a standby can take over at once.
    async fn release(&self, name: &str, owner: Uuid) -> Result<()>;

    /// The checkpoint stored for `name`, `None` if it never stored one.
    async fn checkpoint(&self, name: &str) -> Result<Option<u64>>;

    /// Stores `position` as the checkpoint of `name`, if `owner` holds its lease; whether it did.
    async fn save_checkpoint(&self, name: &str, owner: Uuid, position: u64) -> Result<bool>;

    /// Forgets the checkpoint of `name`, and those of every name of its
    /// [consumer group](crate::group)'s state (`NAME#...`: its layouts and ranges), in one
    /// step: the subscription then starts as one that never ran (from the beginning of the
    /// feed, unless told otherwise), as a single consumer or as a group of a new first
    /// layout. Stop its consumers first: one that runs keeps its place and stores it again
    /// with its next batch.
    async fn reset(&self, name: &str) -> Result<()>;

    /// Records that `name` gave up on `event` with `error`.
    async fn dead_letter(&self, name: &str, event: &StoredEvent, error: &str) -> Result<()>;

    /// The events `name` gave up on, in the order it gave up: the first `skip` of them left
    /// out, at most `limit` (`0, usize::MAX` for all), so that a long queue is read a page
    /// at a time.
    async fn dead_letters(&self, name: &str, skip: usize, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Removes the dead letters of `name` for the events `event_ids` (a replay handled
    /// them); how many it removed. The letters of other names, and of other events, stay.
    async fn remove_dead_letters(&self, name: &str, event_ids: &[Uuid]) -> Result<u64>;

    /// Replaces `error` with `redacted` in the dead letters of `name` for the event
    /// `event_id` whose error is `error` (a redaction: an error that quoted personal data, see
    /// [`crate::erasure`]), keeping their place and time; how many it changed.
    async fn redact_dead_letter(
        &self,
        name: &str,
        event_id: Uuid,
        error: &str,
        redacted: &str,
    ) -> Result<u64>;

    /// Every subscription the store knows (that ever took a lease), by name: what the admin
    /// command line lists.
    async fn subscriptions(&self) -> Result<Vec<SubscriptionStatus>>;
}

#[async_trait]
// Forwards every method, provided ones too: a wrapper that does not loses its fast paths.
#[deny(clippy::missing_trait_methods)]
impl<S: SubscriptionStore + ?Sized> SubscriptionStore for Arc<S> {
    async fn acquire(&self, name: &str, owner: Uuid, ttl: Duration) -> Result<bool> {
        (**self).acquire(name, owner, ttl).await
    }
    async fn release(&self, name: &str, owner: Uuid) -> Result<()> {
        (**self).release(name, owner).await
    }
    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        (**self).checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, owner: Uuid, position: u64) -> Result<bool> {
        (**self).save_checkpoint(name, owner, position).await
    }
    async fn reset(&self, name: &str) -> Result<()> {
        (**self).reset(name).await
    }
    async fn dead_letter(&self, name: &str, event: &StoredEvent, error: &str) -> Result<()> {
        (**self).dead_letter(name, event, error).await
    }
    async fn dead_letters(&self, name: &str, skip: usize, limit: usize) -> Result<Vec<DeadLetter>> {
        (**self).dead_letters(name, skip, limit).await
    }
    async fn remove_dead_letters(&self, name: &str, event_ids: &[Uuid]) -> Result<u64> {
        (**self).remove_dead_letters(name, event_ids).await
    }
    async fn redact_dead_letter(
        &self,
        name: &str,
        event_id: Uuid,
        error: &str,
        redacted: &str,
    ) -> Result<u64> {
        (**self).redact_dead_letter(name, event_id, error, redacted).await
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionStatus>> {
        (**self).subscriptions().await
    }
}

/// The longest name of a subscription or projection, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;

/// Checks the name of a new subscription or projection: not empty, at most [`MAX_NAME_LEN`]
/// bytes, and no character that would garble the text that shows it (a control character
/// such as a newline or an escape, a line separator, a bidirectional override). Anything
/// else is [`Error::InvalidInput`].
///
/// [`Subscription::new`](super::Subscription::new) and
/// [`Projection::new`](crate::projection::Projection::new) check their name with it, and a
/// store checks the name it is asked to [`acquire`](SubscriptionStore::acquire) a lease on, or
/// record a [dead letter](SubscriptionStore::dead_letter) of: where a name enters the store.
/// The other calls take any name a store can hold ([`validate_stored_name`]), so that a
/// subscription named before these rules, or by another program, can still be read, reset
/// and released.
pub fn validate_name(name: &str) -> Result<()> {
    validate_stored_name(name)?;
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidInput(format!(
            "subscription name {:?}... is {} bytes long, above the limit of {MAX_NAME_LEN}",
            name.chars().take(32).collect::<String>(),
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| crate::text::is_unsafe(*c)) {
        return Err(Error::InvalidInput(format!(
            "subscription name {name:?} holds {c:?}: names are printed as they are, so they may \
             hold no control character, line separator or bidirectional override"
        )));
    }
    Ok(())
}

/// Checks a name a store is asked about (its checkpoint, its lease's release, a reset, its
/// dead letters): one every store can hold, not empty and with no NUL character; anything
/// else is [`Error::InvalidInput`].
///
/// Looser than [`validate_name`], which new names pass, so that every subscription a store
/// holds can be looked at and reset whatever its name.
pub fn validate_stored_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "subscription name {name:?} is empty or holds a NUL character"
        )));
    }
    Ok(())
}
