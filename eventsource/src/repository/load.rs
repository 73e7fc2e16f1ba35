//! Loading: a snapshot bound to the stream's history, when there is one, and the events after it.

use futures_util::{StreamExt, TryStreamExt};
use tracing::field::Empty;
use tracing::Instrument;
use uuid::Uuid;

use super::snapshotting::{bounded, discard};
use super::Repository;
use crate::aggregate::{Aggregate, AggregateEvent};
use crate::codec;
use crate::error::{Error, Result};
use crate::event_store::EventStream;
use crate::personal::open::{self, Opener};
use crate::personal::Keyring;
use crate::registry;
use crate::root::AggregateRoot;
use crate::snapshot::metrics::Counter;
use crate::snapshot::{MissReason, Snapshot};

/// What the snapshot store had for a load.
enum Lookup<'a, A> {
    /// A snapshot that passed every check but the stream's, and the events from its version.
    Found(Candidate<A>, EventStream<'a>),
    /// No snapshot: a miss, or not due yet, which the stream's length tells.
    Absent,
    /// No snapshot store (`None`), or a snapshot not used, and why (the miss counted).
    Unused(Option<MissReason>),
}

/// Where a load started.
pub(super) enum Start {
    /// From the snapshot at this version.
    Snapshot(u64),
    /// From the first event: no snapshot was stored (`None`), or the stored one was not used,
    /// for this reason.
    Replayed(Option<MissReason>),
}

impl Start {
    pub(super) fn snapshot_version(&self) -> Option<u64> {
        match self {
            Start::Snapshot(version) => Some(*version),
            Start::Replayed(_) => None,
        }
    }
}

/// A snapshot that passed every check but the stream's: its version, the event it follows,
/// and its state.
struct Candidate<A> {
    version: u64,
    event_id: Option<Uuid>,
    state: A,
    /// Whether the state was migrated from an older schema version.
    migrated: bool,
}

impl<A: Aggregate> Repository<A> {
    /// Loads the aggregate from its snapshot, when one is usable, and the events after it.
    ///
    /// A snapshot is used only if its schema version is `A::SCHEMA_VERSION` (or it migrates
    /// to it through `#[aggregate(migrate(...))]`), its state deserializes, and the stream's event at the snapshot's version is the event the
    /// snapshot follows ([`Snapshot::event_id`]): a snapshot of another history (another
    /// event store sharing the snapshot store, or events since restored from an older
    /// backup) is never used. Snapshots stored before snapshots named their event are
    /// checked by version alone: the stream must have reached it. Otherwise every event is
    /// replayed; a snapshot of another history, or beyond the stream's head, is deleted so
    /// that the next snapshot written replaces it.
    ///
    /// A snapshot store that fails never fails the load: the miss is logged and counted in
    /// [`metrics`](Self::metrics). A stream with no events is [`Error::NotFound`].
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the stream has no events;
    /// [`Error::StreamDeleted`] if it was deleted (see [`crate::lifecycle`]);
    /// [`Error::Store`] if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient));
    /// [`Error::Corrupt`] for a stored row this library did not write;
    /// [`Error::UnknownEventType`],
    /// [`Error::UnknownEventVersion`] or
    /// [`Error::Upcast`] for an event this program cannot read.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn load(&self, id: Uuid) -> Result<AggregateRoot<A>> {
        registry::check()?;
        let span = tracing::debug_span!(
            "eventsource.repository.load",
            aggregate.id = %id,
            aggregate.type = A::TYPE_NAME,
            version = Empty,
            snapshot.used = false,
            snapshot.version = Empty,
            events.replayed = Empty,
            error = Empty,
        );
        let started = std::time::Instant::now();
        let (root, start) = match self.load_in(id, &span).instrument(span.clone()).await {
            Ok(loaded) => loaded,
            Err(e) => {
                if !e.is_not_found() {
                    span.record("error", tracing::field::display(&e));
                }
                crate::telemetry::store_error("load", &e);
                return Err(e);
            }
        };
        let snapshot_version = start.snapshot_version();
        let replayed = root.version() - snapshot_version.unwrap_or(0);
        crate::telemetry::load(
            A::TYPE_NAME,
            started.elapsed(),
            replayed,
            snapshot_version.is_some(),
        );
        Ok(root)
    }

    /// The loaded root, and where it started: the version of the snapshot it used, or why a
    /// stored snapshot was not used.
    pub(super) async fn load_in(&self, id: Uuid, span: &tracing::Span) -> Result<(AggregateRoot<A>, Start)> {
        let lookup = self.snapshot_and_events(id).await;
        let absent = matches!(lookup, Lookup::Absent);
        let mut unused = match lookup {
            Lookup::Unused(reason) => reason,
            _ => None,
        };
        if let Lookup::Found(candidate, mut events) = lookup {
            let Candidate {
                version,
                event_id,
                state,
                migrated,
            } = candidate;
            // The event at the snapshot's own version proves the stream has reached it, and
            // its id that the snapshot was taken from this history.
            match events.next().await.transpose()? {
                Some(event)
                    if event.aggregate_version == version
                        && event_id.is_none_or(|id| id == event.event_id) =>
                {
                    let mut root = AggregateRoot::following(id, version, state, event.event_id);
                    if *event.event_type == *crate::lifecycle::CLOSED {
                        root.mark_closed();
                    }
                    let replayed = replay(&mut root, events, self.keys.as_ref()).await?;
                    let used = if migrated { Counter::Migrated } else { Counter::Hit };
                    self.metrics.add(A::TYPE_NAME, used);
                    span.record("snapshot.used", true);
                    span.record("snapshot.version", version);
                    return Ok((finish(root, replayed, span), Start::Snapshot(version)));
                }
                Some(event) if event.aggregate_version == version => {
                    let detail = format!(
                        "snapshot follows event {}, the stream's event at version {version} is {}",
                        event_id.unwrap_or_default(),
                        event.event_id
                    );
                    unused = Some(self.miss(id, MissReason::HistoryMismatch, detail));
                    drop(events);
                    self.discard_snapshot(id).await;
                }
                _ => {
                    let detail = format!("stream has not reached version {version}");
                    unused = Some(self.miss(id, MissReason::BeyondStreamHead, detail));
                    drop(events);
                    self.discard_snapshot(id).await;
                }
            }
        }
        let root = self.replay_all(id).await?;
        if absent {
            self.count_absent(id, root.version());
        }
        let replayed = root.version();
        Ok((finish(root, replayed, span), Start::Replayed(unused)))
    }

    /// Counts a load that found no snapshot: a miss if one was due at the stream's version,
    /// else not due yet.
    fn count_absent(&self, id: Uuid, version: u64) {
        let threshold = self.snapshots.as_ref().and_then(|s| s.policy.threshold());
        if threshold.is_none_or(|n| version >= n) {
            self.miss(id, MissReason::Missing, String::new());
        } else {
            self.metrics.add(A::TYPE_NAME, Counter::NotDue);
        }
    }

    /// The aggregate from every one of its events, without a snapshot.
    pub(super) async fn replay_all(&self, id: Uuid) -> Result<AggregateRoot<A>> {
        self.replay_from(id, self.events.load_stream(id, A::TYPE_NAME, 0))
            .await
    }

    /// The aggregate from its events up to `version`, without a snapshot.
    pub(super) async fn replay_until(&self, id: Uuid, version: u64) -> Result<AggregateRoot<A>> {
        let events = self
            .events
            .load_stream(id, A::TYPE_NAME, 0)
            .try_take_while(move |e| std::future::ready(Ok(e.aggregate_version <= version)));
        self.replay_from(id, Box::pin(events)).await
    }

    /// The aggregate from `events`, its stream from the start; a stream with none is
    /// [`Error::NotFound`].
    async fn replay_from(&self, id: Uuid, events: EventStream<'_>) -> Result<AggregateRoot<A>> {
        let mut root = AggregateRoot::new(id);
        replay(&mut root, events, self.keys.as_ref()).await?;
        if root.version() == 0 {
            return Err(Error::NotFound {
                aggregate_type: A::TYPE_NAME.to_owned(),
                aggregate_id: id,
            });
        }
        Ok(root)
    }

    /// A snapshot that passes every check but the stream's, and the stream's events from its
    /// version on: read together in one round trip where the event store can, one after the
    /// other otherwise.
    async fn snapshot_and_events(&self, id: Uuid) -> Lookup<'_, A> {
        let Some(snapshots) = self.snapshots.as_ref() else {
            return Lookup::Unused(None);
        };
        let timeout = snapshots.policy.store_timeout();
        let span = tracing::debug_span!("eventsource.snapshot.get", aggregate.id = %id, aggregate.type = A::TYPE_NAME);
        if let Some(joint) = &snapshots.joint {
            let found = match bounded(timeout, joint.reader().read(id, A::TYPE_NAME, A::SCHEMA_VERSION))
                .instrument(span)
                .await
            {
                Ok(Some(found)) => found,
                Ok(None) => return Lookup::Absent,
                Err(e) => return self.unused(id, MissReason::StoreError, e.to_string()),
            };
            return match self.usable(id, found.snapshot) {
                Ok(candidate) => Lookup::Found(candidate, found.events),
                Err(reason) => Lookup::Unused(Some(reason)),
            };
        }
        let read = snapshots
            .store
            .get_snapshot(id, A::TYPE_NAME, A::SCHEMA_VERSION)
            .instrument(span);
        let snapshot = match bounded(timeout, read).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return Lookup::Absent,
            Err(e) => return self.unused(id, MissReason::StoreError, e.to_string()),
        };
        let candidate = match self.usable(id, snapshot) {
            Ok(candidate) => candidate,
            Err(reason) => return Lookup::Unused(Some(reason)),
        };
        let events = self.events.load_stream(id, A::TYPE_NAME, candidate.version - 1);
        Lookup::Found(candidate, events)
    }

    fn unused<'a>(&self, id: Uuid, reason: MissReason, detail: String) -> Lookup<'a, A> {
        Lookup::Unused(Some(self.miss(id, reason, detail)))
    }

    /// The snapshot as a candidate, if it passes every check but the stream's.
    fn usable(&self, id: Uuid, snapshot: Snapshot) -> std::result::Result<Candidate<A>, MissReason> {
        if snapshot.aggregate_id != id
            || snapshot.aggregate_type != A::TYPE_NAME
            || snapshot.schema_version > A::SCHEMA_VERSION
        {
            let detail = format!(
                "asked for a snapshot of {} {id} up to schema version {}, the store returned one of {} {} at schema version {}",
                A::TYPE_NAME, A::SCHEMA_VERSION, snapshot.aggregate_type, snapshot.aggregate_id, snapshot.schema_version
            );
            return Err(self.miss(id, MissReason::StoreError, detail));
        }
        let current = snapshot.schema_version == A::SCHEMA_VERSION;
        let migratable = (A::MIGRATES_FROM..A::SCHEMA_VERSION).contains(&snapshot.schema_version);
        if !current && !migratable {
            let detail = format!(
                "snapshot schema {}, aggregate schema {}",
                snapshot.schema_version,
                A::SCHEMA_VERSION
            );
            return Err(self.miss(id, MissReason::SchemaMismatch, detail));
        }
        if snapshot.version == 0 {
            return Err(self.miss(
                id,
                MissReason::StoreError,
                "store returned a snapshot at version 0".into(),
            ));
        }
        let what = || format!("snapshot state of {} {id}", A::TYPE_NAME);
        let state = if current {
            codec::from_json::<A>(&snapshot.state, what).map_err(|e| (MissReason::DeserializationError, e))
        } else {
            migrate::<A>(&snapshot, what).map_err(|e| (MissReason::MigrationFailed, e))
        };
        match state {
            Ok(state) => Ok(Candidate {
                version: snapshot.version,
                event_id: snapshot.event_id,
                state,
                migrated: !current,
            }),
            Err((reason, e)) => Err(self.miss(id, reason, e.to_string())),
        }
    }

    fn miss(&self, id: Uuid, reason: MissReason, detail: String) -> MissReason {
        self.metrics.add(A::TYPE_NAME, Counter::Miss(reason));
        match reason {
            MissReason::Missing => {
                tracing::debug!(aggregate.id = %id, aggregate.type = A::TYPE_NAME, reason = reason.as_str(), "no snapshot, replaying every event")
            }
            MissReason::SchemaMismatch => {
                tracing::info!(aggregate.id = %id, aggregate.type = A::TYPE_NAME, reason = reason.as_str(), detail, "snapshot not used, replaying every event")
            }
            _ => {
                tracing::warn!(aggregate.id = %id, aggregate.type = A::TYPE_NAME, reason = reason.as_str(), detail, "snapshot not used, replaying every event")
            }
        }
        reason
    }

    /// Deletes a snapshot that does not belong to the stream's history, so that it cannot
    /// keep a correct one out (the store keeps the highest version). A failure is logged:
    /// the load replays either way.
    async fn discard_snapshot(&self, id: Uuid) {
        if let Some(snapshots) = &self.snapshots {
            discard(
                &*snapshots.store,
                A::TYPE_NAME,
                snapshots.policy.store_timeout(),
                id,
            )
            .await;
        }
    }
}

/// The state of a snapshot of an older schema version, migrated to the current one.
fn migrate<A: Aggregate>(snapshot: &Snapshot, what: impl Fn() -> String) -> Result<A> {
    let old: serde_json::Value = codec::from_json(&snapshot.state, &what)?;
    let migrated = A::migrate_snapshot(snapshot.schema_version, old)?;
    serde_json::from_value(migrated).map_err(|e| Error::Upcast {
        what: what(),
        from_version: snapshot.schema_version,
        reason: format!(
            "the migrated state does not deserialize as schema version {}: {e}",
            A::SCHEMA_VERSION
        ),
    })
}

/// Applies a stream's events to the root, checking that each belongs to the stream and that
/// versions follow on without a gap; personal fields are opened with `keys`.
async fn replay<A: Aggregate>(
    root: &mut AggregateRoot<A>,
    mut events: EventStream<'_>,
    keys: Option<&Keyring>,
) -> Result<u64> {
    let start = root.version();
    let mut opener = keys.map(Opener::new);
    while let Some(stored) = events.next().await {
        let stored = stored?;
        if *stored.event_type == *crate::lifecycle::DELETED && stored.aggregate_id == root.id() {
            return Err(Error::StreamDeleted {
                aggregate_type: A::TYPE_NAME.to_owned(),
                aggregate_id: root.id(),
            });
        }
        let expected = root.version().checked_add(1);
        if stored.aggregate_id != root.id() || *stored.aggregate_type != *A::TYPE_NAME {
            return Err(Error::corrupt(
                format!("stream {} {}", A::TYPE_NAME, root.id()),
                format!(
                    "read an event of {} {}",
                    stored.aggregate_type, stored.aggregate_id
                ),
            ));
        }
        if expected != Some(stored.aggregate_version) {
            return Err(Error::corrupt(
                format!("stream {} {}", A::TYPE_NAME, root.id()),
                format!(
                    "after version {}, read version {}",
                    root.version(),
                    stored.aggregate_version
                ),
            ));
        }
        if crate::lifecycle::is_system_event(&stored.event_type) {
            root.apply_system(&stored.event_type, stored.event_id)?;
            continue;
        }
        let event = match &mut opener {
            Some(opener) if open::may_be_sealed(&stored.payload) => {
                let payload = opener.open(&stored).await?;
                A::Event::decode(&stored.event_type, stored.event_version, &payload)?
            }
            _ => A::Event::decode(&stored.event_type, stored.event_version, &stored.payload)?,
        };
        root.apply_stored(&event, stored.event_id);
    }
    Ok(root.version() - start)
}

fn finish<A: Aggregate>(root: AggregateRoot<A>, replayed: u64, span: &tracing::Span) -> AggregateRoot<A> {
    span.record("version", root.version());
    span.record("events.replayed", replayed);
    root
}
