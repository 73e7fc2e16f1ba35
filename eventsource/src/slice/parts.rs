//! The parts of a store's slices that each have a feed of their own: one part, every slice,
//! for a store with one feed; a part for each range of a sharded store's map.

use std::fmt;

use super::{SliceCount, SliceRange};
use crate::error::{Error, Result};

/// A store's slices cut into the parts whose events one feed orders: contiguous ranges, in
/// order, that hold every slice once. A consumer reads a range of slices within one part,
/// since positions are comparable only within one feed; a consumer group cuts its ranges at
/// the parts' bounds ([`split`](Self::split)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceParts {
    count: SliceCount,
    parts: Vec<SliceRange>,
}

impl SliceParts {
    /// Every slice of a store of `count` slices in one part: a store with one feed.
    pub fn whole(count: SliceCount) -> Self {
        SliceParts {
            count,
            parts: vec![count.all()],
        }
    }

    /// The slices of a store of `count` slices cut into `parts`;
    /// [`Error::InvalidConfiguration`] unless they are contiguous, in order, and hold every
    /// slice from 0 to `count - 1` once.
    pub fn new(count: SliceCount, parts: Vec<SliceRange>) -> Result<Self> {
        let mut next = 0;
        for part in &parts {
            if part.first() != next {
                return Err(Error::InvalidConfiguration(format!(
                    "the parts of {count} are contiguous ranges from slice 0 in order: {part} is where slice {next} should start one"
                )));
            }
            next = part.last() + 1;
        }
        if next != count.get() {
            return Err(Error::InvalidConfiguration(format!(
                "the parts of {count} must hold slices 0 to {}; these hold {}",
                count.get() - 1,
                match next {
                    0 => "none".to_owned(),
                    next => format!("0 to {}", next - 1),
                }
            )));
        }
        Ok(SliceParts { count, parts })
    }

    /// The number of slices.
    pub fn count(&self) -> SliceCount {
        self.count
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[SliceRange] {
        &self.parts
    }

    /// The index of the part that holds `slice`, if the store has it.
    pub fn part_of(&self, slice: u32) -> Option<usize> {
        let index = self.parts.partition_point(|part| part.last() < slice);
        self.parts
            .get(index)
            .filter(|part| part.contains(slice))
            .map(|_| index)
    }

    /// The index of the part that holds every slice of `range`, if one does.
    pub fn part_holding(&self, range: SliceRange) -> Option<usize> {
        self.part_of(range.first())
            .filter(|index| self.parts[*index].contains(range.last()))
    }

    /// The slices split into `ranges` ranges as [`SliceCount::split`] splits them, each
    /// then cut at the parts' bounds: never fewer than `ranges` ranges, each within one part.
    ///
    /// ```
    /// use eventsourcing_kit::slice::{SliceCount, SliceParts, SliceRange};
    ///
    /// let count = SliceCount::new(16)?;
    /// let parts = SliceParts::new(count, vec![SliceRange::new(0, 5)?, SliceRange::new(6, 15)?])?;
    /// assert_eq!(
    ///     parts.split(2)?,
    ///     [SliceRange::new(0, 5)?, SliceRange::new(6, 7)?, SliceRange::new(8, 15)?]
    /// );
    /// # Ok::<(), eventsourcing_kit::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] unless `1 <= ranges <=` the number of slices.
    pub fn split(&self, ranges: u32) -> Result<Vec<SliceRange>> {
        let mut cut = Vec::new();
        for range in self.count.split(ranges)? {
            for part in &self.parts {
                let (first, last) = (range.first().max(part.first()), range.last().min(part.last()));
                if first <= last {
                    cut.push(SliceRange { first, last });
                }
            }
        }
        Ok(cut)
    }
}

impl Default for SliceParts {
    /// [`SliceCount::DEFAULT`] slices in one part.
    fn default() -> Self {
        Self::whole(SliceCount::DEFAULT)
    }
}

impl fmt::Display for SliceParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts.len() {
            1 => write!(f, "{} in one feed", self.count),
            n => write!(f, "{} in {n} feeds", self.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u32, last: u32) -> SliceRange {
        SliceRange::new(first, last).unwrap()
    }

    #[test]
    fn parts_hold_every_slice_once_in_order() {
        let count = SliceCount::new(16).unwrap();
        assert!(SliceParts::new(count, vec![range(0, 7), range(8, 15)]).is_ok());
        for bad in [
            vec![],
            vec![range(1, 15)],
            vec![range(0, 7)],
            vec![range(0, 7), range(7, 15)],
            vec![range(0, 7), range(9, 15)],
            vec![range(8, 15), range(0, 7)],
            vec![range(0, 16)],
        ] {
            let refused = SliceParts::new(count, bad.clone()).unwrap_err();
            assert!(
                matches!(refused, Error::InvalidConfiguration(_)),
                "{bad:?}: {refused}"
            );
        }
    }

    #[test]
    fn a_split_is_cut_at_the_parts_bounds() {
        let count = SliceCount::new(16).unwrap();
        let whole = SliceParts::whole(count);
        assert_eq!(whole.split(4).unwrap(), count.split(4).unwrap());
        let parts = SliceParts::new(count, vec![range(0, 3), range(4, 11), range(12, 15)]).unwrap();
        assert_eq!(
            parts.split(1).unwrap(),
            [range(0, 3), range(4, 11), range(12, 15)]
        );
        assert_eq!(
            parts.split(2).unwrap(),
            [range(0, 3), range(4, 7), range(8, 11), range(12, 15)]
        );
        for ranges in 1..=16 {
            let split = parts.split(ranges).unwrap();
            assert!(split.len() >= ranges as usize);
            assert!(
                split.iter().all(|r| parts.part_holding(*r).is_some()),
                "{split:?}"
            );
            assert_eq!(split.iter().map(SliceRange::len).sum::<u32>(), 16);
        }
        assert_eq!(parts.part_of(0), Some(0));
        assert_eq!(parts.part_of(11), Some(1));
        assert_eq!(parts.part_of(15), Some(2));
        assert_eq!(parts.part_of(16), None);
        assert_eq!(parts.part_holding(range(3, 4)), None);
        assert!(parts.split(0).is_err() && parts.split(17).is_err());
    }
}
