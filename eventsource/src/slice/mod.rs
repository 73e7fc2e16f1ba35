//! Slices: every stream belongs to one of [`SLICES`] slices, a hash of its aggregate type and
//! id, so that the feed can be split between consumers (each reading a [`SliceRange`]) and the
//! streams between databases, with each aggregate always in one slice.
//!
//! The hash is part of the store contract, so that every backend, and every version of this
//! library, puts a stream in the same slice: [`slice_of`].

mod md5;
#[cfg(any(test, feature = "sqlite", feature = "postgres"))]
pub(crate) mod merge;

use std::fmt;

use uuid::Uuid;

use crate::error::{Error, Result};

/// How many slices there are.
pub const SLICES: u32 = 1024;

/// The slice of the stream `(aggregate_type, aggregate_id)`: the first four bytes of the MD5
/// digest of the type's UTF-8 bytes, a colon, and the id in its usual text form (lower-case
/// hexadecimal with hyphens, as [`Uuid`] displays it), read as a big-endian integer, modulo
/// [`SLICES`].
///
/// PostgreSQL computes the same from its own functions, so the SQL stores compute each row's
/// slice in the database; in SQL, `('x' || substr(md5(aggregate_type || ':' ||
/// aggregate_id::text), 1, 8))::bit(32)::integer & 1023`.
///
/// ```
/// use eventsource::slice::{slice_of, SLICES};
/// use eventsource::Uuid;
///
/// let slice = slice_of("Account", Uuid::nil());
/// assert!(slice < SLICES);
/// // md5("Account:00000000-0000-0000-0000-000000000000") starts with 579c5730.
/// assert_eq!(slice, 0x579c_5730 % SLICES);
/// ```
pub fn slice_of(aggregate_type: &str, aggregate_id: Uuid) -> u32 {
    let mut id = Uuid::encode_buffer();
    let id = aggregate_id.hyphenated().encode_lower(&mut id);
    let digest = md5::digest(&[aggregate_type.as_bytes(), b":", id.as_bytes()]);
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % SLICES
}

/// A contiguous range of slices, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceRange {
    first: u32,
    last: u32,
}

impl SliceRange {
    /// Every slice.
    pub const ALL: SliceRange = SliceRange {
        first: 0,
        last: SLICES - 1,
    };

    /// The slices `first..=last`; [`Error::InvalidInput`] unless `first <= last < SLICES`.
    pub fn new(first: u32, last: u32) -> Result<Self> {
        if first > last || last >= SLICES {
            return Err(Error::InvalidInput(format!(
                "slices {first} to {last} are no range of the {SLICES} slices (0 to {})",
                SLICES - 1
            )));
        }
        Ok(SliceRange { first, last })
    }

    /// The whole of the slices split into `count` contiguous ranges whose sizes differ by
    /// at most one, in order; [`Error::InvalidInput`] unless `1 <= count <= SLICES`.
    ///
    /// ```
    /// use eventsource::slice::SliceRange;
    ///
    /// let quarters = SliceRange::split(4)?;
    /// assert_eq!(quarters[1], SliceRange::new(256, 511)?);
    /// # Ok::<(), eventsource::Error>(())
    /// ```
    pub fn split(count: u32) -> Result<Vec<Self>> {
        if count == 0 || count > SLICES {
            return Err(Error::InvalidInput(format!(
                "the {SLICES} slices split into 1 to {SLICES} ranges, not {count}"
            )));
        }
        let (size, larger) = (SLICES / count, SLICES % count);
        let mut first = 0;
        Ok((0..count)
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

    /// Whether it holds the slice of the stream `(aggregate_type, aggregate_id)`.
    pub fn holds(&self, aggregate_type: &str, aggregate_id: Uuid) -> bool {
        self.contains(slice_of(aggregate_type, aggregate_id))
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
        assert_eq!(slice_of("A", Uuid::nil()), 0x5b47_6c96 % SLICES);
        let id = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        let text = format!("Order:{id}");
        let digest = md5::digest(&[text.as_bytes()]);
        let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        assert_eq!(slice_of("Order", id), first % SLICES);
    }

    #[test]
    fn streams_spread_over_the_slices() {
        let mut counts = vec![0u32; SLICES as usize];
        for _ in 0..SLICES * 64 {
            counts[slice_of("Account", Uuid::new_v4()) as usize] += 1;
        }
        let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            *least > 20 && *most < 120,
            "64 a slice on average, from {least} to {most}"
        );
    }

    #[test]
    fn splits_cover_every_slice_once_and_bad_ranges_are_refused() {
        for count in [1, 3, 4, 7, 1000, SLICES] {
            let ranges = SliceRange::split(count).unwrap();
            assert_eq!(ranges.len() as u32, count);
            assert_eq!(ranges[0].first(), 0);
            assert_eq!(ranges.last().unwrap().last(), SLICES - 1);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].last() + 1, pair[1].first(), "contiguous");
            }
            let sizes: Vec<u32> = ranges.iter().map(SliceRange::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
        assert!(SliceRange::split(0).is_err());
        assert!(SliceRange::split(SLICES + 1).is_err());
        assert!(SliceRange::new(5, 4).is_err());
        assert!(SliceRange::new(0, SLICES).is_err());
        assert_eq!(SliceRange::new(0, SLICES - 1).unwrap(), SliceRange::ALL);
    }
}
