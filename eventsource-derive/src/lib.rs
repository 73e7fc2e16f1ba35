//! The procedural macros of `eventsourcing-kit`: `#[event]` and `#[derive(Aggregate)]`.
//!
//! Use them through the `eventsourcing-kit` crate, which re-exports them; the code they generate
//! reaches the runtime through `::eventsourcing_kit::__private`, or `<path>::__private` with
//! `crate = "<path>"`. The examples below are not run here, where `eventsourcing-kit` is not a
//! dependency; `tests/macros.rs` and `tests/macro_crate_path.rs` of the workspace check what
//! they show.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod personal;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Makes a struct a domain event of one aggregate type.
///
/// ```ignore
/// use eventsourcing_kit::prelude::*;
///
/// #[event(aggregate = "Account")]
/// pub struct MoneyDeposited {
///     pub amount_cents: i64,
/// }
///
/// #[event(aggregate = "Account", name = "AccountClosed", version = 2, upcast(1 => json(closed_v1)))]
/// pub struct Closed {}
///
/// fn closed_v1(v1: serde_json::Value) -> serde_json::Value {
///     serde_json::json!({})
/// }
///
/// assert_eq!(MoneyDeposited::EVENT_TYPE, "MoneyDeposited");
/// assert_eq!(Closed::EVENT_TYPE, "AccountClosed");
/// assert_eq!(Closed::EVENT_VERSION, 2);
/// ```
///
/// The struct has named fields (or none) and no generic parameters. Keys:
///
/// - `aggregate = "..."` (required): the aggregate type the event belongs to.
/// - `name = "..."`: the event type name stored with every event; the struct's name
///   unless set. Unique in the program.
/// - `version = N`: the version of the event's schema, a positive integer; 1 unless set.
/// - `upcast(1 => json(function), 2 => OldStruct, ...)`: for each older version k, how a
///   stored event of version k becomes version k + 1: a function of its JSON
///   (`fn(serde_json::Value) -> serde_json::Value`, or `-> Result<serde_json::Value, E>` with
///   `E: Display`), or the old shape as its own `Deserialize` struct, converted with
///   `From`/`TryFrom` into version k + 1's type (the next step's struct, or the event). With
///   `version = N` above 1, every version from 1 to N - 1 needs a step; a gap, a step from the
///   current version, a repeated step, and a struct's step followed by a JSON one are compile
///   errors.
/// - `aliases("OldName", ...)`: older names of the event type, still read from stored events.
/// - `crate = "path"`: the path through which the generated code reaches the library, for
///   a crate that uses it under another name or through a re-export (`crate = "renamed"`
///   after `extern crate eventsourcing_kit as renamed;`, or `crate = "crate::reexport"` for a
///   module that re-exports it with `pub use ::eventsourcing_kit::*;`); `::eventsourcing_kit` unless
///   set. It works as serde's `#[serde(crate = "...")]` does; the serde derives the macro
///   adds get `#[serde(crate = "path::__private::serde")]`.
///
/// A field may be marked personal, `#[personal(subject = customer_id)]`: its value (a
/// `Personal<T>`) belongs to the data subject named by another field of the struct, and is
/// stored sealed with that subject's key (see `eventsourcing_kit::personal`; it needs the
/// `personal-data` feature). The subject's field stays in the clear; neither field may be
/// flattened, skipped or renamed but by a plain `#[serde(rename = "...")]`.
///
/// The struct gets `Clone`, `Debug`, `Serialize` and `Deserialize` unless it derives them
/// already, an implementation of `Event`, and a registration that
/// `eventsourcing_kit::registry` lists. Write `#[event]` above any `#[derive(...)]` of the
/// struct: the compiler hands an attribute macro the item without the derives written
/// above it, so those would be derived a second time.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::event(args.into(), item.into()).into()
}

/// Makes a state struct an aggregate: generates its event enum and its apply dispatch.
///
/// ```ignore
/// use eventsourcing_kit::prelude::*;
///
/// #[event(aggregate = "Counter")]
/// pub struct Incremented {
///     pub by: u64,
/// }
///
/// #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
/// #[aggregate(name = "Counter", schema_version = 1, events(Incremented))]
/// pub struct Counter {
///     pub value: u64,
/// }
///
/// impl Apply<Incremented> for Counter {
///     fn apply(&mut self, e: &Incremented) {
///         self.value += e.by;
///     }
/// }
///
/// let mut counter = Counter::default();
/// Aggregate::apply_event(&mut counter, &CounterEvent::from(Incremented { by: 2 }));
/// assert_eq!(counter.value, 2);
/// assert_eq!(Counter::SCHEMA_VERSION, 1);
/// ```
///
/// Keys of `#[aggregate(...)]`:
///
/// - `name = "..."` (required): the aggregate type name stored with its events and
///   snapshots.
/// - `schema_version = N`: the version of the state's shape, a positive integer; 1 unless
///   set. Snapshots of another version are not used as they are.
/// - `migrate(1 => function, ...)`: for each schema version k from the oldest given, how a
///   snapshot state of schema k becomes schema k + 1, as a function of its JSON (the same
///   signatures as an event's JSON upcast). Snapshots from the oldest given on are migrated
///   and used; older ones are ignored. The steps must reach the current schema version.
/// - `events(A, path::to::B, ...)` (required): the `#[event]` types of this aggregate.
///   Each needs an `impl Apply<E>` for the struct.
/// - `crate = "path"`: the path through which the generated code reaches the library, as
///   for `#[event(crate = "...")]`; `::eventsourcing_kit` unless set. It applies to this derive
///   only: each listed event gives its own.
///
/// The derive generates `enum <Struct>Event` with one variant per listed event (named
/// after its last path segment) and `From` each event, serialized as
/// `{"event_type": "...", "data": {...}}`; it implements `Aggregate` and registers the
/// aggregate type. A listed type that is not an event, an event of another aggregate, and
/// a missing `Apply` impl are compile errors at the event's name in the list.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_aggregate(&input).into()
}
