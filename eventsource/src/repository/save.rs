//! Saving: the recorded events appended as one batch, then a snapshot if the policy says so.

use tracing::Instrument;

use super::requests::CommandRequest;
use super::Repository;
use crate::aggregate::Aggregate;
use crate::error::Result;
use crate::event::EventEnvelope;
use crate::event_store::Appended;
use crate::registry;
use crate::root::AggregateRoot;

impl<A: Aggregate> Repository<A> {
    /// Appends the aggregate's unsaved events, expecting the stream at its saved version.
    ///
    /// On success the events are no longer pending and the new version is returned; the
    /// root's [`position`](AggregateRoot::position) tells where its last event is in the feed
    /// (for read-your-writes, see [`crate::projection`]); a snapshot is then taken if the
    /// policy says so. A snapshot that fails to be written is
    /// logged and counted and never fails the save, and a save whose future is dropped while
    /// its snapshot is written has saved its events all the same.
    ///
    /// Before anything is written, each event and its metadata are encoded and decoded
    /// again: an event that cannot be stored as JSON, or whose JSON would not load back (a
    /// non-finite float, nesting deeper than the decoder's limit, a `Deserialize` that does
    /// not read what `Serialize` wrote), is [`Error::Serialization`](crate::Error::Serialization) and nothing is written.
    ///
    /// On any error the events stay pending on `root`, under the ids they were given when
    /// they were recorded. After [`Error::Conflict`](crate::Error::Conflict) (another writer saved first),
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) or [`Error::Serialization`](crate::Error::Serialization) nothing was written. After
    /// [`Error::Store`](crate::Error::Store), or when the future was dropped before it finished (a cancelled
    /// request, a timeout), the append may have committed, and saving the same root again is
    /// the way to find out: if its events were stored, the store recognises them by their
    /// ids and the save returns `Ok` with their version, without writing them twice; if they
    /// were not, they are appended now (or meet a [`Error::Conflict`](crate::Error::Conflict) if another writer came
    /// first). So a retry loop never applies a command twice and never reports a stored one
    /// as failed. [`Error::is_transient`](crate::Error::is_transient) tells which store
    /// errors are worth retrying.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`](crate::Error::Conflict) if another writer saved first;
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) or
    /// [`Error::Serialization`](crate::Error::Serialization) for events that cannot be stored;
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    /// Nothing is written but after a store error, as said above.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, the events may or may not be stored: save the same root
    /// again, which finds them by their ids (see above). A snapshot being written is finished
    /// or not; it is a cache.
    pub async fn save(&self, root: &mut AggregateRoot<A>) -> Result<u64> {
        self.save_requested(root, None).await
    }

    /// [`save`](Self::save), recording `request` with the events where there is a request
    /// index (then without the joint statement: the snapshot is written after the events).
    pub(super) async fn save_requested(
        &self,
        root: &mut AggregateRoot<A>,
        request: Option<&CommandRequest>,
    ) -> Result<u64> {
        registry::check()?;
        if !root.has_pending_events() {
            return Ok(root.version());
        }
        let saved = root.pending_events().len() as u64;
        let span = tracing::debug_span!(
            "eventsource.repository.save",
            aggregate.id = %root.id(),
            aggregate.type = A::TYPE_NAME,
            version = root.version(),
            events.saved = saved,
            error = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let outcome: Result<u64> = async {
            let envelopes = root.pending_envelopes()?.seal(self.keys.as_ref()).await?;
            let due = self
                .snapshots
                .as_ref()
                .filter(|s| s.policy.is_due(root.version(), saved));
            let recorded = request.filter(|_| self.requests.is_some());
            let (appended, snapshotted) = match (due, recorded) {
                (Some(snapshots), None) => self.append_and_snapshot(snapshots, root, &envelopes).await?,
                _ => {
                    let appended = self
                        .append_requested(root.id(), root.saved_version(), &envelopes, recorded)
                        .await?;
                    (appended, false)
                }
            };
            // Before the snapshot: from here on the save has happened, whatever becomes of it.
            root.mark_saved(appended.position);
            if let Some(snapshots) = due.filter(|_| !snapshotted) {
                self.snapshot_after_save(snapshots, root).await;
            }
            crate::telemetry::save(A::TYPE_NAME, started.elapsed());
            Ok(root.version())
        }
        .instrument(span.clone())
        .await;
        match &outcome {
            Ok(_) => crate::telemetry::events_written(A::TYPE_NAME, saved),
            Err(e) => {
                span.record("error", tracing::field::display(e));
                if e.is_conflict() {
                    crate::telemetry::conflict(A::TYPE_NAME);
                }
                crate::telemetry::store_error("save", e);
            }
        }
        outcome
    }

    /// Appends the root's unsaved events, expecting its saved version.
    pub(super) async fn append(
        &self,
        root: &AggregateRoot<A>,
        envelopes: &[EventEnvelope],
    ) -> Result<Appended> {
        self.append_requested(root.id(), root.saved_version(), envelopes, None)
            .await
    }

    /// The feed position of the aggregate's event at `version`: what a reader of the feed (a
    /// [projection](crate::projection)) must have reached to show the aggregate at that
    /// version. [`Error::NotFound`](crate::Error::NotFound) if the stream has no such event.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) if the stream has no event at `version`;
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn position(&self, id: uuid::Uuid, version: u64) -> Result<u64> {
        self.events
            .position_of(id, A::TYPE_NAME, version)
            .await?
            .ok_or_else(|| crate::error::Error::NotFound {
                aggregate_type: A::TYPE_NAME.to_owned(),
                aggregate_id: id,
            })
    }
}
