//! Deleting a stream behind a tombstone.

use uuid::Uuid;

use super::{last_event, system_event, StreamLifecycle, DELETED};
use crate::error::{Error, Result};
use crate::event_store::EventStore;
use crate::snapshot::SnapshotStore;

/// How often a deletion tries again after another writer appended first.
const DELETE_ATTEMPTS: usize = 10;

/// What [`delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deleted {
    /// The version of the tombstone: the stream's version from now on.
    pub version: u64,
    /// Whether this call deleted it (`false`: it was deleted already, and only what a
    /// deletion cut short left behind was removed).
    pub now: bool,
}

/// Deletes the stream of `aggregate_type` and `aggregate_id` (see the [module docs](super)):
/// appends its tombstone and removes its other events and request ids through `lifecycle`,
/// then its snapshots from `snapshots`. A stream deleted already is left as it is, but its
/// snapshots are deleted again: a deletion cut short between the two finishes.
///
/// # Errors
///
/// [`Error::NotFound`] for a stream without events; [`Error::Conflict`] if other writers kept
/// appending through every attempt; [`Error::Store`] if a store failed (deleting again is
/// safe).
///
/// # Cancel safety
///
/// Dropped, the stream is deleted or not, and its snapshots may be left: deleting again
/// finishes.
pub async fn delete(
    events: &dyn EventStore,
    lifecycle: &dyn StreamLifecycle,
    snapshots: Option<&dyn SnapshotStore>,
    aggregate_id: Uuid,
    aggregate_type: &str,
) -> Result<Deleted> {
    let deleted = delete_events(events, lifecycle, aggregate_id, aggregate_type).await?;
    if let Some(snapshots) = snapshots {
        crate::snapshot::delete_snapshot(snapshots, aggregate_type, aggregate_id).await?;
    }
    tracing::info!(
        aggregate.id = %aggregate_id,
        aggregate.type = aggregate_type,
        version = deleted.version,
        "stream deleted"
    );
    Ok(deleted)
}

async fn delete_events(
    events: &dyn EventStore,
    lifecycle: &dyn StreamLifecycle,
    aggregate_id: Uuid,
    aggregate_type: &str,
) -> Result<Deleted> {
    let mut last_conflict = None;
    for _ in 0..DELETE_ATTEMPTS {
        let version = events.stream_version(aggregate_id, aggregate_type).await?;
        if version == 0 {
            return Err(Error::NotFound {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id,
            });
        }
        if let Some((last, at)) = last_event(events, aggregate_id, aggregate_type, version).await? {
            if last == DELETED {
                return Ok(Deleted {
                    version: at,
                    now: false,
                });
            }
        }
        let tombstone = system_event(aggregate_id, aggregate_type, version + 1, DELETED);
        match lifecycle
            .delete_stream(aggregate_id, aggregate_type, version, &tombstone)
            .await
        {
            Ok(appended) => {
                return Ok(Deleted {
                    version: appended.version,
                    now: true,
                })
            }
            Err(e) if e.is_conflict() => last_conflict = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_conflict.expect("at least one attempt"))
}
