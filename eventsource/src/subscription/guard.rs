//! The delivery guard: checks that the events of each aggregate reach a consumer in version
//! order, once and without a gap, and says what broke it.
//!
//! The feed gives each stream's events in version order, so on a store that keeps its contract
//! the guard finds nothing. It is there to catch what would otherwise go unseen: a store or a
//! wrapper that returns rows twice or out of order, events appended behind the store's back,
//! a rebalance that hands one aggregate to two workers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::RangeInclusive;
use std::sync::Arc;

use uuid::Uuid;

use crate::event::StoredEvent;

/// How many aggregates the guard follows at once; past it, it starts afresh (an aggregate it
/// no longer follows gives its next event as a new starting point, so nothing is counted
/// wrongly, and memory stays bounded).
const FOLLOWED: usize = 100_000;

/// How many gaps of one aggregate the guard remembers, to tell a late event from a repeat.
const GAPS: usize = 8;

/// What the guard found wrong with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disorder {
    /// A version the consumer was handed already.
    Duplicate,
    /// A version past the next one: the versions between were not handed over.
    Gap,
    /// A version that a gap skipped, handed over late.
    Reorder,
}

impl Disorder {
    /// The kind's name, as the metrics label it: `duplicate`, `gap` or `reorder`.
    pub fn as_str(self) -> &'static str {
        match self {
            Disorder::Duplicate => "duplicate",
            Disorder::Gap => "gap",
            Disorder::Reorder => "reorder",
        }
    }
}

/// What a consumer does when the guard finds an event out of order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnDisorder {
    /// Counts it in the metrics, logs it, and hands the event over (the default).
    #[default]
    Count,
    /// Counts and logs it, and stops with [`Error::SubscriptionStopped`](crate::Error::SubscriptionStopped)
    /// before handing its batch over.
    Stop,
}

/// The last version handed over of each aggregate followed, and the gaps met, by aggregate
/// id (then type: one id may stand for streams of several types).
#[derive(Default)]
pub(crate) struct DeliveryGuard {
    followed: HashMap<Uuid, Vec<Followed>, BuildHasherDefault<IdHasher>>,
    count: usize,
}

struct Followed {
    aggregate_type: Arc<str>,
    version: u64,
    gaps: Vec<RangeInclusive<u64>>,
}

impl DeliveryGuard {
    /// Checks the next event handed over, and remembers it.
    pub(crate) fn check(&mut self, event: &StoredEvent) -> Option<Disorder> {
        let version = event.aggregate_version;
        let same_type = |f: &Followed| {
            Arc::ptr_eq(&f.aggregate_type, &event.aggregate_type) || f.aggregate_type == event.aggregate_type
        };
        let seen = match self.followed.get_mut(&event.aggregate_id) {
            Some(streams) => streams.iter_mut().find(|f| same_type(f)),
            None => None,
        };
        let Some(seen) = seen else {
            if self.count >= FOLLOWED {
                self.followed.clear();
                self.count = 0;
            }
            self.count += 1;
            self.followed
                .entry(event.aggregate_id)
                .or_default()
                .push(Followed {
                    aggregate_type: event.aggregate_type.clone(),
                    version,
                    gaps: Vec::new(),
                });
            return None;
        };
        // A tombstone follows the versions its deletion removed (see `crate::lifecycle`).
        if version == seen.version + 1
            || (version > seen.version && *event.event_type == *crate::lifecycle::DELETED)
        {
            seen.version = version;
            return None;
        }
        if version > seen.version {
            if seen.gaps.len() == GAPS {
                seen.gaps.remove(0);
            }
            seen.gaps.push(seen.version + 1..=version - 1);
            seen.version = version;
            return Some(Disorder::Gap);
        }
        let Some(at) = seen.gaps.iter().position(|gap| gap.contains(&version)) else {
            return Some(Disorder::Duplicate);
        };
        let gap = seen.gaps.remove(at);
        let (start, end) = gap.into_inner();
        if start < version {
            seen.gaps.push(start..=version - 1);
        }
        if version < end {
            seen.gaps.push(version + 1..=end);
        }
        Some(Disorder::Reorder)
    }
}

/// Hashes an aggregate id by folding its bytes: ids are random (or end in random bits), so
/// this spreads them as well as a keyed hash, at a fraction of the cost per event.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: Uuid, version: u64) -> StoredEvent {
        StoredEvent {
            position: version,
            envelope: crate::EventEnvelope::noted(id, "Guarded", version),
        }
    }

    #[test]
    fn each_kind_is_told_apart() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut guard = DeliveryGuard::default();
        let found: Vec<_> = [
            (a, 3),
            (a, 4),
            (b, 1),
            (a, 4),
            (a, 7),
            (a, 5),
            (a, 5),
            (a, 6),
            (b, 2),
        ]
        .into_iter()
        .map(|(id, v)| guard.check(&at(id, v)))
        .collect();
        assert_eq!(
            found,
            [
                None,
                None,
                None,
                Some(Disorder::Duplicate),
                Some(Disorder::Gap),
                Some(Disorder::Reorder),
                Some(Disorder::Duplicate),
                Some(Disorder::Reorder),
                None
            ]
        );
    }

    #[test]
    fn a_tombstone_past_the_versions_seen_is_no_gap() {
        let id = Uuid::new_v4();
        let mut guard = DeliveryGuard::default();
        assert_eq!(guard.check(&at(id, 1)), None);
        let tombstone = StoredEvent {
            position: 9,
            envelope: crate::EventEnvelope::from_json(id, "Guarded", 9, crate::lifecycle::DELETED, 1, "{}"),
        };
        assert_eq!(guard.check(&tombstone), None);
        assert_eq!(guard.check(&at(id, 9)), Some(Disorder::Duplicate));
        assert_eq!(guard.check(&at(id, 11)), Some(Disorder::Gap));
    }
}
