//! Slices: every stream belongs to one of its store's slices, a hash of its aggregate type and
//! id, so that the feed can be split between consumers (each reading a [`SliceRange`]) and the
//! streams between databases, with each aggregate always in one slice.
//!
//! A store has [`SliceCount::DEFAULT`] (1,024) slices unless it is created with another
//! number ([`SliceCount::new`]: a power of two from 1 to 65,536; `slices=N` in a store URL).
//! The number is recorded when the store is created and fixed from then on: opening the
//! store with another number configured is [`Error::InvalidConfiguration`]. Consumers ask
//! the store for it ([`SliceFeed::slice_count`](crate::SliceFeed::slice_count)).
//!
//! The hash is part of the store contract, so that every backend, and every version of this
//! library, puts a stream in the same slice: [`stream_hash`] and [`SliceCount::slice_of`].

pub(crate) mod mask;
pub(crate) mod md5;
#[cfg(any(test, feature = "sqlite", feature = "postgres"))]
pub(crate) mod merge;
mod parts;

pub use parts::SliceParts;

use std::fmt;

use uuid::Uuid;

use crate::error::{Error, Result};

/// The hash that places the stream `(aggregate_type, aggregate_id)` in its slice: the first
/// four bytes of the MD5 digest of the type's UTF-8 bytes, a colon, and the id in its usual
/// text form (lower-case hexadecimal with hyphens, as [`Uuid`] displays it), read as a
/// big-endian integer. Its slice among `n` slices is its `log2(n)` lowest bits
/// ([`SliceCount::slice_of`]).
///
/// PostgreSQL computes the same from its own functions, so the PostgreSQL store computes each
/// row's slice in the database; in SQL, the slice among 1,024 is `('x' ||
/// substr(md5(aggregate_type || ':' || aggregate_id::text), 1, 8))::bit(32)::integer & 1023`.
///
/// ```
/// use eventsourcing_kit::slice::{stream_hash, SliceCount};
/// use eventsourcing_kit::Uuid;
///
/// // md5("Account:00000000-0000-0000-0000-000000000000") starts with 579c5730.
/// assert_eq!(stream_hash("Account", Uuid::nil()), 0x579c_5730);
/// assert_eq!(SliceCount::DEFAULT.slice_of("Account", Uuid::nil()), 0x579c_5730 % 1024);
/// ```
pub fn stream_hash(aggregate_type: &str, aggregate_id: Uuid) -> u32 {
    let mut id = Uuid::encode_buffer();
    let id = aggregate_id.hyphenated().encode_lower(&mut id);
    let digest = md5::digest(&[aggregate_type.as_bytes(), b":", id.as_bytes()]);
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// How many slices a store has: a power of two from 1 to [`SliceCount::MAX`], fixed when the
/// store is created; [`SliceCount::DEFAULT`] unless it is created otherwise.
///
/// More slices let a feed be split finer (a consumer group has at most one range per slice)
/// and a store be spread over more databases; each slice of a range read costs one cursor,
/// so a consumer of a wide range of many slices reads more slowly. 1,024 suits almost
/// every application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceCount(u32);

impl SliceCount {
    /// 1,024 slices: the number of a store created without another.
    pub const DEFAULT: SliceCount = SliceCount(1024);

    /// The most slices a store can have: 65,536.
    pub const MAX: SliceCount = SliceCount(1 << 16);

    /// `count` slices; [`Error::InvalidConfiguration`] unless it is a power of two from 1 to
    /// 65,536.
    pub fn new(count: u32) -> Result<Self> {
        if count.is_power_of_two() && count <= Self::MAX.0 {
            Ok(SliceCount(count))
        } else {
            Err(Error::InvalidConfiguration(format!(
                "a store has a power of two from 1 to {} slices, not {count}",
                Self::MAX.0
            )))
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The slice of the stream `(aggregate_type, aggregate_id)`: the lowest bits of its
    /// [`stream_hash`], a number below [`get`](Self::get).
    pub fn slice_of(self, aggregate_type: &str, aggregate_id: Uuid) -> u32 {
        stream_hash(aggregate_type, aggregate_id) & (self.0 - 1)
    }

    /// Every slice: `0..=get() - 1`.
    pub fn all(self) -> SliceRange {
        SliceRange {
            first: 0,
            last: self.0 - 1,
        }
    }

    /// Whether `range` is a range of these slices: its last slice below [`get`](Self::get).
    pub fn holds(self, range: SliceRange) -> bool {
        range.last < self.0
    }

    /// [`Error::InvalidInput`] unless `range` is a range of these slices.
    pub fn check(self, range: SliceRange) -> Result<SliceRange> {
        if self.holds(range) {
            Ok(range)
        } else {
            Err(Error::InvalidInput(format!(
                "{range} are no range of a store of {self} (0 to {})",
                self.0 - 1
            )))
        }
    }

    /// The slices split into `ranges` contiguous ranges whose sizes differ by at most one,
    /// in order; [`Error::InvalidInput`] unless `1 <= ranges <= get()`.
    ///
    /// ```
    /// use eventsourcing_kit::slice::{SliceCount, SliceRange};
    ///
    /// let quarters = SliceCount::DEFAULT.split(4)?;
    /// assert_eq!(quarters[1], SliceRange::new(256, 511)?);
    /// # Ok::<(), eventsourcing_kit::Error>(())
    /// ```
    pub fn split(self, ranges: u32) -> Result<Vec<SliceRange>> {
        if ranges == 0 || ranges > self.0 {
            return Err(Error::InvalidInput(format!(
                "{self} split into 1 to {} ranges, not {ranges}",
                self.0
            )));
        }
        let (size, larger) = (self.0 / ranges, self.0 % ranges);
        let mut first = 0;
        Ok((0..ranges)
            .map(|i| {
                let len = size + u32::from(i < larger);
                let range = SliceRange {
                    first,
                    last: first + len - 1,
                };
                first += len;
                range
            })
            .collect())
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl SliceCount {
    /// The number a SQL store recorded in its settings table `table` (its row `slices`), or
    /// [`Error::Corrupt`] if that row is missing or holds something else.
    pub(crate) fn recorded(value: Option<String>, table: &str) -> Result<Self> {
        let value = value.ok_or_else(|| Error::corrupt(table, "it has no row `slices`"))?;
        value
            .parse()
            .ok()
            .and_then(|count| SliceCount::new(count).ok())
            .ok_or_else(|| {
                Error::corrupt(
                    table,
                    format!(
                        "its row `slices` holds {value:?}, not a power of two from 1 to {}",
                        Self::MAX.0
                    ),
                )
            })
    }

    /// The store's number, `self`, unless it was `configured` otherwise:
    /// [`Error::InvalidConfiguration`] naming `store` and both numbers.
    pub(crate) fn confirm(self, configured: Option<SliceCount>, store: &str) -> Result<Self> {
        match configured {
            Some(configured) if configured != self => Err(Error::InvalidConfiguration(format!(
                "{store} was created with {self}, not {configured}: a store's number of slices is \
                 fixed when it is created; leave it out of the configuration, or give {}",
                self.0
            ))),
            _ => Ok(self),
        }
    }
}

impl Default for SliceCount {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for SliceCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 slice"),
            n => write!(f, "{n} slices"),
        }
    }
}

/// A contiguous range of slices, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceRange {
    first: u32,
    last: u32,
}

impl SliceRange {
    /// The slices `first..=last`; [`Error::InvalidInput`] unless `first <= last` and `last`
    /// is below [`SliceCount::MAX`]. Whether a store has them is its
    /// [count](SliceCount::check)'s to say.
    pub fn new(first: u32, last: u32) -> Result<Self> {
        if first > last || last >= SliceCount::MAX.0 {
            return Err(Error::InvalidInput(format!(
                "slices {first} to {last} are no range of slices (0 to {} at most)",
                SliceCount::MAX.0 - 1
            )));
        }
        Ok(SliceRange { first, last })
    }

    /// The range's first slice.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// The range's last slice.
    pub fn last(&self) -> u32 {
        self.last
    }

    /// How many slices it holds.
    pub fn len(&self) -> u32 {
        self.last - self.first + 1
    }

    /// Always `false`: a range holds at least one slice.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether it holds `slice`.
    pub fn contains(&self, slice: u32) -> bool {
        (self.first..=self.last).contains(&slice)
    }
}

impl fmt::Display for SliceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slices {}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_documented_one() {
        // md5("A:00000000-0000-0000-0000-000000000000") is 5b476c96..., as `md5sum` prints it.
        assert_eq!(stream_hash("A", Uuid::nil()), 0x5b47_6c96);
        assert_eq!(SliceCount::DEFAULT.slice_of("A", Uuid::nil()), 0x5b47_6c96 % 1024);
        assert_eq!(
            SliceCount::new(64).unwrap().slice_of("A", Uuid::nil()),
            0x5b47_6c96 % 64
        );
        assert_eq!(SliceCount::new(1).unwrap().slice_of("A", Uuid::nil()), 0);
        let id = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        let text = format!("Order:{id}");
        let digest = md5::digest(&[text.as_bytes()]);
        let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        assert_eq!(stream_hash("Order", id), first);
        assert_eq!(SliceCount::MAX.slice_of("Order", id), first % 65_536);
    }

    #[test]
    fn streams_spread_over_the_slices() {
        for slices in [SliceCount::DEFAULT, SliceCount::new(16).unwrap()] {
            let mut counts = vec![0u32; slices.get() as usize];
            for _ in 0..slices.get() * 64 {
                counts[slices.slice_of("Account", Uuid::new_v4()) as usize] += 1;
            }
            let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(
                *least > 20 && *most < 120,
                "64 a slice on average, from {least} to {most}"
            );
        }
    }

    #[test]
    fn a_count_is_a_power_of_two_up_to_65536() {
        for count in [1, 2, 64, 1024, 65_536] {
            assert_eq!(SliceCount::new(count).unwrap().get(), count);
        }
        for count in [0, 3, 1000, 131_072, u32::MAX] {
            let refused = SliceCount::new(count).unwrap_err();
            assert!(matches!(refused, Error::InvalidConfiguration(_)), "{refused}");
            assert!(refused.to_string().contains(&count.to_string()), "{refused}");
        }
        assert_eq!(SliceCount::default(), SliceCount::DEFAULT);
        assert_eq!(SliceCount::DEFAULT.to_string(), "1024 slices");
    }

    #[test]
    fn splits_cover_every_slice_once_and_bad_ranges_are_refused() {
        for slices in [SliceCount::DEFAULT, SliceCount::new(8).unwrap(), SliceCount::MAX] {
            for count in [1, 3, 4, 7, 1000, slices.get()] {
                if count > slices.get() {
                    assert!(slices.split(count).is_err());
                    continue;
                }
                let ranges = slices.split(count).unwrap();
                assert_eq!(ranges.len() as u32, count);
                assert_eq!(ranges[0].first(), 0);
                assert_eq!(ranges.last().unwrap().last(), slices.get() - 1);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].last() + 1, pair[1].first(), "contiguous");
                }
                let sizes: Vec<u32> = ranges.iter().map(SliceRange::len).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
            assert!(slices.split(0).is_err());
            assert!(slices.split(slices.get() + 1).is_err());
        }
        assert!(SliceRange::new(5, 4).is_err());
        assert!(SliceRange::new(0, 65_536).is_err());
        let sixteen = SliceCount::new(16).unwrap();
        assert_eq!(SliceRange::new(0, 15).unwrap(), sixteen.all());
        assert!(sixteen.check(SliceRange::new(8, 15).unwrap()).is_ok());
        let beyond = sixteen.check(SliceRange::new(8, 16).unwrap()).unwrap_err();
        assert!(matches!(beyond, Error::InvalidInput(_)), "{beyond}");
    }
}
