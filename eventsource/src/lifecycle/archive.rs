//! Archiving a stream's events behind its snapshot, and restoring them.

use futures_util::StreamExt;
use uuid::Uuid;

use super::StreamLifecycle;
use crate::error::{Error, Result};
use crate::event_store::EventStore;
use crate::snapshot::SnapshotStore;

/// What [`archive`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Archived {
    /// The version of the snapshot the stream is archived behind: its events before it are
    /// in the archive.
    pub before_version: u64,
    /// How many events this call moved to the archive.
    pub moved: u64,
}

/// Archives the events of the stream of `aggregate_type` and `aggregate_id` before its
/// newest snapshot (of any schema version) that follows the stream's history (see the
/// [module docs](super)). Archiving again moves what was appended before that snapshot
/// since.
///
/// [`Repository::archive`](crate::Repository::archive) takes a snapshot at the current
/// version first, of the current schema, so that loads keep starting from it.
///
/// # Errors
///
/// [`Error::InvalidInput`] if the stream has no snapshot, or its newest one does not follow
/// the stream's history (take one first: `admin snapshots rewarm`, or
/// [`Repository::create_snapshot`](crate::Repository::create_snapshot));
/// [`Error::Store`] if a store failed (archiving again is safe).
///
/// # Cancel safety
///
/// The move is one transaction: dropped, it happened or not.
pub async fn archive(
    events: &dyn EventStore,
    snapshots: &dyn SnapshotStore,
    lifecycle: &dyn StreamLifecycle,
    aggregate_id: Uuid,
    aggregate_type: &str,
) -> Result<Archived> {
    let what = || format!("{aggregate_type} {aggregate_id}");
    let snapshot = snapshots
        .get_snapshot(aggregate_id, aggregate_type, u32::MAX)
        .await?
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "cannot archive {}: it has no snapshot to load from; take one first",
                what()
            ))
        })?;
    let at = events
        .read_stream(aggregate_id, aggregate_type, snapshot.version.saturating_sub(1))
        .next()
        .await
        .transpose()?;
    let follows = at.as_ref().is_some_and(|event| {
        event.aggregate_version == snapshot.version && snapshot.event_id.is_none_or(|id| id == event.event_id)
    });
    if !follows {
        return Err(Error::InvalidInput(format!(
            "cannot archive {}: its snapshot at version {} does not follow the stream's history; \
             take one again first",
            what(),
            snapshot.version
        )));
    }
    archive_before(lifecycle, aggregate_id, aggregate_type, snapshot.version).await
}

/// Archives the stream's events before `before_version`, which a snapshot stands for.
pub(crate) async fn archive_before(
    lifecycle: &dyn StreamLifecycle,
    aggregate_id: Uuid,
    aggregate_type: &str,
    before_version: u64,
) -> Result<Archived> {
    let moved = lifecycle
        .archive_stream(aggregate_id, aggregate_type, before_version)
        .await?;
    tracing::info!(
        aggregate.id = %aggregate_id,
        aggregate.type = aggregate_type,
        before_version,
        moved,
        "stream archived"
    );
    Ok(Archived {
        before_version,
        moved,
    })
}

/// Moves the archived events of the stream of `aggregate_type` and `aggregate_id` back to
/// the live table (see the [module docs](super)); returns how many it moved.
///
/// # Errors
///
/// [`Error::Store`] if the store failed (restoring again is safe).
///
/// # Cancel safety
///
/// The move is one transaction: dropped, it happened or not.
pub async fn restore(
    lifecycle: &dyn StreamLifecycle,
    aggregate_id: Uuid,
    aggregate_type: &str,
) -> Result<u64> {
    let moved = lifecycle.restore_stream(aggregate_id, aggregate_type).await?;
    tracing::info!(
        aggregate.id = %aggregate_id,
        aggregate.type = aggregate_type,
        moved,
        "stream restored"
    );
    Ok(moved)
}
