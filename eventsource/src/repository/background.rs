//! The background snapshot queue: bounded, coalesced per aggregate, drained by one worker at a
//! time, and never wedged.
//!
//! A worker task runs only while there is work: the first schedule after the queue went idle
//! spawns it, and it holds the queue alive until the queue is empty, so dropping the
//! repository does not drop scheduled snapshots. A store that panics fails one snapshot (the
//! store call is guarded, see `snapshotting::bounded`); a worker whose runtime shuts down
//! under it gives its place up as it is dropped, so the next schedule, or the next caller of
//! [`wait_for_scheduled`](BackgroundQueue::wait_for_scheduled), starts another on a runtime
//! that is alive. A worker runs on the runtime of the save that started it: on a
//! current-thread runtime it writes only while that runtime runs (inside its `block_on`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use uuid::Uuid;

use super::snapshotting::write_snapshot;
use crate::snapshot::metrics::Counter;
use crate::snapshot::{Snapshot, SnapshotMetrics, SnapshotPolicy, SnapshotStore};

/// Snapshots waiting to be written, at most one per aggregate.
pub(crate) struct BackgroundQueue {
    state: Mutex<QueueState>,
    /// Signalled when a snapshot is finished and when a worker stops.
    changed: Notify,
    store: Arc<dyn SnapshotStore>,
    metrics: Arc<SnapshotMetrics>,
    aggregate_type: &'static str,
    policy: SnapshotPolicy,
}

#[derive(Default)]
struct QueueState {
    pending: HashMap<Uuid, Entry>,
    /// Aggregates in the order their entries were queued, which is the order of `seq`.
    order: VecDeque<Uuid>,
    /// Whether a worker is running.
    writing: bool,
    /// The sequence number of the last entry queued; entries are written in this order.
    last_seq: u64,
    /// The sequence number of the last entry finished, written or failed. Entries finish in
    /// the order of `seq`, one worker at a time.
    done_seq: u64,
    /// How many entries were written, of all those finished.
    written: u64,
    /// Where the last call of `wait_for_scheduled` that returned counted up to.
    counted: Mark,
    /// Callers of `wait_for_scheduled` still waiting, by id.
    waiters: HashMap<u64, Waiter>,
    next_waiter: u64,
}

/// A point of the queue's history: the entries up to `seq` are finished, and `written` of
/// all the entries up to it were written.
#[derive(Clone, Copy, Default)]
struct Mark {
    seq: u64,
    written: u64,
}

struct Entry {
    seq: u64,
    snapshot: Snapshot,
}

/// One caller waiting for the entries queued up to `target`.
struct Waiter {
    target: u64,
    /// Where the last call that returned before this one began had counted up to: this
    /// caller counts the entries after it.
    from: Mark,
    /// Set once every entry up to `target` is finished.
    reached: Option<Mark>,
}

impl QueueState {
    /// Records that the entry `seq` is finished; wakes nobody (the caller notifies).
    fn finish(&mut self, seq: u64, written: bool) {
        self.done_seq = self.done_seq.max(seq);
        if written {
            self.written += 1;
        }
        let now = Mark {
            seq: self.done_seq,
            written: self.written,
        };
        for waiter in self.waiters.values_mut() {
            if waiter.reached.is_none() && waiter.target <= self.done_seq {
                // Entries finish in order, so `now` is the history up to `target` exactly.
                waiter.reached = Some(now);
            }
        }
    }

    /// A call that counted from `from` to `reached` returns: how many it counts. Later calls
    /// count from the furthest point a call that returned reached.
    fn count(&mut self, from: Mark, reached: Mark) -> usize {
        if reached.seq > self.counted.seq {
            self.counted = reached;
        }
        usize::try_from(reached.written.saturating_sub(from.written)).unwrap_or(usize::MAX)
    }
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
            changed: Notify::new(),
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
    /// Returns the snapshot back when the queue is full, or when there is no tokio runtime to
    /// run a worker on: the caller writes it itself, so the queue stays within its bound and
    /// nothing is dropped.
    pub(crate) fn schedule(self: &Arc<Self>, snapshot: Snapshot) -> Option<Snapshot> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Some(snapshot);
        };
        let worker = {
            let mut state = self.lock();
            if let Some(queued) = state.pending.get_mut(&snapshot.aggregate_id) {
                if snapshot.version >= queued.snapshot.version {
                    queued.snapshot = snapshot;
                }
            } else if state.pending.len() >= self.policy.queue_capacity() {
                return Some(snapshot);
            } else {
                state.last_seq += 1;
                let seq = state.last_seq;
                state.order.push_back(snapshot.aggregate_id);
                state
                    .pending
                    .insert(snapshot.aggregate_id, Entry { seq, snapshot });
                crate::telemetry::queue_depth(self.aggregate_type, state.pending.len());
            }
            // Also for a coalesced snapshot: the worker may be gone (see `Worker::drop`).
            self.claim(&mut state)
        };
        if let Some(worker) = worker {
            // A runtime shutting down drops the task unpolled: the worker gives its place up.
            drop(runtime.spawn(worker.drain(None)));
        }
        None
    }

    /// Starts a worker on the current runtime if none runs and there is work.
    fn spawn_worker(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(worker) = self.claim(&mut self.lock()) {
            drop(runtime.spawn(worker.drain(None)));
        }
    }

    /// The worker's place, if no worker runs and there is work.
    fn claim(self: &Arc<Self>, state: &mut QueueState) -> Option<Worker> {
        if state.writing || state.pending.is_empty() {
            return None;
        }
        state.writing = true;
        Some(Worker {
            queue: self.clone(),
            current: None,
            finished: false,
        })
    }

    /// How many snapshots are queued and not yet being written.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Waits until every snapshot queued before the call is finished, and returns how many
    /// were written of those queued after the point the last call that returned (before this
    /// one began) counted up to, whenever they were written: before this call or while it
    /// waited. Snapshots queued meanwhile are not waited for.
    ///
    /// If no worker is running (its runtime shut down), the caller drains the queue itself.
    pub(crate) async fn wait_for_scheduled(self: &Arc<Self>) -> usize {
        let id = {
            let mut state = self.lock();
            let (target, from) = (state.last_seq, state.counted);
            if state.done_seq >= target {
                let now = Mark {
                    seq: target,
                    written: state.written,
                };
                return state.count(from, now);
            }
            state.next_waiter += 1;
            let id = state.next_waiter;
            state.waiters.insert(
                id,
                Waiter {
                    target,
                    from,
                    reached: None,
                },
            );
            id
        };
        let _registered = Registered { queue: self, id };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let worker = {
                let mut state = self.lock();
                let over = state.waiters.get(&id).and_then(|w| Some((w.from, w.reached?)));
                if let Some((from, reached)) = over {
                    state.waiters.remove(&id);
                    return state.count(from, reached);
                }
                self.claim(&mut state)
            };
            match worker {
                Some(worker) => worker.drain(Some(id)).await,
                None => changed.await,
            }
        }
    }
}

/// A caller's registration as a waiter, removed when the caller stops waiting.
struct Registered<'a> {
    queue: &'a Arc<BackgroundQueue>,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.queue.lock().waiters.remove(&self.id);
        // A caller that drained the queue itself and stopped waiting part way leaves the rest
        // to a worker of its runtime.
        self.queue.spawn_worker();
    }
}

/// The one worker's place: it writes queued snapshots until none is left.
struct Worker {
    queue: Arc<BackgroundQueue>,
    /// The entry being written.
    current: Option<u64>,
    /// Set when the worker stopped because the queue was empty.
    finished: bool,
}

impl Worker {
    /// Writes queued snapshots until none is left, or, for a caller of `wait_for_scheduled`
    /// that drains the queue itself, until that caller's wait is over (a worker on the
    /// current runtime then takes over the rest).
    async fn drain(mut self, waiter: Option<u64>) {
        let queue = self.queue.clone();
        loop {
            let next = {
                let mut state = queue.lock();
                if waiter.is_some_and(|id| state.waiters.get(&id).is_none_or(|w| w.reached.is_some())) {
                    state.writing = false;
                    self.finished = true;
                    drop(state);
                    queue.spawn_worker();
                    return;
                }
                let next = state.order.pop_front().and_then(|id| state.pending.remove(&id));
                crate::telemetry::queue_depth(queue.aggregate_type, state.pending.len());
                match &next {
                    Some(entry) => self.current = Some(entry.seq),
                    None => {
                        state.writing = false;
                        self.finished = true;
                    }
                }
                next
            };
            let Some(Entry { seq, snapshot }) = next else {
                queue.changed.notify_waiters();
                return;
            };
            let written = write_snapshot(
                &*queue.store,
                &queue.metrics,
                queue.aggregate_type,
                queue.policy.store_timeout(),
                &snapshot,
            )
            .await
            .is_ok();
            queue.lock().finish(seq, written);
            self.current = None;
            queue.changed.notify_waiters();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped before the queue was empty: its runtime shut down (or its caller stopped
        // waiting). Give the place up, so that another worker can start.
        let mut state = self.queue.lock();
        state.writing = false;
        if let Some(seq) = self.current.take() {
            state.finish(seq, false);
            self.queue
                .metrics
                .add(self.queue.aggregate_type, Counter::WriteFailed);
            tracing::warn!(
                aggregate.type = self.queue.aggregate_type,
                "a background snapshot write was abandoned (its runtime shut down); the next worker writes the rest"
            );
        }
        drop(state);
        self.queue.changed.notify_waiters();
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
