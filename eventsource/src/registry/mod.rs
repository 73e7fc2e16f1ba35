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
    /// Older names of the event type, still read from stored events.
    pub aliases: &'static [&'static str],
    /// The aggregate type it belongs to.
    pub aggregate_type: &'static str,
    /// Its event version.
    pub event_version: u32,
    /// The Rust path of the struct.
    pub rust_type: &'static str,
    /// Traces the event's serialized shape, for the schema lock.
    pub shape: ShapeFn,
    /// Its personal fields (see [`crate::personal`]).
    pub personal: &'static [crate::aggregate::PersonalField],
}

/// Traces a registered type's serialized shape (see [`crate::evolution::shape`]).
pub type ShapeFn = fn() -> std::result::Result<crate::evolution::shape::Traced, String>;

/// One aggregate type, registered by `#[derive(Aggregate)]`.
#[derive(Debug)]
pub struct AggregateRegistration {
    /// The aggregate type name.
    pub name: &'static str,
    /// The schema version of its state.
    pub schema_version: u32,
    /// The oldest schema version whose snapshots migrate to this one.
    pub migrates_from: u32,
    /// The event type names it lists.
    pub event_types: &'static [&'static str],
    /// The Rust path of the state struct.
    pub rust_type: &'static str,
    /// Traces the state's serialized shape, for the schema lock.
    pub shape: ShapeFn,
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

/// The registered aggregate type of this name; of two schema versions of one name (linked
/// side by side while a program tests a migration), the newer.
pub fn aggregate(name: &str) -> Option<&'static AggregateRegistration> {
    aggregates()
        .filter(|a| a.name == name)
        .max_by_key(|a| a.schema_version)
}

/// The registered event type of this aggregate type with this name or alias.
pub fn event(aggregate_type: &str, event_type: &str) -> Option<&'static EventRegistration> {
    events().find(|e| {
        e.aggregate_type == aggregate_type && (e.event_type == event_type || e.aliases.contains(&event_type))
    })
}

/// Checks that names are unique as storage needs them: an aggregate type name belongs to one
/// Rust type per schema version (two schema versions of one aggregate may live side by side,
/// as while a program migrates or tests a migration), and event type names are unique within
/// their aggregate type (two aggregates may each have a `Created`). A clash names both Rust
/// types.
///
/// The answer is computed once and then cached.
pub fn check() -> Result<()> {
    static CHECKED: OnceLock<std::result::Result<(), Duplicate>> = OnceLock::new();
    let outcome = CHECKED.get_or_init(|| {
        first_duplicate(
            "aggregate type",
            aggregates().map(|a| {
                (
                    format!("{} (schema version {})", a.name, a.schema_version),
                    a.rust_type,
                )
            }),
        )?;
        first_duplicate(
            "event type",
            // NUL cannot be in a name, so it keeps the two names apart; shown as a dot.
            events().flat_map(|e| {
                std::iter::once(e.event_type)
                    .chain(e.aliases.iter().copied())
                    .map(|name| (format!("{}\0{name}", e.aggregate_type), e.rust_type))
            }),
        )
    });
    outcome
        .clone()
        .map_err(|(kind, name, first, second)| Error::DuplicateName {
            kind,
            name,
            first,
            second,
        })
}

type Duplicate = (&'static str, String, &'static str, &'static str);

fn first_duplicate(
    kind: &'static str,
    names: impl Iterator<Item = (String, &'static str)>,
) -> std::result::Result<(), Duplicate> {
    let mut seen: HashMap<String, &'static str> = HashMap::new();
    let mut all: Vec<_> = names.collect();
    // Registration order depends on the linker; sorting makes the report stable.
    all.sort_unstable();
    for (name, rust_type) in all {
        if let Some(first) = seen.insert(name.clone(), rust_type) {
            return Err((kind, name.replace('\0', "."), first, rust_type));
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
            ("Account.Opened", "a::Opened"),
            ("Account.Closed", "a::Closed"),
            ("Account.Opened", "b::Opened"),
            ("Order.Opened", "c::Opened"),
        ];
        let owned = || names.iter().map(|(n, t)| (n.to_string(), *t));
        let dup = first_duplicate("event type", owned()).unwrap_err();
        assert_eq!(
            dup,
            (
                "event type",
                "Account.Opened".to_owned(),
                "a::Opened",
                "b::Opened"
            )
        );
        assert!(first_duplicate("event type", owned().filter(|(_, t)| *t != "b::Opened")).is_ok());
    }
}
