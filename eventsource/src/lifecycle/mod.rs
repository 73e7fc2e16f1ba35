//! The lifecycle of a stream: closed for good, deleted behind a tombstone, or archived behind
//! a snapshot.
//!
//! # Closing
//!
//! Some aggregates end: an order shipped and paid, an account closed, a subject's record
//! erased. [`Repository::close`](crate::Repository::close) ([`close`] on an event store)
//! closes a stream: it appends the stream's last event, of the system event type [`CLOSED`]
//! (`$StreamClosed`, with an empty payload), and from then on:
//!
//! - a load gives the aggregate as it was, with [`AggregateRoot::is_closed`](crate::AggregateRoot::is_closed);
//! - a save of new events on it is [`Error::StreamClosed`](crate::Error::StreamClosed), and
//!   nothing is written: through the repository, its command loop, a save over several
//!   streams and a save in the application's own transaction. A writer that loaded the
//!   aggregate before it was closed meets a conflict, loads it again, and then the same
//!   error;
//! - consumers see the closing event in the feed, like any other: a
//!   [`Typed`](crate::subscription::Typed) handler skips it, and a handler that decodes events
//!   itself skips the system event types ([`is_system_event`]) or acts on them (a read model
//!   that drops the rows of closed orders);
//! - a snapshot taken of the closed aggregate keeps it closed.
//!
//! Closing is enforced by this library's writers: a program that appends to the event store
//! directly, after reading the closing event, is not stopped. Event type names starting with
//! `$` belong to the library; `#[event(name = "...")]` refuses them.
//!
//! # Deleting
//!
//! [`Repository::delete`](crate::Repository::delete) ([`delete`] on the stores) deletes a
//! stream where the backend can ([`StreamLifecycle`]): in one transaction it appends the
//! tombstone, an event of the system type [`DELETED`] (`$StreamDeleted`), and removes every
//! other event of the stream (archived ones too) and the request ids its events recorded;
//! then the stream's snapshots. From then on:
//!
//! - a load is [`Error::StreamDeleted`](crate::Error::StreamDeleted), and so is a command;
//!   a save meets a conflict (the tombstone holds the next version), and after loading again,
//!   the same error. The id stays taken: a stream is deleted for good;
//! - the feed holds the tombstone at a new position, and none of the stream's earlier
//!   events: a consumer that had read them sees the tombstone next (a read model drops the
//!   stream's rows); a consumer that had not, or a projection rebuilt later, sees only the
//!   tombstone. Listings of streams (statistics, snapshot warming) leave it out. The [delivery guard](crate::subscription::OnDisorder) takes a tombstone
//!   past the versions it saw as what it is, not as a gap.
//!
//! # Archiving
//!
//! A long stream loads from its snapshot, but its events stay in the live table, where they
//! make every index larger. [`Repository::archive`](crate::Repository::archive) ([`archive`]
//! on the stores) moves the events before the aggregate's snapshot to the store's archive
//! (a table of its own beside the events) and keeps the snapshot's own event, which binds the
//! snapshot to the stream's history. From then on:
//!
//! - loads read the snapshot and the events after it, as before, and never the archive;
//! - a read of the stream from before the snapshot (a replay, `verify`, a load whose
//!   snapshot was invalidated) reads the archived events from the archive, then the live
//!   ones: the stream reads exactly as it did before it was archived, only slower;
//! - the feed no longer holds the archived events: a consumer that had not read them, or a
//!   projection rebuilt from the start, does not see them. Archive the streams that every
//!   consumer is past, and restore them before a rebuild that needs them;
//! - appends, closing and deleting work as before.
//!
//! [`Repository::restore`](crate::Repository::restore) ([`restore`]) moves the events back to
//! the live table, at their positions: the feed holds them again for readers that are before
//! them; a consumer past them does not see them again.

pub(crate) mod archive;
mod close;
mod delete;

pub use archive::{archive, restore, Archived};
pub use close::close;
pub use delete::{delete, Deleted};

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::error::Result;
use crate::event::EventEnvelope;
use crate::event_store::{Appended, EventStore};

/// The event type of the event that closes a stream.
pub const CLOSED: &str = "$StreamClosed";

/// The event type of a deleted stream's tombstone.
pub const DELETED: &str = "$StreamDeleted";

/// The event type of the event an [erasure](crate::erasure) appends to each stream that
/// holds the forgotten subject's values: a writer that loaded the aggregate before (its state
/// holds the values) meets a conflict, and loads it again with the values forgotten, so it
/// cannot write them back into a snapshot. It changes no state.
pub const SUBJECT_FORGOTTEN: &str = "$SubjectForgotten";

/// Whether an event type is one of the library's system event types (they start with `$`),
/// which no aggregate's event enum decodes.
pub fn is_system_event(event_type: &str) -> bool {
    event_type.starts_with('$')
}

/// A system event of the stream of `aggregate_type` and `aggregate_id` at `version`, with an
/// empty payload.
pub(crate) fn system_event(
    aggregate_id: Uuid,
    aggregate_type: &str,
    version: u64,
    event_type: &'static str,
) -> EventEnvelope {
    EventEnvelope::from_json(
        aggregate_id,
        Arc::<str>::from(aggregate_type),
        version,
        event_type,
        1,
        "{}",
    )
}

/// The type and version of the stream's last event, read as the one at `version` (or, if a
/// deletion came first, its tombstone, past it), if it has one.
pub(crate) async fn last_event(
    events: &dyn EventStore,
    aggregate_id: Uuid,
    aggregate_type: &str,
    version: u64,
) -> Result<Option<(String, u64)>> {
    let last = events
        .read_stream(aggregate_id, aggregate_type, version.saturating_sub(1))
        .next()
        .await
        .transpose()?;
    Ok(last.map(|e| (e.event_type.to_string(), e.aggregate_version)))
}

/// What deleting and archiving a stream need of a backend: events removed from its live
/// table, in one transaction with what goes with them. A value the backend hands out (see
/// [`crate::abilities`]); [`backend::Stores`](crate::backend::Stores) carries it, and every
/// backend of this crate has it.
///
/// # Contract
///
/// The conformance suite (`testing::stream_lifecycle`) checks:
///
/// - **Deleting.** [`delete_stream`](Self::delete_stream) appends `tombstone` (one event at
///   the version after `expected_version`) as [`EventStore::append`] would (checked, atomic,
///   a conflict if the stream is not at `expected_version`, acknowledged when made again
///   after a lost answer) and, in the same transaction, removes every other event of the
///   stream, archived ones too, and the request ids its events recorded (refusals stay until
///   [forgotten](crate::abilities::RequestIndex::forget_refusals)); a backend that keeps
///   snapshots beside the events removes the stream's snapshots too.
///   Afterwards the stream reads as the tombstone alone, at its version; the feed holds the
///   tombstone at a new position and none of the stream's earlier events.
/// - **Archiving.** [`archive_stream`](Self::archive_stream) moves the stream's events with
///   a version below `before_version` from the live table to the archive, at once for
///   every reader, and returns how many it moved (0 when none are left live).
///   `before_version` is at most the stream's version, so its last event stays live: else
///   [`Error::InvalidInput`](crate::Error::InvalidInput), and nothing moves. Archived
///   events still read in [`EventStore::read_stream`], [`EventStore::load_stream`] and
///   [`EventStore::position_of`], exactly as before; the feed ([`EventStore::read_all`],
///   its [head](EventStore::head), the feed by slice) no longer holds them. The stream's
///   version is unchanged, and appends go on.
/// - **Restoring.** [`restore_stream`](Self::restore_stream) moves the stream's archived
///   events back, at their positions, and returns how many it moved. An event id stored
///   again since its event was archived (the live table's key does not see the archive)
///   makes it [`Error::InvalidInput`](crate::Error::InvalidInput), and nothing moves.
///   [`archived`](Self::archived) counts the stream's archived events.
/// - **One at a time.** A deletion, an archive and a restore of one stream never interleave:
///   whichever commits first, the other sees all of it. A deletion racing a restore leaves the
///   tombstone alone.
#[async_trait]
pub trait StreamLifecycle: Send + Sync {
    /// Appends the tombstone if the stream is at `expected_version`, and removes the
    /// stream's other events, its request ids and (where the backend keeps them) its
    /// snapshots, in one transaction; see the contract.
    async fn delete_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        tombstone: &EventEnvelope,
    ) -> Result<Appended>;

    /// Moves the stream's events with a version below `before_version` to the archive;
    /// returns how many it moved.
    async fn archive_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        before_version: u64,
    ) -> Result<u64>;

    /// Moves the stream's archived events back to the live table; returns how many it moved.
    async fn restore_stream(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64>;

    /// How many of the stream's events are archived.
    async fn archived(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64>;
}

/// [`Error::InvalidInput`](crate::Error::InvalidInput) for an archive that would move the
/// stream's last event, or every one: `before_version` past `version`.
pub(crate) fn check_archive_bound(
    aggregate_id: Uuid,
    aggregate_type: &str,
    before_version: u64,
    version: u64,
) -> Result<()> {
    if before_version > version {
        return Err(crate::error::Error::InvalidInput(format!(
            "cannot archive the events of {aggregate_type} {aggregate_id} before version \
             {before_version}: the stream is at version {version}, and its last event stays live"
        )));
    }
    Ok(())
}
