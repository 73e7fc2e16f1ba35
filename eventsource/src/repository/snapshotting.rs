//! Snapshotting: snapshots taken after saves and on request, every snapshot store call bounded
//! in time and guarded against a store that panics.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use tracing::Instrument;
use uuid::Uuid;

use super::{Repository, Snapshots};
use crate::aggregate::Aggregate;
use crate::codec;
use crate::deadline;
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::Appended;
use crate::root::AggregateRoot;
use crate::snapshot::metrics::Counter;
use crate::snapshot::{
    delete_snapshot, delete_snapshots_by_type, Snapshot, SnapshotMetrics, SnapshotMode, SnapshotStore,
};

impl<A: Aggregate> Repository<A> {
    pub(super) async fn snapshot_after_save(&self, snapshots: &Snapshots, root: &AggregateRoot<A>) {
        let snapshot = match take_snapshot(root) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.metrics.add(A::TYPE_NAME, Counter::WriteFailed);
                tracing::warn!(aggregate.id = %root.id(), aggregate.type = A::TYPE_NAME, error = %e, "cannot serialize snapshot state");
                return;
            }
        };
        let snapshot = match &snapshots.queue {
            Some(queue) => match queue.schedule(snapshot) {
                None => return,
                Some(overflow) => overflow,
            },
            None => snapshot,
        };
        // Failures are logged and counted inside; the save has succeeded regardless.
        let _ = write_snapshot(
            &*snapshots.store,
            &self.metrics,
            A::TYPE_NAME,
            snapshots.policy.store_timeout(),
            &snapshot,
        )
        .await;
    }

    /// Appends the root's events with their due snapshot in one round trip, where the stores
    /// can (`Sync` mode, and an event store that writes the snapshot store's table); whether
    /// the snapshot went with them. An append with its snapshot that fails for any reason
    /// but a conflict, or outlasts the policy's store timeout (the snapshots table may be
    /// locked), is made again without it (an append made again is acknowledged, never stored
    /// twice), so a snapshot never fails or holds up a save; the caller then writes the
    /// snapshot on its own, as it does when the batch was found stored by an earlier try.
    pub(super) async fn append_and_snapshot(
        &self,
        snapshots: &Snapshots,
        root: &AggregateRoot<A>,
        envelopes: &[EventEnvelope],
    ) -> Result<(Appended, bool)> {
        let joint = snapshots
            .joint
            .as_ref()
            .filter(|_| snapshots.policy.mode() == SnapshotMode::Sync)
            .and_then(|joint| Some((joint.writer(), take_snapshot(root).ok()?)));
        let Some((writer, snapshot)) = joint else {
            return Ok((self.append(root, envelopes).await?, false));
        };
        let joint_append = writer.append_with_snapshot(
            root.id(),
            A::TYPE_NAME,
            root.saved_version(),
            envelopes,
            &snapshot,
        );
        let appended = match snapshots.policy.store_timeout() {
            None => Some(joint_append.await),
            Some(timeout) => deadline::within(timeout, joint_append).await,
        };
        match appended {
            Some(Ok((appended, stored))) => {
                if stored {
                    self.metrics.add(A::TYPE_NAME, Counter::Written);
                }
                Ok((appended, stored))
            }
            Some(Err(e @ Error::Conflict { .. })) => Err(e),
            failed => {
                let why = match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => "it outlasted the snapshot store timeout".to_owned(),
                };
                tracing::warn!(aggregate.id = %root.id(), aggregate.type = A::TYPE_NAME, error = %why, "the append with its snapshot failed; appending without it");
                Ok((self.append(root, envelopes).await?, false))
            }
        }
    }

    /// Deletes the aggregate's snapshots, of every schema version; whether there was one. Its
    /// next load replays every event. [`Error::InvalidConfiguration`] if the repository has
    /// no snapshot store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] without a snapshot
    /// store; [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, the snapshots may or may not be deleted; they are a cache,
    /// and deleting again is safe.
    pub async fn delete_snapshot(&self, id: Uuid) -> Result<bool> {
        let store = self.configured_snapshot_store()?;
        delete_snapshot(&**store, A::TYPE_NAME, id).await
    }

    /// Deletes the snapshots of this aggregate type whose schema version is below
    /// `schema_version_below` (every one when it is `None`): after a schema change, or to roll
    /// snapshots back; returns how many it deleted. [`Error::InvalidConfiguration`] if the
    /// repository has no snapshot store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] without a snapshot
    /// store; [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, some snapshots may be deleted and others not; they are a
    /// cache, and invalidating again is safe.
    pub async fn invalidate_snapshots(&self, schema_version_below: Option<u32>) -> Result<u64> {
        let store = self.configured_snapshot_store()?;
        delete_snapshots_by_type(&**store, A::TYPE_NAME, schema_version_below).await
    }

    fn configured_snapshot_store(&self) -> Result<&std::sync::Arc<dyn SnapshotStore>> {
        self.snapshot_store().ok_or_else(|| {
            Error::InvalidConfiguration(format!(
                "the repository of {} has no snapshot store",
                A::TYPE_NAME
            ))
        })
    }

    /// Writes a snapshot of the aggregate now, whatever the mode, and returns it.
    ///
    /// Refused with [`Error::UnsavedEvents`] if the aggregate has events not yet saved (a
    /// snapshot must stand for stored events only), with [`Error::NotFound`] if it has no
    /// events at all, and with [`Error::InvalidConfiguration`] if the repository has no
    /// snapshot store. A state whose JSON would not load back is [`Error::Serialization`].
    /// A store failure is returned, since the snapshot was asked for.
    ///
    /// The snapshot follows the event at the root's version. A root built with
    /// [`AggregateRoot::from_state`] does not know that event, so it is read from the event
    /// store; a stream that has not reached the root's version is [`Error::InvalidInput`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] without a snapshot
    /// store; [`Error::UnsavedEvents`] for a root with unsaved
    /// events; [`Error::Serialization`] for a state that cannot be
    /// stored; [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, the snapshot may or may not be written; it is a cache.
    pub async fn create_snapshot(&self, root: &AggregateRoot<A>) -> Result<Snapshot> {
        Ok(self.write_root_snapshot(root).await?.0)
    }

    /// [`create_snapshot`](Self::create_snapshot), and whether the store kept the snapshot
    /// (it keeps a newer one of the schema instead).
    async fn write_root_snapshot(&self, root: &AggregateRoot<A>) -> Result<(Snapshot, bool)> {
        let span = tracing::debug_span!(
            "eventsource.repository.create_snapshot",
            aggregate.id = %root.id(),
            aggregate.type = A::TYPE_NAME,
            version = root.version(),
        );
        async {
            let snapshots = self.snapshots.as_ref().ok_or_else(|| {
                Error::InvalidConfiguration(format!(
                    "the {} repository has no snapshot store; configure one with with_snapshots",
                    A::TYPE_NAME
                ))
            })?;
            if root.has_pending_events() {
                return Err(Error::UnsavedEvents {
                    aggregate_type: A::TYPE_NAME.to_owned(),
                    aggregate_id: root.id(),
                    count: root.pending_events().len(),
                });
            }
            if root.version() == 0 {
                return Err(Error::NotFound {
                    aggregate_type: A::TYPE_NAME.to_owned(),
                    aggregate_id: root.id(),
                });
            }
            let snapshot = match root.last_event_id() {
                Some(_) => take_snapshot(root)?,
                None => {
                    let event_id = self.event_id_at(root.id(), root.version()).await?;
                    snapshot_of(root, event_id)?
                }
            };
            let stored = write_snapshot(
                &*snapshots.store,
                &self.metrics,
                A::TYPE_NAME,
                snapshots.policy.store_timeout(),
                &snapshot,
            )
            .await?;
            Ok((snapshot, stored))
        }
        .instrument(span)
        .await
    }

    /// Writes a snapshot of the aggregate at the current schema version from a full replay of
    /// its stream, whatever snapshot is stored, and returns it: how operators warm the
    /// snapshots of a type after a schema bump, or of aggregates that are read far more than
    /// written (see the admin command line).
    ///
    /// Safe beside live writers: the snapshot stands for the version the replay reached, and
    /// the store never replaces a newer snapshot with it. Returns the snapshot written, or
    /// `None` when the store kept the newer one it has (a live save's, or one beyond the
    /// stream's head, which a load then discards). A stream with no events is
    /// [`Error::NotFound`]; the other refusals are [`create_snapshot`](Self::create_snapshot)'s.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), and
    /// [`Error::InvalidConfiguration`] without a snapshot
    /// store.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, the snapshot may or may not be written; it is a cache, and
    /// warming again is safe.
    pub async fn warm_snapshot(&self, id: Uuid) -> Result<Option<Snapshot>> {
        let root = self.replay_all(id).await?;
        let (snapshot, stored) = self.write_root_snapshot(&root).await?;
        Ok(stored.then_some(snapshot))
    }

    /// The id of the stream's event at `version`.
    async fn event_id_at(&self, id: Uuid, version: u64) -> Result<Uuid> {
        let mut events = self.events.read_stream(id, A::TYPE_NAME, version - 1);
        match events.next().await.transpose()? {
            Some(event) if event.aggregate_version == version => Ok(event.event_id),
            _ => Err(Error::InvalidInput(format!(
                "cannot snapshot {} {id} at version {version}: the stream has not reached it",
                A::TYPE_NAME
            ))),
        }
    }

    /// Waits for the background snapshots scheduled before this call, and returns how many
    /// snapshots were written of those scheduled since the previous call returned: whenever
    /// they were written, before this call (by a worker that was quick) or while it waited.
    /// The others failed, and were logged and counted.
    ///
    /// Precisely: each call counts the snapshots scheduled after the point the last call that
    /// had returned before it began counted up to, and before it began. So a snapshot is
    /// counted once by calls one after another (`save`, `await` gives 1, `await` again gives
    /// 0), and callers that wait at the same time each count every snapshot scheduled before
    /// them. A call that was dropped before it returned counts nothing, and its snapshots are
    /// counted by the next one. A snapshot scheduled again for the same aggregate before the
    /// first was written replaces it, and is counted once.
    ///
    /// Snapshots scheduled while it waits are not waited for, so it returns under steady
    /// traffic too. Returns 0 at once in the other modes.
    ///
    /// # Cancel safety
    ///
    /// Waiting only: the snapshots go on being written in the background.
    pub async fn await_pending_snapshots(&self) -> usize {
        match self.snapshots.as_ref().and_then(|s| s.queue.as_ref()) {
            Some(queue) => queue.wait_for_scheduled().await,
            None => 0,
        }
    }

    /// How many background snapshots are waiting to be written.
    pub fn pending_snapshots(&self) -> usize {
        self.snapshots
            .as_ref()
            .and_then(|s| s.queue.as_ref())
            .map_or(0, |q| q.pending())
    }
}

/// The snapshot of a root's state now, following the root's last event, serialized at once.
fn take_snapshot<A: Aggregate>(root: &AggregateRoot<A>) -> Result<Snapshot> {
    let event_id = root.last_event_id().ok_or_else(|| {
        Error::InvalidInput(format!(
            "{} {} does not know the event at its version {}",
            A::TYPE_NAME,
            root.id(),
            root.version()
        ))
    })?;
    snapshot_of(root, event_id)
}

fn snapshot_of<A: Aggregate>(root: &AggregateRoot<A>, event_id: Uuid) -> Result<Snapshot> {
    let what = || format!("snapshot state of {} {}", A::TYPE_NAME, root.id());
    let state = codec::to_json(root.state(), what)?;
    codec::loadable_state::<A>(&state, what)?;
    Ok(Snapshot {
        aggregate_id: root.id(),
        aggregate_type: A::TYPE_NAME.to_owned(),
        version: root.version(),
        event_id: Some(event_id),
        state,
        schema_version: A::SCHEMA_VERSION,
        created_at: Utc::now(),
    })
}

/// The outcome of a snapshot store call, or a store error if it takes longer than `timeout`
/// or panics: a snapshot store can fail a snapshot, never the load or save around it.
pub(super) async fn bounded<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let call = AssertUnwindSafe(call).catch_unwind();
    let outcome = match timeout {
        None => call.await,
        Some(timeout) => match deadline::within(timeout, call).await {
            Some(outcome) => outcome,
            None => {
                return Err(Error::Store {
                    backend: "snapshot",
                    message: format!("snapshot store did not answer within {timeout:?}"),
                    transient: true,
                    source: None,
                })
            }
        },
    };
    outcome.unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(Error::Store {
            backend: "snapshot",
            message: format!("snapshot store panicked: {reason}"),
            transient: false,
            source: None,
        })
    })
}

/// Writes one snapshot within the policy's timeout, counting and logging the outcome.
pub(super) async fn write_snapshot(
    store: &dyn SnapshotStore,
    metrics: &SnapshotMetrics,
    aggregate_type: &'static str,
    timeout: Option<Duration>,
    snapshot: &Snapshot,
) -> Result<bool> {
    let span = tracing::debug_span!(
        "eventsource.snapshot.save",
        aggregate.id = %snapshot.aggregate_id,
        aggregate.type = aggregate_type,
        snapshot.version = snapshot.version,
    );
    match bounded(timeout, store.save_snapshot(snapshot).instrument(span)).await {
        Ok(stored) => {
            metrics.add(aggregate_type, Counter::Written);
            Ok(stored)
        }
        Err(e) => {
            metrics.add(aggregate_type, Counter::WriteFailed);
            tracing::warn!(
                aggregate.id = %snapshot.aggregate_id,
                aggregate.type = aggregate_type,
                snapshot.version = snapshot.version,
                error = %e,
                "snapshot write failed; loads replay the events instead"
            );
            Err(e)
        }
    }
}

/// Deletes the aggregate's snapshot, logging a failure.
pub(super) async fn discard(
    store: &dyn SnapshotStore,
    aggregate_type: &'static str,
    timeout: Option<Duration>,
    id: Uuid,
) {
    if let Err(e) = bounded(timeout, delete_snapshot(store, aggregate_type, id)).await {
        tracing::warn!(
            aggregate.id = %id,
            aggregate.type = aggregate_type,
            error = %e,
            "cannot delete a snapshot of another history; loads replay every event until it is replaced"
        );
    }
}
