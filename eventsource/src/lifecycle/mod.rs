//! The lifecycle of a stream: streams that are closed for good.
//!
//! Some aggregates end: an order shipped and paid, an account closed, a subject's record
//! erased. [`Repository::close`](crate::Repository::close) closes a stream: it appends the
//! stream's last event, of the system event type [`CLOSED`] (`$StreamClosed`, with an empty
//! payload), and from then on:
//!
//! - a load gives the aggregate as it was, with [`AggregateRoot::is_closed`](crate::AggregateRoot::is_closed);
//! - a save of new events on it is [`Error::StreamClosed`], and
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

use std::sync::Arc;

use futures_util::StreamExt;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::EventStore;

/// The event type of the event that closes a stream.
pub const CLOSED: &str = "$StreamClosed";

/// Whether an event type is one of the library's system event types (they start with `$`),
/// which no aggregate's event enum decodes.
pub fn is_system_event(event_type: &str) -> bool {
    event_type.starts_with('$')
}

/// The event that closes the stream of `aggregate_type` and `aggregate_id` at `version`.
pub(crate) fn closing(aggregate_id: Uuid, aggregate_type: &str, version: u64) -> EventEnvelope {
    EventEnvelope::from_json(
        aggregate_id,
        Arc::<str>::from(aggregate_type),
        version,
        CLOSED,
        1,
        "{}",
    )
}

/// How often a close tries again after another writer appended first.
const CLOSE_ATTEMPTS: usize = 10;

/// Closes the stream of `aggregate_type` and `aggregate_id` in `events` (see the
/// [module docs](self)); its version after the closing event. A stream closed already is left
/// as it is; a stream without events is [`Error::NotFound`].
///
/// # Errors
///
/// [`Error::NotFound`] for a stream without events; [`Error::Conflict`] if other writers kept
/// appending through every attempt; [`Error::Store`] if the store failed (closing again is
/// safe: a stream closed already is recognised).
pub async fn close(events: &dyn EventStore, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
    let mut last_conflict = None;
    for _ in 0..CLOSE_ATTEMPTS {
        let version = events.stream_version(aggregate_id, aggregate_type).await?;
        if version == 0 {
            return Err(Error::NotFound {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id,
            });
        }
        let last = events
            .read_stream(aggregate_id, aggregate_type, version - 1)
            .next()
            .await
            .transpose()?;
        if last.is_some_and(|e| *e.event_type == *CLOSED) {
            return Ok(version);
        }
        let closing = closing(aggregate_id, aggregate_type, version + 1);
        match events
            .append(aggregate_id, aggregate_type, version, &[closing])
            .await
        {
            Ok(appended) => return Ok(appended.version),
            Err(e) if e.is_conflict() => last_conflict = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_conflict.expect("at least one attempt"))
}
