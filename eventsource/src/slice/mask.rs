//! A set of slices as an append signal carries it: which consumers of the feed an append
//! concerns (see [`AppendSignal`](crate::AppendSignal)).
//!
//! The set is kept at the grain of a store of [`GRAIN`] slices, whatever the store's own
//! number: a stream counts by the [`GRAIN`] lowest-bit slice of its [`stream_hash`]. For a
//! store of at most [`GRAIN`] slices that is exact (each grain slice lies in one slice of the
//! store); for a larger store a grain slice stands for every slice congruent to it, so a
//! consumer may wake for an append of a neighbour, never miss one of its own.

use uuid::Uuid;

use super::{stream_hash, SliceCount, SliceRange};

/// The number of slices a mask tells apart.
pub(crate) const GRAIN: usize = 1024;

const WORDS: usize = GRAIN / 64;

/// A set of slices at the grain of a store of [`GRAIN`] slices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SliceMask([u64; WORDS]);

impl SliceMask {
    /// The slice of the stream `(aggregate_type, aggregate_id)` added.
    pub(crate) fn insert_stream(&mut self, aggregate_type: &str, aggregate_id: Uuid) {
        self.insert(stream_hash(aggregate_type, aggregate_id) as usize % GRAIN);
    }

    /// The mask of the slices of `streams` (aggregate type and id).
    pub(crate) fn of_streams<'a>(streams: impl IntoIterator<Item = (&'a str, Uuid)>) -> Self {
        let mut mask = Self::default();
        for (aggregate_type, aggregate_id) in streams {
            mask.insert_stream(aggregate_type, aggregate_id);
        }
        mask
    }

    /// The mask of one stream.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn of_stream(aggregate_type: &str, aggregate_id: Uuid) -> Self {
        let mut mask = Self::default();
        mask.insert_stream(aggregate_type, aggregate_id);
        mask
    }

    /// The mask of every stream of `range`, of a store of `slices` slices.
    pub(crate) fn of_range(slices: SliceCount, range: SliceRange) -> Self {
        let mut mask = Self::default();
        let count = slices.get() as usize;
        if count <= GRAIN {
            // The grain slices whose lowest bits are a slice of the range.
            for grain in 0..GRAIN {
                if range.contains((grain % count) as u32) {
                    mask.insert(grain);
                }
            }
        } else {
            for slice in (range.first()..=range.last()).take(GRAIN) {
                mask.insert(slice as usize % GRAIN);
            }
        }
        mask
    }

    fn insert(&mut self, grain: usize) {
        self.0[grain / 64] |= 1 << (grain % 64);
    }

    /// Whether it holds no slice.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }

    /// Adds the slices of `other`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn union(&mut self, other: &SliceMask) {
        for (word, other) in self.0.iter_mut().zip(other.0) {
            *word |= other;
        }
    }

    /// Its grain slices, in order.
    pub(crate) fn grains(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, word)| {
            let mut bits = *word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    i * 64 + bit
                })
            })
        })
    }

    /// The mask of the grain slices for which `pick` holds.
    pub(crate) fn of_grains(pick: impl Fn(usize) -> bool) -> Self {
        let mut mask = Self::default();
        for grain in (0..GRAIN).filter(|grain| pick(*grain)) {
            mask.insert(grain);
        }
        mask
    }

    /// Its text form, 256 hexadecimal digits (four grain slices each, the first digit's
    /// lowest bit the first slice): what a notification between processes carries.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn to_hex(self) -> String {
        let mut text = String::with_capacity(GRAIN / 4);
        for word in self.0 {
            for nibble in 0..16 {
                let digit = (word >> (nibble * 4)) & 0xf;
                text.push(char::from_digit(digit as u32, 16).expect("a digit below 16"));
            }
        }
        text
    }

    /// The mask of [`to_hex`](Self::to_hex)'s text; `None` for any other text.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn from_hex(text: &str) -> Option<Self> {
        if text.len() != GRAIN / 4 {
            return None;
        }
        let mut mask = Self::default();
        for (i, c) in text.chars().enumerate() {
            let digit = u64::from(c.to_digit(16)?);
            mask.0[i / 16] |= digit << ((i % 16) * 4);
        }
        Some(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_holds_the_streams_of_its_slices_and_only_those_of_a_small_store() {
        for count in [1, 8, 1024] {
            let slices = SliceCount::new(count).unwrap();
            let ranges = slices.split(count.min(4)).unwrap();
            for _ in 0..200 {
                let id = Uuid::new_v4();
                let stream = SliceMask::of_stream("Order", id);
                let slice = slices.slice_of("Order", id);
                for range in &ranges {
                    let mut both = SliceMask::of_range(slices, *range);
                    let before = both;
                    both.union(&stream);
                    assert_eq!(both == before, range.contains(slice), "{count} slices, {range}");
                }
            }
        }
    }

    #[test]
    fn a_range_of_a_large_store_holds_at_least_the_streams_of_its_slices() {
        let slices = SliceCount::MAX;
        let range = SliceRange::new(5000, 5100).unwrap();
        let mask = SliceMask::of_range(slices, range);
        assert_eq!(mask.grains().count(), 101);
        let mut found = 0;
        while found < 20 {
            let id = Uuid::new_v4();
            if range.contains(slices.slice_of("Order", id)) {
                let mut both = mask;
                both.union(&SliceMask::of_stream("Order", id));
                assert_eq!(both, mask);
                found += 1;
            }
        }
        let wide = SliceMask::of_range(slices, SliceRange::new(0, 4095).unwrap());
        assert_eq!(wide.grains().count(), GRAIN);
    }

    #[test]
    fn the_text_form_reads_back_and_refuses_anything_else() {
        let mut mask = SliceMask::default();
        for grain in [0, 1, 63, 64, 500, 1023] {
            mask.insert(grain);
        }
        let text = mask.to_hex();
        assert_eq!(text.len(), 256);
        assert!(text.starts_with('3'));
        assert_eq!(SliceMask::from_hex(&text), Some(mask));
        assert_eq!(mask.grains().collect::<Vec<_>>(), vec![0, 1, 63, 64, 500, 1023]);
        assert_eq!(SliceMask::from_hex(""), None);
        assert_eq!(SliceMask::from_hex(&text[1..]), None);
        assert_eq!(SliceMask::from_hex(&format!("{}g", &text[1..])), None);
        assert!(SliceMask::default().is_empty() && !mask.is_empty());
    }
}
