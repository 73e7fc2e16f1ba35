//! Every event and aggregate type the program was linked with.
//!
//! `#[event]` and `#[derive(Aggregate)]` register their types at link time (through the
//! `inventory` crate), so a program can list them and detect two that share a name. The
//! [`Repository`](crate::Repository) checks the registry before its first load or save and
//! reports a shared name as [`Error::DuplicateName`].

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// One event type, registered by `#[event]`.
#[derive(Debug)]
pub struct EventRegistration {
    /// The event type name.
    pub event_type: &'static str,
    /// The aggregate type it belongs to.
    pub aggregate_type: &'static str,
    /// Its event version.
    pub event_version: u32,
    /// The Rust path of the struct.
    pub rust_type: &'static str,
}

/// One aggregate type, registered by `#[derive(Aggregate)]`.
#[derive(Debug)]
pub struct AggregateRegistration {
    /// The aggregate type name.
    pub name: &'static str,
    /// The schema version of its state.
    pub schema_version: u32,
    /// The event type names it lists.
    pub event_types: &'static [&'static str],
    /// The Rust path of the state struct.
    pub rust_type: &'static str,
}

inventory::collect!(EventRegistration);
inventory::collect!(AggregateRegistration);

/// Every registered event type, in no particular order.
pub fn events() -> impl Iterator<Item = &'static EventRegistration> {
    inventory::iter::<EventRegistration>.into_iter()
}

/// Every registered aggregate type, in no particular order.
pub fn aggregates() -> impl Iterator<Item = &'static AggregateRegistration> {
    inventory::iter::<AggregateRegistration>.into_iter()
}

/// The registered event type with this name.
pub fn event(event_type: &str) -> Option<&'static EventRegistration> {
    events().find(|e| e.event_type == event_type)
}

/// Checks that no two event types share a name.
///
/// The answer is computed once and then cached.
pub fn check() -> Result<()> {
    static CHECKED: OnceLock<std::result::Result<(), Duplicate>> = OnceLock::new();
    let outcome =
        CHECKED.get_or_init(|| first_duplicate("event type", events().map(|e| (e.event_type, e.rust_type))));
    (*outcome).map_err(|(kind, name, first, second)| Error::DuplicateName {
        kind,
        name: name.to_owned(),
        first,
        second,
    })
}

type Duplicate = (&'static str, &'static str, &'static str, &'static str);

fn first_duplicate(
    kind: &'static str,
    names: impl Iterator<Item = (&'static str, &'static str)>,
) -> std::result::Result<(), Duplicate> {
    let mut seen: HashMap<&'static str, &'static str> = HashMap::new();
    let mut all: Vec<_> = names.collect();
    // Registration order depends on the linker; sorting makes the report stable.
    all.sort_unstable();
    for (name, rust_type) in all {
        if let Some(first) = seen.insert(name, rust_type) {
            return Err((kind, name, first, rust_type));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_name_names_both_types() {
        let names = [
            ("Opened", "a::Opened"),
            ("Closed", "a::Closed"),
            ("Opened", "b::Opened"),
        ];
        let dup = first_duplicate("event type", names.into_iter()).unwrap_err();
        assert_eq!(dup, ("event type", "Opened", "a::Opened", "b::Opened"));
        assert!(first_duplicate("event type", names[..2].iter().copied()).is_ok());
    }
}
