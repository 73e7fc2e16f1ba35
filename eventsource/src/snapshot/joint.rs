//! Reading a snapshot and the events after it, and appending events with a snapshot, in one
//! round trip, where an event store can reach its snapshot store's data itself (both in one
//! database).

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use super::{Snapshot, SnapshotStore};
use crate::error::Result;
use crate::event::EventEnvelope;
use crate::event_store::{Appended, EventStream};

/// A stored snapshot and the stream's events from the snapshot's version on.
pub struct SnapshotAndEvents<'a> {
    /// The snapshot, as stored: the repository checks it as it checks any snapshot.
    pub snapshot: Snapshot,
    /// The stream's events with an aggregate version of at least the snapshot's version, in
    /// order: the first one, at the snapshot's version, proves the stream has reached it.
    pub events: EventStream<'a>,
}

impl std::fmt::Debug for SnapshotAndEvents<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotAndEvents")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// Reads an aggregate's snapshot together with the events after it, in one statement.
///
/// A repository loads with a snapshot by reading the snapshot, then the events from its
/// version on: two round trips to the database. Given [`JointSnapshots`], it makes a single
/// round trip instead. The outcome is
/// the same as the two reads: the repository checks the snapshot (schema version, state,
/// stream head) exactly as it does otherwise, and on a miss replays every event.
#[async_trait]
pub trait JointSnapshotRead: Send + Sync {
    /// The aggregate's snapshot with the highest schema version not above `schema_version`
    /// (as [`SnapshotStore::get_snapshot`](super::SnapshotStore::get_snapshot) chooses it)
    /// and the events from its version on, or `None` if no such snapshot is stored. An error counts as a snapshot store error: the repository then replays
    /// every event through [`EventStore::read_stream`](crate::EventStore::read_stream).
    /// The snapshot policy's store timeout covers this call, so it covers whatever part of
    /// the events the reader fetches with the snapshot.
    async fn read<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        schema_version: u32,
    ) -> Result<Option<SnapshotAndEvents<'a>>>;
}

/// Appends events and stores the snapshot taken after them, in one statement.
///
/// A save whose snapshot is due in [`SnapshotMode::Sync`](super::SnapshotMode::Sync) appends,
/// then writes the snapshot: two round trips. When the event store can write the snapshot
/// store's table itself, given [`JointSnapshots`], the repository makes a single round trip
/// instead.
#[async_trait]
pub trait JointSnapshotWrite: Send + Sync {
    /// Appends as [`EventStore::append`](crate::EventStore::append) does, with its contract (checked version, atomic batch, idempotent retries), and in the
    /// same transaction stores `snapshot` as
    /// [`SnapshotStore::save_snapshot`](super::SnapshotStore::save_snapshot) would (never
    /// replacing a newer one): both, or neither.
    ///
    /// Returns what the append stored, and whether the snapshot was stored with it: `false`
    /// when the batch was found stored already by an earlier try (an append made again is
    /// acknowledged, never stored twice), and the snapshot then is not; the repository
    /// writes it on its own.
    ///
    /// A conflict or an invalid batch is the append's own error. Any other error leaves it
    /// unknown whether the statement committed: the repository then appends again without
    /// the snapshot and writes the snapshot on its own, so a snapshot never fails a save.
    async fn append_with_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
        snapshot: &Snapshot,
    ) -> Result<(Appended, bool)>;
}

/// A snapshot store together with the statements that read and write its snapshots with an
/// event store's events, where both keep their data in one database: the ability a backend
/// hands out (through [`backend::Stores`](crate::backend::Stores), or a backend's own
/// constructor) for [`Repository::with_joint_snapshots`](crate::Repository::with_joint_snapshots).
///
/// The three belong together: the reader and the writer reach exactly the tables of `store`
/// and of one event store, which is why they are handed out as one value.
#[derive(Clone)]
pub struct JointSnapshots {
    store: Arc<dyn SnapshotStore>,
    reader: Arc<dyn JointSnapshotRead>,
    writer: Arc<dyn JointSnapshotWrite>,
}

impl JointSnapshots {
    /// The snapshot store `store`, whose snapshots `reader` reads and `writer` writes with the
    /// events of one event store. A backend builds this; it must not pair statements with a
    /// store whose tables they do not reach.
    pub fn new(
        store: Arc<dyn SnapshotStore>,
        reader: Arc<dyn JointSnapshotRead>,
        writer: Arc<dyn JointSnapshotWrite>,
    ) -> Self {
        JointSnapshots {
            store,
            reader,
            writer,
        }
    }

    /// The snapshot store.
    pub fn store(&self) -> &Arc<dyn SnapshotStore> {
        &self.store
    }

    /// The reader of a snapshot with the events after it.
    pub fn reader(&self) -> &Arc<dyn JointSnapshotRead> {
        &self.reader
    }

    /// The writer of events with a snapshot.
    pub fn writer(&self) -> &Arc<dyn JointSnapshotWrite> {
        &self.writer
    }
}

impl std::fmt::Debug for JointSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JointSnapshots").finish_non_exhaustive()
    }
}
