//! Closing, deleting and archiving an aggregate's stream (see [`crate::lifecycle`]).

use uuid::Uuid;

use super::Repository;
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::lifecycle::{Archived, Deleted, StreamLifecycle};
use crate::registry;
use crate::snapshot::SnapshotStore;

impl<A: Aggregate> Repository<A> {
    /// Closes the aggregate's stream for good (see [`crate::lifecycle`]): later saves of new
    /// events on it are [`Error::StreamClosed`]. Returns its
    /// version after the closing event; a stream closed already is left as it is.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an aggregate without events;
    /// [`Error::Conflict`] if other writers kept appending through
    /// every attempt; [`Error::Store`] if the store failed.
    ///
    /// # Cancel safety
    ///
    /// Dropped, the stream is closed or not: closing it again finds out, and closes it once.
    pub async fn close(&self, id: Uuid) -> Result<u64> {
        registry::check()?;
        crate::lifecycle::close(&*self.events, id, A::TYPE_NAME).await
    }

    /// Deletes the aggregate's stream for good (see [`crate::lifecycle`]): its events, request
    /// ids and snapshots go, a tombstone takes the next version, and later loads and commands
    /// are [`Error::StreamDeleted`]. A stream deleted already is left as it is (its
    /// snapshots are deleted again, in case a deletion was cut short).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] if the repository has no
    /// [stream lifecycle](Self::with_stream_lifecycle); [`Error::NotFound`] for an aggregate
    /// without events; [`Error::Conflict`] if other writers kept appending through every
    /// attempt; [`Error::Store`] if a store failed (deleting again is safe).
    ///
    /// # Cancel safety
    ///
    /// Dropped, the stream is deleted or not, and its snapshots may be left: deleting again
    /// finishes.
    pub async fn delete(&self, id: Uuid) -> Result<Deleted> {
        registry::check()?;
        let (lifecycle, snapshots) = self.lifecycle()?;
        crate::lifecycle::delete(&*self.events, lifecycle, Some(snapshots), id, A::TYPE_NAME).await
    }

    /// Archives the aggregate's events before a snapshot taken now (see
    /// [`crate::lifecycle`]): loads start from that snapshot and never read the archive;
    /// reads of the whole stream still give every event; the feed no longer holds the
    /// archived ones. Archiving again moves the events appended since.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load) and [`create_snapshot`](Self::create_snapshot);
    /// [`Error::InvalidConfiguration`] if the repository has no
    /// [stream lifecycle](Self::with_stream_lifecycle) or no snapshot store.
    ///
    /// # Cancel safety
    ///
    /// The move is one transaction: dropped, it happened or not (the snapshot may be
    /// written either way).
    pub async fn archive(&self, id: Uuid) -> Result<Archived> {
        let (lifecycle, _) = self.lifecycle()?;
        let root = self.load(id).await?;
        self.create_snapshot(&root).await?;
        crate::lifecycle::archive::archive_before(lifecycle, id, A::TYPE_NAME, root.version()).await
    }

    /// Moves the aggregate's archived events back to the live table and the feed (see
    /// [`crate::lifecycle`]); returns how many it moved.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] if the repository has no
    /// [stream lifecycle](Self::with_stream_lifecycle); [`Error::Store`] if the store failed
    /// (restoring again is safe).
    ///
    /// # Cancel safety
    ///
    /// The move is one transaction: dropped, it happened or not.
    pub async fn restore(&self, id: Uuid) -> Result<u64> {
        crate::lifecycle::restore(self.lifecycle()?.0, id, A::TYPE_NAME).await
    }

    fn lifecycle(&self) -> Result<(&dyn StreamLifecycle, &dyn SnapshotStore)> {
        let lifecycle = self.lifecycle.as_ref().map(|(l, s)| (&**l, &**s));
        lifecycle.ok_or_else(|| {
            Error::InvalidConfiguration(format!(
                "the repository of {} cannot delete or archive streams: build it with \
                 Stores::repository, or give it the event store's stream lifecycle",
                A::TYPE_NAME
            ))
        })
    }
}
