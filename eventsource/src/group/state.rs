//! A consumer group as its subscription store holds it, read in one listing: its layouts,
//! the lease and checkpoint of each range, its live workers; and what follows from them:
//! where each slice was handled up to before a layout, and which earlier ranges a range
//! replaces.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::slice::{SliceParts, SliceRange};
use crate::subscription::names::{self, Entry};
use crate::subscription::{SubscriptionStatus, SubscriptionStore};

/// A range's lease holder and checkpoint, as listed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) owner: Option<Uuid>,
    pub(crate) checkpoint: Option<u64>,
    /// Whether its last lease ran out without being let go.
    pub(crate) abandoned: bool,
}

impl From<&SubscriptionStatus> for Held {
    fn from(status: &SubscriptionStatus) -> Self {
        Held {
            owner: status.owner,
            checkpoint: status.checkpoint,
            abandoned: status.abandoned,
        }
    }
}

/// What the store holds of one group.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupState {
    /// The single consumer the group grew from, if the store knows it.
    pub(crate) single: Option<Held>,
    /// Each recorded layout and its number of ranges.
    pub(crate) layouts: BTreeMap<u32, u32>,
    /// Each range of every layout the store knows.
    pub(crate) ranges: BTreeMap<(u32, SliceRange), Held>,
    /// The owner of each worker slot whose lease has not run out.
    pub(crate) members: BTreeMap<u32, Option<Uuid>>,
    /// The slices of the store whose feed the group reads, and their parts: a range lies
    /// within one part.
    pub(crate) slices: SliceParts,
}

impl GroupState {
    /// Reads the group's state from one listing of the store; the group reads the feed of a
    /// store of `slices` slices. A layout or range the store records for more slices is
    /// [`Error::Corrupt`].
    pub(crate) async fn read(
        store: &dyn SubscriptionStore,
        group: &str,
        slices: &SliceParts,
    ) -> Result<Self> {
        let slice_count = slices.count();
        let mut state = GroupState {
            slices: slices.clone(),
            ..GroupState::default()
        };
        for status in store.subscriptions().await? {
            match names::parse(group, &status.name) {
                Some(Entry::Single) => state.single = Some(Held::from(&status)),
                Some(Entry::Layout(generation)) => {
                    if let Some(count) = status.checkpoint {
                        let count = u32::try_from(count)
                            .ok()
                            .filter(|ranges| (1..=slice_count.get()).contains(ranges))
                            .ok_or_else(|| {
                                Error::corrupt(
                                    format!("layout {generation} of consumer group {group}"),
                                    format!(
                                        "it records {count} ranges, not 1 to {} (the store has {slice_count})",
                                        slice_count.get()
                                    ),
                                )
                            })?;
                        state.layouts.insert(generation, count);
                    }
                }
                Some(Entry::Range(generation, range)) => {
                    if !slice_count.holds(range) {
                        return Err(Error::corrupt(
                            format!("range {} of consumer group {group}", status.name),
                            format!("its {range} lie beyond the store's {slice_count}"),
                        ));
                    }
                    state.ranges.insert((generation, range), Held::from(&status));
                }
                Some(Entry::Member(slot)) => {
                    state.members.insert(slot, status.owner);
                }
                None => {}
            }
        }
        Ok(state)
    }

    /// The latest layout: its generation and number of ranges.
    pub(crate) fn current(&self) -> Option<(u32, u32)> {
        self.layouts
            .iter()
            .next_back()
            .map(|(generation, count)| (*generation, *count))
    }

    /// The ranges of layout `generation`, in order.
    pub(crate) fn ranges_of(&self, generation: u32) -> Vec<SliceRange> {
        self.layouts
            .get(&generation)
            .and_then(|count| self.slices.split(*count).ok())
            .unwrap_or_default()
    }

    /// A range's lease holder and checkpoint.
    pub(crate) fn range(&self, generation: u32, range: SliceRange) -> Held {
        self.ranges.get(&(generation, range)).copied().unwrap_or_default()
    }

    /// The position up to which `range` of layout `generation` has handled its events: its
    /// checkpoint, or before it has one, where the ranges it replaces left off.
    pub(crate) fn reached(&self, generation: u32, range: SliceRange) -> u64 {
        match self.range(generation, range).checkpoint {
            Some(checkpoint) => checkpoint,
            None => {
                let handled = self.handled_before(generation);
                (range.first()..=range.last())
                    .map(|slice| handled[slice as usize])
                    .min()
                    .unwrap_or(0)
            }
        }
    }

    /// The position up to which the events of `slice` are handled: by the range of the
    /// current layout that holds it (its checkpoint, raised to where the layouts before it
    /// left the slice), or by the single consumer.
    pub(crate) fn handled_slice(&self, slice: u32) -> u64 {
        let Some((generation, _)) = self.current() else {
            return self.single.and_then(|held| held.checkpoint).unwrap_or(0);
        };
        let before = self
            .handled_before(generation)
            .get(slice as usize)
            .copied()
            .unwrap_or(0);
        let range = self
            .ranges_of(generation)
            .into_iter()
            .find(|range| range.contains(slice));
        let checkpoint = range.and_then(|range| self.range(generation, range).checkpoint);
        checkpoint.unwrap_or(0).max(before)
    }

    /// How many workers hold a slot.
    pub(crate) fn live_members(&self) -> usize {
        self.members.values().filter(|owner| owner.is_some()).count()
    }

    /// For each slice, the position up to which the layouts before `generation` handled its
    /// events: the single consumer's checkpoint, raised by each later range's own checkpoint
    /// (a range handled its slices up to its checkpoint, and had skipped, as handled, what
    /// the ranges before it had handled beyond it).
    pub(crate) fn handled_before(&self, generation: u32) -> Vec<u64> {
        let single = self.single.and_then(|held| held.checkpoint).unwrap_or(0);
        let mut handled = vec![single; self.slices.count().get() as usize];
        for earlier in self.layouts.keys().filter(|g| **g < generation) {
            for range in self.ranges_of(*earlier) {
                if let Some(checkpoint) = self.range(*earlier, range).checkpoint {
                    for slice in range.first()..=range.last() {
                        let done = &mut handled[slice as usize];
                        *done = (*done).max(checkpoint);
                    }
                }
            }
        }
        handled
    }

    /// The names of the earlier consumers whose work `range` of layout `generation` takes
    /// over: the single consumer, and every range of an earlier layout that shares a slice
    /// with it, wherever the store knows them.
    pub(crate) fn replaced(&self, group: &str, generation: u32, range: SliceRange) -> Vec<String> {
        let single = self.single.map(|_| group.to_owned());
        let earlier = self
            .ranges
            .keys()
            .filter(|(g, other)| *g < generation && overlap(*other, range))
            .map(|(g, other)| names::range(group, *g, *other));
        single.into_iter().chain(earlier).collect()
    }
}

fn overlap(a: SliceRange, b: SliceRange) -> bool {
    a.first() <= b.last() && b.first() <= a.last()
}

/// The parts of `range` with the position each was handled up to, from a position per slice:
/// runs of slices handled up to one position are one part.
pub(crate) fn parts(handled: &[u64], range: SliceRange) -> Vec<(SliceRange, u64)> {
    let mut parts: Vec<(SliceRange, u64)> = Vec::new();
    for slice in range.first()..=range.last() {
        let position = handled[slice as usize];
        match parts.last_mut() {
            Some((part, at)) if *at == position => {
                *part = SliceRange::new(part.first(), slice).expect("slices grow within the range");
            }
            _ => parts.push((
                SliceRange::new(slice, slice).expect("a slice of the range"),
                position,
            )),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::SliceCount;

    fn held(checkpoint: u64) -> Held {
        Held {
            owner: None,
            checkpoint: Some(checkpoint),
            abandoned: false,
        }
    }

    #[test]
    fn what_earlier_layouts_handled_is_the_highest_checkpoint_over_each_slice() {
        let mut state = GroupState {
            single: Some(held(10)),
            ..GroupState::default()
        };
        state.layouts.insert(1, 2);
        state.layouts.insert(2, 4);
        let halves = SliceCount::DEFAULT.split(2).unwrap();
        state.ranges.insert((1, halves[0]), held(50));
        // The second half of layout 1 never stored a checkpoint.
        let quarters = SliceCount::DEFAULT.split(4).unwrap();
        state.ranges.insert((2, quarters[0]), held(40));
        state.ranges.insert((2, quarters[3]), held(70));

        let before_2 = state.handled_before(2);
        assert_eq!(
            parts(&before_2, SliceCount::DEFAULT.all()),
            [(halves[0], 50), (halves[1], 10)]
        );
        let before_3 = state.handled_before(3);
        assert_eq!(
            parts(&before_3, SliceCount::DEFAULT.all()),
            [(halves[0], 50), (quarters[2], 10), (quarters[3], 70)]
        );
        let names = state.replaced("g", 3, quarters[1]);
        assert_eq!(names, ["g".to_owned(), names::range("g", 1, halves[0])]);
    }
}
