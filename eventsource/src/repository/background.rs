//! The background snapshot queue: bounded, coalesced per aggregate, drained by one task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use uuid::Uuid;

use super::write_snapshot;
use crate::snapshot::{Snapshot, SnapshotMetrics, SnapshotPolicy, SnapshotStore};

/// Snapshots waiting to be written, at most one per aggregate.
///
/// A worker task runs only while there is work: it is spawned by the first schedule after
/// the queue went idle, and it holds the queue alive until the queue is empty, so dropping
/// the repository does not drop scheduled snapshots.
pub(crate) struct BackgroundQueue {
    state: Mutex<QueueState>,
    idle: Notify,
    store: Arc<dyn SnapshotStore>,
    metrics: Arc<SnapshotMetrics>,
    aggregate_type: &'static str,
    policy: SnapshotPolicy,
}

#[derive(Default)]
struct QueueState {
    pending: HashMap<Uuid, Snapshot>,
    order: VecDeque<Uuid>,
    writing: bool,
    written: usize,
}

impl BackgroundQueue {
    pub(crate) fn new(
        store: Arc<dyn SnapshotStore>,
        metrics: Arc<SnapshotMetrics>,
        aggregate_type: &'static str,
        policy: SnapshotPolicy,
    ) -> Self {
        BackgroundQueue {
            state: Mutex::default(),
            idle: Notify::new(),
            store,
            metrics,
            aggregate_type,
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the snapshot, replacing an older one of the same aggregate not yet written.
    ///
    /// Returns the snapshot back when the queue is full: the caller writes it itself, so the
    /// queue stays within its bound and nothing is dropped.
    pub(crate) fn schedule(self: &Arc<Self>, snapshot: Snapshot) -> Option<Snapshot> {
        let mut state = self.lock();
        if let Some(queued) = state.pending.get_mut(&snapshot.aggregate_id) {
            if snapshot.version >= queued.version {
                *queued = snapshot;
            }
            return None;
        }
        if state.pending.len() >= self.policy.queue_capacity() {
            return Some(snapshot);
        }
        state.order.push_back(snapshot.aggregate_id);
        state.pending.insert(snapshot.aggregate_id, snapshot);
        if !state.writing {
            state.writing = true;
            tokio::spawn(self.clone().drain());
        }
        None
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let next = {
                let mut state = self.lock();
                let next = state.order.pop_front().and_then(|id| state.pending.remove(&id));
                if next.is_none() {
                    state.writing = false;
                }
                next
            };
            let Some(snapshot) = next else {
                self.idle.notify_waiters();
                return;
            };
            if write_snapshot(
                &*self.store,
                &self.metrics,
                self.aggregate_type,
                self.policy.store_timeout(),
                &snapshot,
            )
            .await
            .is_ok()
            {
                self.lock().written += 1;
            }
        }
    }

    /// How many snapshots are queued and not yet being written.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Waits until the queue is empty and its last write finished; returns how many
    /// snapshots were written since the previous call.
    pub(crate) async fn wait_idle(&self) -> usize {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if !state.writing && state.pending.is_empty() {
                    return std::mem::take(&mut state.written);
                }
            }
            notified.await;
        }
    }
}

impl Drop for BackgroundQueue {
    fn drop(&mut self) {
        // Only reached with work pending when the runtime shut down under the worker.
        let lost = self.lock().pending.len();
        if lost > 0 {
            tracing::warn!(
                aggregate.type = self.aggregate_type,
                snapshots.lost = lost,
                "background snapshots dropped unwritten because the runtime shut down; \
                 the next saves past the threshold will write them again"
            );
        }
    }
}
