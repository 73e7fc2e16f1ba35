//! The names under which a consumer group keeps its state in the subscription store, beside
//! the group's own name (the checkpoint of the single consumer it grew from):
//!
//! - `NAME#layout:G`: layout `G` (from 1), whose checkpoint is its number of ranges;
//! - `NAME#G:FIRST-LAST`: the range of slices `FIRST..=LAST` in layout `G`, with its lease and
//!   checkpoint;
//! - `NAME#member:K`: the lease of a live worker, in slot `K`.

use super::{validate_name, MAX_NAME_LEN};
use crate::error::{Error, Result};
use crate::slice::SliceRange;

/// What separates a group's name from the rest of the names of its state.
const SEPARATOR: char = '#';

/// The longest suffix a group adds to its name: `#layout:4294967295`, `#4294967295:1023-1023`.
const LONGEST_SUFFIX: usize = 22;

/// The longest name of a consumer group, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = MAX_NAME_LEN - LONGEST_SUFFIX;

/// Checks a group's name: a valid subscription name, at most [`MAX_GROUP_NAME_LEN`] bytes,
/// without `#`; anything else is [`Error::InvalidInput`].
pub(crate) fn validate_group_name(name: &str) -> Result<()> {
    validate_name(name)?;
    if name.len() > MAX_GROUP_NAME_LEN || name.contains(SEPARATOR) {
        return Err(Error::InvalidInput(format!(
            "{name:?} cannot name a consumer group: a group's name is at most \
             {MAX_GROUP_NAME_LEN} bytes long and holds no `{SEPARATOR}`"
        )));
    }
    Ok(())
}

/// The record of layout `generation` of `group`.
pub(crate) fn layout(group: &str, generation: u32) -> String {
    format!("{group}{SEPARATOR}layout:{generation}")
}

/// The range `range` of layout `generation` of `group`.
pub(crate) fn range(group: &str, generation: u32, range: SliceRange) -> String {
    format!(
        "{group}{SEPARATOR}{generation}:{}-{}",
        range.first(),
        range.last()
    )
}

/// The lease of the worker in `slot` of `group`.
pub(crate) fn member(group: &str, slot: u32) -> String {
    format!("{group}{SEPARATOR}member:{slot}")
}

/// The group whose layout record `name` is, if it is one: how the groups a store holds are
/// found in its listing.
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) fn group_of_layout(name: &str) -> Option<&str> {
    let (group, generation) = name.rsplit_once(&format!("{SEPARATOR}layout:"))?;
    generation.parse::<u32>().ok().map(|_| group)
}

/// One name of a group's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The group's own name: the single consumer it grew from.
    Single,
    Layout(u32),
    Range(u32, SliceRange),
    Member(u32),
}

/// What `name` is of `group`'s state, if it is any of it.
pub(crate) fn parse(group: &str, name: &str) -> Option<Entry> {
    let rest = name.strip_prefix(group)?;
    if rest.is_empty() {
        return Some(Entry::Single);
    }
    let rest = rest.strip_prefix(SEPARATOR)?;
    if let Some(generation) = rest.strip_prefix("layout:") {
        return generation.parse().ok().map(Entry::Layout);
    }
    if let Some(slot) = rest.strip_prefix("member:") {
        return slot.parse().ok().map(Entry::Member);
    }
    let (generation, slices) = rest.split_once(':')?;
    let (first, last) = slices.split_once('-')?;
    let range = SliceRange::new(first.parse().ok()?, last.parse().ok()?).ok()?;
    Some(Entry::Range(generation.parse().ok()?, range))
}

/// The slices of the range `name` stands for, if it names a range of a consumer group.
pub(crate) fn slices_of(name: &str) -> Option<SliceRange> {
    let (group, _) = name.rsplit_once(SEPARATOR)?;
    match parse(group, name)? {
        Entry::Range(_, range) => Some(range),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_what_it_names() {
        let range = SliceRange::new(256, 511).unwrap();
        assert_eq!(parse("orders", "orders"), Some(Entry::Single));
        assert_eq!(slices_of(&super::range("orders", 2, range)), Some(range));
        assert_eq!(slices_of("orders"), None);
        assert_eq!(slices_of(&layout("orders", 2)), None);
        assert_eq!(parse("orders", &layout("orders", 3)), Some(Entry::Layout(3)));
        assert_eq!(
            parse("orders", &super::range("orders", 3, range)),
            Some(Entry::Range(3, range))
        );
        assert_eq!(parse("orders", &member("orders", 7)), Some(Entry::Member(7)));
        assert_eq!(parse("orders", "orders-v2"), None);
        assert_eq!(parse("orders", "orders#5:9-2"), None);
        assert_eq!(parse("orders", "order"), None);
        assert_eq!(group_of_layout(&layout("orders", 2)), Some("orders"));
        assert_eq!(group_of_layout(&super::range("orders", 2, range)), None);
    }

    #[test]
    fn the_longest_group_name_leaves_room_for_every_suffix() {
        let name = "g".repeat(MAX_GROUP_NAME_LEN);
        validate_group_name(&name).unwrap();
        let widest = SliceRange::new(1023, 1023).unwrap();
        validate_name(&range(&name, u32::MAX, widest)).unwrap();
        validate_name(&layout(&name, u32::MAX)).unwrap();
        assert!(validate_group_name(&format!("{name}g")).is_err());
        assert!(validate_group_name("a#b").is_err());
    }
}
