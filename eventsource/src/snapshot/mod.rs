//! Snapshots: the stored state of an aggregate at a version, and the store contract.

mod joint;
pub(crate) mod metrics;
mod policy;

pub use joint::{JointSnapshotRead, JointSnapshotWrite, JointSnapshots, SnapshotAndEvents};
pub use metrics::{MissReason, SnapshotMetrics};
pub use policy::{SnapshotMode, SnapshotPolicy, DEFAULT_QUEUE_CAPACITY, DEFAULT_STORE_TIMEOUT};

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;

/// The state of one aggregate at one version, bound to the history it was taken from.
///
/// A snapshot at version `v` stands for the events `1..=v` of one history: the one whose
/// event at version `v` has the id [`event_id`](Self::event_id). Loading uses it only if the
/// stream's event at `v` is that event, then applies the events with a version greater than
/// `v` on top of it. Snapshots are an optimisation only; the events stay the truth, and a
/// snapshot can be deleted at any time.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The aggregate it belongs to.
    pub aggregate_id: Uuid,
    /// The aggregate type name.
    pub aggregate_type: String,
    /// The aggregate version the state is at.
    pub version: u64,
    /// The id of the event at `version` that the state follows.
    ///
    /// `None` only for snapshots stored before snapshots were bound to their history: a load
    /// checks those by their version alone, as it did then (see
    /// [`Repository::load`](crate::Repository::load)).
    pub event_id: Option<Uuid>,
    /// The aggregate's state, as JSON text (its serde form).
    pub state: String,
    /// The state's schema version, as in [`Aggregate::SCHEMA_VERSION`](crate::Aggregate::SCHEMA_VERSION).
    pub schema_version: u32,
    /// When the snapshot was taken.
    pub created_at: DateTime<Utc>,
}

/// Checks a snapshot as every store can keep it; stores call this before they write one.
///
/// An empty aggregate type name, or one with a NUL character, is [`Error::InvalidInput`](crate::Error::InvalidInput).
pub fn validate_snapshot(snapshot: &Snapshot) -> Result<()> {
    crate::event::validate_aggregate_type(&snapshot.aggregate_type)
}

impl Snapshot {
    /// A snapshot of the aggregate `(aggregate_id, aggregate_type)` at `version`, its state
    /// the JSON text `state` at `schema_version`: taken now, bound to no event id (see
    /// [`with_event_id`](Self::with_event_id)). What a backend builds from a stored row (with
    /// the `with_*` methods), and what tools and tests store directly.
    pub fn new(
        aggregate_id: Uuid,
        aggregate_type: impl Into<String>,
        version: u64,
        schema_version: u32,
        state: impl Into<String>,
    ) -> Self {
        Snapshot {
            aggregate_id,
            aggregate_type: aggregate_type.into(),
            version,
            event_id: None,
            state: state.into(),
            schema_version,
            created_at: Utc::now(),
        }
    }

    /// Bound to the event `event_id` (the id of the event at its version), or to none.
    #[must_use]
    pub fn with_event_id(mut self, event_id: Option<Uuid>) -> Self {
        self.event_id = event_id;
        self
    }

    /// Taken at `at`.
    #[must_use]
    pub fn with_created_at(mut self, at: DateTime<Utc>) -> Self {
        self.created_at = at;
        self
    }

    /// The state parsed as a JSON value, to inspect a snapshot without its Rust type.
    pub fn state_value(&self) -> Result<serde_json::Value> {
        crate::codec::from_json(&self.state, || {
            format!("snapshot state of {} {}", self.aggregate_type, self.aggregate_id)
        })
    }
}

/// Where one stored snapshot is: see [`SnapshotListing::snapshot_versions`](crate::abilities::SnapshotListing::snapshot_versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotVersion {
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// The schema version of its state.
    pub schema_version: u32,
    /// The aggregate version the snapshot stands for.
    pub version: u64,
}

/// Storage of at most one snapshot per aggregate and schema version.
///
/// # Contract
///
/// Every backend guarantees, and the conformance suite in `eventsourcing_kit::testing` checks:
///
/// - **One per aggregate and schema version.** A store keeps at most one snapshot per
///   `(aggregate_id, aggregate_type, schema_version)`; the same id under two types is two
///   aggregates. During a rolling deploy, instances of two schema versions each keep their
///   own snapshot of an aggregate and never replace the other's; the bulk invalidation
///   ([`delete_snapshots_by_type`](Self::delete_snapshots_by_type)) cleans up the old ones
///   once every instance runs the new version.
/// - **Never older.** [`save_snapshot`](Self::save_snapshot) is an upsert that replaces the
///   stored snapshot of its schema version only with one of the same or a higher version,
///   also when two writers race; it returns whether the given snapshot was stored.
/// - **The newest usable schema.** [`get_snapshot`](Self::get_snapshot) returns the snapshot
///   with the highest schema version not above the one asked for: the reader's own, or an
///   older one it may migrate; never one of a newer schema that it cannot read.
/// - **Exact reads.** [`get_snapshot`](Self::get_snapshot) returns what was stored, field for
///   field, the state's JSON text byte for byte.
/// - **Checked names.** A snapshot whose aggregate type name is empty or holds a NUL
///   character is [`Error::InvalidInput`](crate::Error::InvalidInput) ([`validate_snapshot`]).
/// - **Counted invalidation.** [`delete_snapshots_by_type`](Self::delete_snapshots_by_type)
///   deletes the snapshots of one aggregate type whose schema version is strictly below the
///   bound (every one of that type when the bound is `None`) and returns how many it deleted.
/// - **Typed failures.** Backend failures are [`Error::Store`](crate::Error::Store); a row it
///   cannot decode is [`Error::Corrupt`](crate::Error::Corrupt). The repository treats both as
///   a snapshot miss, never as a failed load.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// The aggregate's snapshot with the highest schema version not above `schema_version`,
    /// if one is stored.
    async fn get_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        schema_version: u32,
    ) -> Result<Option<Snapshot>>;

    /// Stores the snapshot unless a newer one of its schema version is stored; returns
    /// whether it was stored.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool>;

    /// Deletes the aggregate's snapshots, of every schema version; returns whether there was one.
    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool>;

    /// Whether a snapshot of the aggregate is stored, of any schema version.
    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool>;

    /// Deletes the snapshots of a type with a schema version below the bound (all if `None`).
    async fn delete_snapshots_by_type(
        &self,
        aggregate_type: &str,
        schema_version_below: Option<u32>,
    ) -> Result<u64>;
}

#[async_trait]
// Forwards every method, provided ones too: a wrapper that does not loses its fast paths.
#[deny(clippy::missing_trait_methods)]
impl<S: SnapshotStore + ?Sized> SnapshotStore for Arc<S> {
    async fn get_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        schema_version: u32,
    ) -> Result<Option<Snapshot>> {
        (**self)
            .get_snapshot(aggregate_id, aggregate_type, schema_version)
            .await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        (**self).save_snapshot(snapshot).await
    }

    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        (**self).delete_snapshot(aggregate_id, aggregate_type).await
    }

    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        (**self).snapshot_exists(aggregate_id, aggregate_type).await
    }

    async fn delete_snapshots_by_type(
        &self,
        aggregate_type: &str,
        schema_version_below: Option<u32>,
    ) -> Result<u64> {
        (**self)
            .delete_snapshots_by_type(aggregate_type, schema_version_below)
            .await
    }
}

/// Deletes the aggregate's snapshots through `store`, in the span every delete has
/// (`eventsource.snapshot.delete`), whatever the backend.
pub(crate) async fn delete_snapshot(
    store: &dyn SnapshotStore,
    aggregate_type: &str,
    id: Uuid,
) -> Result<bool> {
    use tracing::Instrument;

    let span = tracing::debug_span!("eventsource.snapshot.delete", aggregate.id = %id, aggregate.type = aggregate_type);
    store.delete_snapshot(id, aggregate_type).instrument(span).await
}

/// Deletes the snapshots of a type below a schema version through `store`, in the span every
/// such delete has (`eventsource.snapshot.delete_by_type`), whatever the backend.
pub(crate) async fn delete_snapshots_by_type(
    store: &dyn SnapshotStore,
    aggregate_type: &str,
    schema_version_below: Option<u32>,
) -> Result<u64> {
    use tracing::Instrument;

    let span = tracing::debug_span!(
        "eventsource.snapshot.delete_by_type",
        aggregate.type = aggregate_type,
        schema_version_below = ?schema_version_below,
    );
    store
        .delete_snapshots_by_type(aggregate_type, schema_version_below)
        .instrument(span)
        .await
}
