//! Schema evolution: how stored events and snapshot states of older versions reach the
//! current ones, and the schema lock that notices a shape changed without its version.
//!
//! Everything here is a pure transform or check below the repository:
//!
//! - **Event upcasting.** `#[event(version = N, upcast(...))]` declares, for every older
//!   version, how a stored event of that version becomes the next one: on its JSON
//!   (`k => json(function)`, a function of `serde_json::Value` returning a value or a
//!   `Result` of one, see [`UpcastOutput`]) or as a type (`k => OldStruct`, the old shape
//!   kept as its own struct and converted with `From`/`TryFrom` into the next version's
//!   type). Every read path decodes through the chain
//!   ([`AggregateEvent::decode`](crate::AggregateEvent::decode)); a version newer than the
//!   program is [`Error::UnknownEventVersion`](crate::Error::UnknownEventVersion).
//! - **Snapshot migrations.** `#[aggregate(schema_version = N, migrate(k => function))]`
//!   brings a snapshot state of schema version `k` to `k + 1` on its JSON, so a load can use
//!   it instead of replaying every event ([`Aggregate::migrate_snapshot`](crate::Aggregate::migrate_snapshot)).
//! - **The schema lock** ([`SchemaLock`]): the serialized shape of every registered state
//!   and event with its version, traced from their serde impls ([`shape`]), checked in and
//!   compared by a test, so a shape changed without a version bump fails before deploy.
//!
//! `docs/guides/schema-evolution.md` says when to bump and how to write each kind of step.

mod lock;
pub mod shape;
mod upcast;

pub use lock::{LockDifference, SchemaLock};
pub use upcast::UpcastOutput;
#[doc(hidden)]
pub use upcast::{decode_stored, migrate_state, upcast_json, upcast_typed};
