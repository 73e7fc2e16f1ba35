//! Closing a stream for good.

use uuid::Uuid;

use super::{last_event, system_event, CLOSED};
use crate::error::{Error, Result};
use crate::event_store::EventStore;

/// How often a close tries again after another writer appended first.
const CLOSE_ATTEMPTS: usize = 10;

/// Closes the stream of `aggregate_type` and `aggregate_id` in `events` (see the
/// [module docs](super)); its version after the closing event. A stream closed already is left
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
        match last_event(events, aggregate_id, aggregate_type, version).await? {
            Some((last, at)) if last == CLOSED => return Ok(at),
            Some((last, _)) if last == super::DELETED => {
                return Err(Error::StreamDeleted {
                    aggregate_type: aggregate_type.to_owned(),
                    aggregate_id,
                })
            }
            _ => {}
        }
        let closing = system_event(aggregate_id, aggregate_type, version + 1, CLOSED);
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
