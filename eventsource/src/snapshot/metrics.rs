//! Counters of snapshot use, readable by the program.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

/// Why a load did not use a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MissReason {
    /// No snapshot is stored, although the stream has reached the policy's threshold (or the
    /// policy has none). A shorter stream is counted as
    /// [`not_due`](SnapshotMetrics::not_due) instead.
    Missing,
    /// The snapshot's schema version is not the aggregate's.
    SchemaMismatch,
    /// The snapshot's state does not deserialize into the aggregate.
    DeserializationError,
    /// The snapshot store failed.
    StoreError,
    /// The snapshot claims a version the stream has not reached.
    BeyondStreamHead,
    /// The stream's event at the snapshot's version is not the event the snapshot follows:
    /// the snapshot was taken from another history (another event store, or events since
    /// rolled back).
    HistoryMismatch,
    /// The snapshot is of an older schema version with a migration to the current one, and
    /// the migration failed (or its result does not deserialize).
    MigrationFailed,
}

impl MissReason {
    /// The reason as logged: `missing`, `schema_mismatch`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            MissReason::Missing => "missing",
            MissReason::SchemaMismatch => "schema_mismatch",
            MissReason::DeserializationError => "deserialization_error",
            MissReason::StoreError => "store_error",
            MissReason::BeyondStreamHead => "beyond_stream_head",
            MissReason::HistoryMismatch => "history_mismatch",
            MissReason::MigrationFailed => "migration_failed",
        }
    }
}

impl fmt::Display for MissReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of snapshot hits, misses and writes, per aggregate type.
///
/// Each [`Repository`](crate::Repository) has one, readable through
/// [`Repository::metrics`](crate::Repository::metrics); repositories can share one through
/// [`Repository::with_metrics`](crate::Repository::with_metrics).
#[derive(Debug, Default)]
pub struct SnapshotMetrics {
    counts: Mutex<BTreeMap<(&'static str, Counter), u64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Counter {
    Hit,
    Migrated,
    NotDue,
    Miss(MissReason),
    Written,
    WriteFailed,
}

impl Counter {
    /// The name of the counter's metric (see [`crate::telemetry`]) and its `reason` label.
    fn metric(self) -> (&'static str, Option<&'static str>) {
        match self {
            Counter::Hit => ("eventsource_snapshot_hits_total", None),
            Counter::Migrated => ("eventsource_snapshot_migrated_total", None),
            Counter::NotDue => ("eventsource_snapshot_not_due_total", None),
            Counter::Miss(reason) => ("eventsource_snapshot_misses_total", Some(reason.as_str())),
            Counter::Written => ("eventsource_snapshot_writes_total", None),
            Counter::WriteFailed => ("eventsource_snapshot_write_failures_total", None),
        }
    }
}

impl SnapshotMetrics {
    /// New counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn add(&self, aggregate_type: &'static str, counter: Counter) {
        let (name, reason) = counter.metric();
        crate::telemetry::snapshot(aggregate_type, name, reason);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((aggregate_type, counter)).or_default() += 1;
    }

    fn get(&self, aggregate_type: &str, counter: Counter) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .filter(|((t, c), _)| *t == aggregate_type && *c == counter)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Loads of the type that used a snapshot.
    pub fn hits(&self, aggregate_type: &str) -> u64 {
        self.get(aggregate_type, Counter::Hit)
    }

    /// Loads of the type that used a snapshot of an older schema version, migrated to the
    /// current one by `#[aggregate(migrate(...))]`. Counted apart from [`hits`](Self::hits).
    pub fn migrated(&self, aggregate_type: &str) -> u64 {
        self.get(aggregate_type, Counter::Migrated)
    }

    /// Loads of the type that found no snapshot because none was due yet: the stream is
    /// shorter than the policy's threshold. Counted apart from the misses, so that the hit
    /// ratio charted is about the aggregates that should have a snapshot.
    pub fn not_due(&self, aggregate_type: &str) -> u64 {
        self.get(aggregate_type, Counter::NotDue)
    }

    /// Loads of the type that did not use a snapshot, for this reason.
    pub fn misses(&self, aggregate_type: &str, reason: MissReason) -> u64 {
        self.get(aggregate_type, Counter::Miss(reason))
    }

    /// Loads of the type that did not use a snapshot, for any reason.
    pub fn total_misses(&self, aggregate_type: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .filter(|((t, c), _)| *t == aggregate_type && matches!(c, Counter::Miss(_)))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Snapshots of the type written, automatically or on request.
    pub fn written(&self, aggregate_type: &str) -> u64 {
        self.get(aggregate_type, Counter::Written)
    }

    /// Snapshot writes of the type that failed (each also logged).
    pub fn write_failures(&self, aggregate_type: &str) -> u64 {
        self.get(aggregate_type, Counter::WriteFailed)
    }

    /// Every miss count, as `(aggregate type, reason, count)`.
    pub fn miss_counts(&self) -> Vec<(&'static str, MissReason, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .filter_map(|(&(t, c), &n)| match c {
                Counter::Miss(reason) => Some((t, reason, n)),
                _ => None,
            })
            .collect()
    }
}
