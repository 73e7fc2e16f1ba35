//! Counters of a subscription, readable by the program.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a subscription did: events handled, retries, batches that failed every attempt,
/// events recorded as dead letters, and restarts under a supervisor. Shared by clones of its `Arc`.
#[derive(Debug, Default)]
pub struct SubscriptionMetrics {
    handled: AtomicU64,
    retries: AtomicU64,
    failed_batches: AtomicU64,
    dead_letters: AtomicU64,
    restarts: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    reorders: AtomicU64,
}

impl SubscriptionMetrics {
    /// Events the handler returned `Ok` for (counted again when handed over again).
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Handler failures that were tried again.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Batches that failed every attempt.
    pub fn failed_batches(&self) -> u64 {
        self.failed_batches.load(Ordering::Relaxed)
    }

    /// Events recorded as dead letters.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// Times a supervised subscription was started again after it stopped on an error
    /// ([`Subscription::run_supervised`](super::Subscription::run_supervised)).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Events whose version was handed over before, as the delivery guard saw them
    /// ([`Consumer::on_disorder`](super::Consumer::on_disorder)).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Events that came after a gap in their aggregate's versions.
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Events that came after a later version of their aggregate.
    pub fn reorders(&self) -> u64 {
        self.reorders.load(Ordering::Relaxed)
    }

    pub(super) fn add_disorder(&self, kind: super::Disorder) {
        let counter = match kind {
            super::Disorder::Duplicate => &self.duplicates,
            super::Disorder::Gap => &self.gaps,
            super::Disorder::Reorder => &self.reorders,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_handled(&self, n: u64) {
        self.handled.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_failed_batch(&self) {
        self.failed_batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }
}
