//! The shard map: which shard holds each slice, read from a program's own values or from a
//! small text file.

use std::fmt;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::slice::{SliceCount, SliceParts, SliceRange};

/// Which of a sharded store's shards holds each slice: contiguous ranges of slices, in order,
/// each held by one shard, together every slice of the store (see [`crate::slice`]). A shard
/// may hold several ranges; every shard holds at least one.
///
/// Each range is a part of the sharded store's slices with a feed of its own
/// ([`SliceParts`]): its shard's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    parts: SliceParts,
    /// The shard of each part, by the part's index.
    shard_of_part: Vec<usize>,
    shards: usize,
}

impl ShardMap {
    /// The slices of a store of `count` slices, each range given to the shard of its index;
    /// [`Error::InvalidConfiguration`] unless the ranges, sorted, are contiguous and hold
    /// every slice once, and every shard from 0 to the highest index holds one. Adjacent
    /// ranges of one shard are one range: one feed holds them.
    pub fn new(count: SliceCount, mut ranges: Vec<(SliceRange, usize)>) -> Result<Self> {
        ranges.sort();
        let mut merged: Vec<(SliceRange, usize)> = Vec::with_capacity(ranges.len());
        for (range, shard) in ranges {
            match merged.last_mut() {
                Some((last, holder)) if *holder == shard && last.last() + 1 == range.first() => {
                    *last = SliceRange::new(last.first(), range.last())?;
                }
                _ => merged.push((range, shard)),
            }
        }
        let ranges = merged;
        let parts = SliceParts::new(count, ranges.iter().map(|(range, _)| *range).collect())?;
        let shard_of_part: Vec<usize> = ranges.iter().map(|(_, shard)| *shard).collect();
        let shards = shard_of_part.iter().max().map_or(0, |highest| highest + 1);
        if let Some(idle) = (0..shards).find(|shard| !shard_of_part.contains(shard)) {
            return Err(Error::InvalidConfiguration(format!(
                "shard {idle} of the shard map holds no slice: every shard holds at least one range"
            )));
        }
        Ok(ShardMap {
            parts,
            shard_of_part,
            shards,
        })
    }

    /// `count` slices split into `shards` ranges of equal size (as [`SliceCount::split`]
    /// splits them), one a shard, in order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] unless `1 <= shards <=` the number of slices.
    pub fn even(count: SliceCount, shards: usize) -> Result<Self> {
        let ranges = u32::try_from(shards)
            .ok()
            .and_then(|shards| count.split(shards).ok())
            .ok_or_else(|| {
                Error::InvalidConfiguration(format!(
                    "a store of {count} splits between 1 and {} shards, not {shards}",
                    count.get()
                ))
            })?;
        Self::new(
            count,
            ranges.into_iter().enumerate().map(|(i, r)| (r, i)).collect(),
        )
    }

    /// The number of slices.
    pub fn slice_count(&self) -> SliceCount {
        self.parts.count()
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The ranges of slices, in order, each the part of the slices one feed orders.
    pub fn parts(&self) -> &SliceParts {
        &self.parts
    }

    /// Each range of slices, in order, with the shard that holds it.
    pub fn ranges(&self) -> impl Iterator<Item = (SliceRange, usize)> + '_ {
        self.parts
            .parts()
            .iter()
            .copied()
            .zip(self.shard_of_part.iter().copied())
    }

    /// The ranges of slices that shard `shard` holds.
    pub fn ranges_of(&self, shard: usize) -> Vec<SliceRange> {
        self.ranges()
            .filter(|(_, holder)| *holder == shard)
            .map(|(range, _)| range)
            .collect()
    }

    /// The shard that holds the stream `(aggregate_type, aggregate_id)`.
    pub fn shard_of(&self, aggregate_type: &str, aggregate_id: Uuid) -> usize {
        let slice = self.slice_count().slice_of(aggregate_type, aggregate_id);
        let part = self
            .parts
            .part_of(slice)
            .expect("a map holds every slice of its count");
        self.shard_of_part[part]
    }

    /// The shard that holds every slice of `range`, if one does and it lies within one range
    /// of the map (one feed).
    pub fn shard_of_range(&self, range: SliceRange) -> Option<usize> {
        self.parts
            .part_holding(range)
            .map(|part| self.shard_of_part[part])
    }

    /// Reads a shard map file: a line for each range of slices, `FIRST-LAST URL`, the
    /// ranges together every slice of a store of a power of two of them; blank lines and
    /// lines starting with `#` are skipped. Ranges with one URL are one shard. Returns the map
    /// and the URL of each shard, by index (in the order the URLs first appear).
    ///
    /// ```text
    /// # 1,024 slices over two PostgreSQL databases
    /// 0-511     postgres://app@db-a/events
    /// 512-1023  postgres://app@db-b/events
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] naming the line at fault, or the slices the ranges
    /// miss or hold twice.
    pub fn parse(text: &str) -> Result<(ShardMap, Vec<String>)> {
        let mut urls: Vec<String> = Vec::new();
        let mut ranges = Vec::new();
        for (number, line) in text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| {
                Error::InvalidConfiguration(format!(
                    "line {number} of the shard map {what}: a line is `FIRST-LAST URL`, as `0-511 postgres://db-a/events`"
                ))
            };
            let (range, url) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("has no URL"))?;
            let (first, last) = range
                .split_once('-')
                .ok_or_else(|| bad("has no range of slices"))?;
            let slice = |text: &str| {
                text.parse::<u32>()
                    .map_err(|_| bad("has a slice that is no number"))
            };
            let range = SliceRange::new(slice(first)?, slice(last)?)
                .map_err(|_| bad("has a range that is empty or past the most slices a store has (65,536)"))?;
            let url = url.trim();
            let shard = match urls.iter().position(|known| known == url) {
                Some(shard) => shard,
                None => {
                    urls.push(url.to_owned());
                    urls.len() - 1
                }
            };
            ranges.push((range, shard));
        }
        let slices = ranges
            .iter()
            .map(|(range, _)| u64::from(range.len()))
            .sum::<u64>();
        let count = u32::try_from(slices)
            .ok()
            .and_then(|slices| SliceCount::new(slices).ok())
            .ok_or_else(|| {
                Error::InvalidConfiguration(format!(
                    "the shard map's ranges hold {slices} slices; a store has a power of two from 1 to {}",
                    SliceCount::MAX.get()
                ))
            })?;
        Ok((ShardMap::new(count, ranges)?, urls))
    }
}

impl fmt::Display for ShardMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} over {} shards:", self.slice_count(), self.shards)?;
        for (range, shard) in self.ranges() {
            write!(f, " {}-{} on shard {shard};", range.first(), range.last())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u32, last: u32) -> SliceRange {
        SliceRange::new(first, last).unwrap()
    }

    #[test]
    fn every_stream_has_the_shard_of_its_slice() {
        let map = ShardMap::even(SliceCount::DEFAULT, 4).unwrap();
        assert_eq!(map.shards(), 4);
        assert_eq!(map.ranges_of(1), [range(256, 511)]);
        for _ in 0..200 {
            let id = Uuid::new_v4();
            let slice = SliceCount::DEFAULT.slice_of("Order", id);
            assert_eq!(map.shard_of("Order", id), (slice / 256) as usize);
        }
        assert_eq!(map.shard_of_range(range(256, 300)), Some(1));
        assert_eq!(map.shard_of_range(range(250, 300)), None);
        assert!(ShardMap::even(SliceCount::new(2).unwrap(), 3).is_err());
        assert!(ShardMap::even(SliceCount::DEFAULT, 0).is_err());
    }

    #[test]
    fn a_map_file_gives_each_url_a_shard() {
        let text = "# two databases\n\n0-255 sqlite:a.db\n256-511   sqlite:b.db\n512-1023 sqlite:a.db\n";
        let (map, urls) = ShardMap::parse(text).unwrap();
        assert_eq!(urls, ["sqlite:a.db", "sqlite:b.db"]);
        assert_eq!(map.slice_count(), SliceCount::DEFAULT);
        assert_eq!(map.ranges_of(0), [range(0, 255), range(512, 1023)]);
        assert_eq!(map.ranges_of(1), [range(256, 511)]);
        let one = ShardMap::parse("0-511 sqlite:a.db\n512-1023 sqlite:a.db")
            .unwrap()
            .0;
        assert_eq!(one.parts().parts(), [range(0, 1023)], "one shard, one feed");
    }

    #[test]
    fn a_bad_map_is_a_configuration_error_naming_its_fault() {
        for (text, fault) in [
            ("0-511", "line 1"),
            ("0-x sqlite:a.db", "line 1"),
            ("# c\n0 sqlite:a.db", "line 2"),
            ("5-4 sqlite:a.db", "line 1"),
            ("0-511 sqlite:a.db\n512-1000 sqlite:b.db", "1001 slices"),
            ("0-511 sqlite:a.db\n511-1022 sqlite:b.db", "contiguous"),
            ("", "0 slices"),
        ] {
            let refused = ShardMap::parse(text).unwrap_err();
            assert!(
                matches!(refused, Error::InvalidConfiguration(_)),
                "{text:?}: {refused}"
            );
            assert!(refused.to_string().contains(fault), "{text:?}: {refused}");
        }
        let idle = ShardMap::new(SliceCount::new(4).unwrap(), vec![(range(0, 3), 1)]).unwrap_err();
        assert!(idle.to_string().contains("shard 0"), "{idle}");
    }
}
