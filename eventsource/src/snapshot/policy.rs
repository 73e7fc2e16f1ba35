//! When the repository takes snapshots.

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use crate::error::{Error, Result};

/// How automatic snapshots are written once the policy says one is due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotMode {
    /// The snapshot is written before `save` returns. The default.
    #[default]
    Sync,
    /// `save` returns once the events are stored; a background task writes the snapshot from
    /// the state captured when it was scheduled.
    Background,
    /// No automatic snapshots: only [`Repository::create_snapshot`](crate::Repository::create_snapshot).
    Manual,
}

/// When and how the repository snapshots an aggregate.
///
/// ```
/// use eventsourcing_kit::{SnapshotMode, SnapshotPolicy};
///
/// let policy = SnapshotPolicy::every(100)?.with_mode(SnapshotMode::Background);
/// assert_eq!(policy.threshold(), Some(100));
/// assert!(SnapshotPolicy::every(0).is_err());
/// # Ok::<(), eventsourcing_kit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    threshold: Option<NonZeroU64>,
    mode: SnapshotMode,
    queue_capacity: NonZeroUsize,
    store_timeout: Option<Duration>,
}

/// The default bound of the background queue, in aggregates waiting for a snapshot.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// The default bound on each snapshot store call; see [`SnapshotPolicy::with_store_timeout`].
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

impl SnapshotPolicy {
    /// A snapshot each time a save crosses a multiple of `n` events, written in sync mode.
    ///
    /// A save that takes the version from `old` to `new` crosses a multiple when
    /// `new / n > old / n`; crossing several in one save writes one snapshot, at `new`.
    /// `n = 0` is [`Error::InvalidConfiguration`].
    pub fn every(n: u64) -> Result<Self> {
        let threshold = NonZeroU64::new(n).ok_or_else(|| {
            Error::InvalidConfiguration("snapshot threshold must be at least 1 event, got 0".into())
        })?;
        Ok(SnapshotPolicy {
            threshold: Some(threshold),
            mode: SnapshotMode::Sync,
            queue_capacity: NonZeroUsize::new(DEFAULT_QUEUE_CAPACITY).expect("non-zero"),
            store_timeout: Some(DEFAULT_STORE_TIMEOUT),
        })
    }

    /// Only explicit snapshots, through [`Repository::create_snapshot`](crate::Repository::create_snapshot).
    pub fn manual() -> Self {
        SnapshotPolicy {
            threshold: None,
            mode: SnapshotMode::Manual,
            queue_capacity: NonZeroUsize::new(DEFAULT_QUEUE_CAPACITY).expect("non-zero"),
            store_timeout: Some(DEFAULT_STORE_TIMEOUT),
        }
    }

    /// The same policy written in another mode. With [`SnapshotMode::Manual`] the threshold
    /// is kept but no automatic snapshot is taken.
    #[must_use]
    pub fn with_mode(mut self, mode: SnapshotMode) -> Self {
        self.mode = mode;
        self
    }

    /// Bounds the background queue to `capacity` aggregates (default
    /// [`DEFAULT_QUEUE_CAPACITY`]). When the queue is full, a save writes its snapshot itself,
    /// so the queue never grows past the bound and no snapshot is dropped. 0 is
    /// [`Error::InvalidConfiguration`].
    pub fn with_queue_capacity(mut self, capacity: usize) -> Result<Self> {
        self.queue_capacity = NonZeroUsize::new(capacity).ok_or_else(|| {
            Error::InvalidConfiguration("background snapshot queue capacity must be at least 1".into())
        })?;
        Ok(self)
    }

    /// Bounds every snapshot read and write to `timeout` (default
    /// [`DEFAULT_STORE_TIMEOUT`], five seconds).
    ///
    /// A snapshot store that hangs then costs a load at most this long before it replays the
    /// events instead, and a save at most this long before its snapshot write is given up
    /// (logged and counted as a store error): the save has succeeded all the same. The
    /// bound works on any runtime, with or without tokio's timers. A zero timeout is
    /// [`Error::InvalidConfiguration`].
    pub fn with_store_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::InvalidConfiguration(
                "snapshot store timeout must be above zero".into(),
            ));
        }
        self.store_timeout = Some(timeout);
        Ok(self)
    }

    /// Lets snapshot store calls take as long as they take: a hanging snapshot store then
    /// hangs the loads and saves that call it. For stores that bound their own calls.
    #[must_use]
    pub fn without_store_timeout(mut self) -> Self {
        self.store_timeout = None;
        self
    }

    /// The bound on each snapshot read and write, if there is one.
    pub fn store_timeout(&self) -> Option<Duration> {
        self.store_timeout
    }

    /// The threshold in events, if automatic snapshots are configured.
    pub fn threshold(&self) -> Option<u64> {
        self.threshold.map(NonZeroU64::get)
    }

    /// The mode.
    pub fn mode(&self) -> SnapshotMode {
        self.mode
    }

    /// The bound of the background queue.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity.get()
    }

    /// Whether a save that brought the version from `new - saved` to `new` is due a snapshot.
    pub fn is_due(&self, new_version: u64, saved: u64) -> bool {
        match (self.mode, self.threshold) {
            (SnapshotMode::Manual, _) | (_, None) => false,
            (_, Some(n)) => {
                let n = n.get();
                saved > 0 && new_version / n > new_version.saturating_sub(saved) / n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_versions(n: u64, batches: &[u64]) -> Vec<u64> {
        let policy = SnapshotPolicy::every(n).unwrap();
        let mut version = 0;
        let mut due = vec![];
        for &k in batches {
            version += k;
            if policy.is_due(version, k) {
                due.push(version);
            }
        }
        due
    }

    #[test]
    fn one_event_per_save_snapshots_at_each_multiple() {
        assert_eq!(due_versions(10, &[1; 25]), vec![10, 20]);
    }

    #[test]
    fn a_save_crossing_several_multiples_snapshots_once_at_its_end() {
        assert_eq!(due_versions(10, &[7, 7, 7, 30]), vec![14, 21, 51]);
        assert_eq!(due_versions(1, &[3, 1]), vec![3, 4]);
    }

    #[test]
    fn manual_and_empty_saves_are_never_due() {
        let policy = SnapshotPolicy::every(10).unwrap().with_mode(SnapshotMode::Manual);
        assert!(!policy.is_due(10, 10));
        assert!(!SnapshotPolicy::every(10).unwrap().is_due(10, 0));
        assert!(!SnapshotPolicy::manual().is_due(100, 100));
    }

    #[test]
    fn invalid_configuration_is_a_typed_error() {
        assert!(matches!(
            SnapshotPolicy::every(0),
            Err(Error::InvalidConfiguration(_))
        ));
        assert!(matches!(
            SnapshotPolicy::manual().with_queue_capacity(0),
            Err(Error::InvalidConfiguration(_))
        ));
    }
}
