//! The conformance suite: checks that a store backend keeps the [`EventStore`] and
//! [`SnapshotStore`] contracts (feature `testing`); [`given`], a given/when/then kit for
//! domain logic; and [`check_schema_lock`], the test that catches a state or event shape
//! changed without its version.
//!
//! Every backend of this crate passes the whole suite, and a backend of your own should too.
//! Each check is a plain `async fn` that takes the store as `&dyn EventStore` or
//! `&dyn SnapshotStore` and panics, naming what broke, if the store does not keep the
//! contract: [`event_store`] holds the checks of the event store contract, [`snapshot_store`]
//! those of the snapshot store contract, [`subscription_store`] those of the subscription
//! store contract, [`key_store`] those of the key store contract of personal data,
//! [`read_model_store`] those of a projection's read model, and [`stores`]
//! those of the [abilities](crate::abilities) a backend hands out with its stores, each
//! against the plain reads and writes it stands for, [`stream_lifecycle`] those of deleting
//! and archiving streams, and [`sharded`] those of a [sharded store](crate::backend::sharded).
//!
//! # Checking a backend
//!
//! Add the feature to your dev-dependencies (`eventsource = { version = "...", features =
//! ["testing"] }`, and tokio with its `macros` and `rt` features), then in a test file, with
//! your stores in place of the in-memory ones:
//!
//! ```
//! // tests/my_stores.rs: one #[tokio::test] per check, named after it. The expression is a
//! // future that gives a store, evaluated again in every test.
//! eventsourcing_kit::event_store_conformance!(async { eventsourcing_kit::InMemoryEventStore::new() });
//! eventsourcing_kit::snapshot_store_conformance!(async { eventsourcing_kit::InMemorySnapshotStore::new() });
//! # fn main() {}
//! ```
//!
//! A test file that checks several stores puts each call in a module of its own:
//!
//! ```ignore
//! mod in_memory_database {
//!     eventsourcing_kit::event_store_conformance!(my_backend::open_in_memory());
//! }
//! mod on_a_file {
//!     eventsourcing_kit::event_store_conformance!(my_backend::open_file("target/check.db"));
//! }
//! ```
//!
//! A backend whose database may be absent, as in a test run without a database server, gives
//! an `Option` after `optional:`; a test whose future gives `None` passes without checking
//! anything:
//!
//! ```ignore
//! eventsourcing_kit::event_store_conformance!(optional: async {
//!     let url = std::env::var("MY_DATABASE_URL").ok()?;
//!     Some(MyEventStore::connect(&url).await.unwrap())
//! });
//! ```
//!
//! Or run a whole suite in one test of your own, one check after the other:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let events = eventsourcing_kit::InMemoryEventStore::new();
//! eventsourcing_kit::testing::event_store::run_all(&events).await;
//! let snapshots = eventsourcing_kit::InMemorySnapshotStore::new();
//! eventsourcing_kit::testing::snapshot_store::run_all(&snapshots).await;
//! # }
//! ```
//!
//! # What the checks assume
//!
//! - **A shared database is fine.** Every check writes under fresh random aggregate ids and an
//!   aggregate type name of its own (with a uuid in it), so checks can run in parallel against
//!   one database that other programs write to as well. The `read_all` checks look only at
//!   their own events, and at their order, never at absolute positions.
//! - **Cleanup.** Snapshot checks delete the snapshots they wrote. The event store contract has
//!   no delete, so event checks leave their events behind, under their own type names.
//! - **Precision.** Timestamps in the checks have whole microseconds and must come back
//!   exactly. Payloads and snapshot states must come back byte for byte, as the contracts
//!   say (a store that keeps JSON in a normal form, such as PostgreSQL's `jsonb`, fails);
//!   metadata is compared as a JSON value.
//! - **Range.** Snapshot versions up to `i64::MAX` and every `u32` schema and event version
//!   must round-trip.
//! - **Size.** One check appends and reads back a stream of 5,000 events.
//!
//! [`EventStore`]: crate::EventStore
//! [`SnapshotStore`]: crate::SnapshotStore

pub mod event_store;
mod given;
pub mod key_store;
pub mod process;
pub mod read_model_store;
mod schema_lock;
pub mod sharded;
pub mod snapshot_store;
pub mod stores;
pub mod stream_lifecycle;
pub mod subscription_store;
mod wrapper;

pub use schema_lock::{check_schema_lock, SCHEMA_LOCK_ENV};

pub use given::{given, Given, When};
pub use wrapper::RequiredOnly;

/// An event of the stream `(aggregate_id, aggregate_type)` at `version`, as a test appends it
/// to a store directly: a fresh event id, type `Noted` at version 1, the payload `{}`, the
/// time now, no context. Change what a test needs through its public fields:
/// `let mut e = envelope(id, "Account", 1); e.payload = r#"{"n":1}"#.into();` (or build one
/// with [`EventEnvelope::from_json`](crate::EventEnvelope::from_json)).
pub fn envelope(aggregate_id: Uuid, aggregate_type: &str, version: u64) -> crate::EventEnvelope {
    crate::EventEnvelope::noted(aggregate_id, aggregate_type, version)
}

/// A snapshot of the aggregate `(aggregate_id, aggregate_type)` at `version`, as a test stores
/// it directly: state `{}`, taken now, bound to no event id. Change what a test needs with
/// its public fields: `let mut s = snapshot(id, "Account", 5, 1); s.state = r#"{"n":1}"#.into();`
/// (or build one with [`Snapshot::new`](crate::Snapshot::new)).
pub fn snapshot(
    aggregate_id: Uuid,
    aggregate_type: &str,
    version: u64,
    schema_version: u32,
) -> crate::Snapshot {
    crate::Snapshot {
        aggregate_id,
        aggregate_type: aggregate_type.to_owned(),
        version,
        event_id: None,
        state: "{}".to_owned(),
        schema_version,
        created_at: Utc::now(),
    }
}

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A type name no other check, or other run, uses: `{label}-{uuid}`.
fn unique_type(label: &str) -> String {
    format!("{label}-{}", Uuid::new_v4().simple())
}

/// Now, to the microsecond: the precision every backend keeps.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is in range")
}

/// Generates one `#[tokio::test]` per check of the event store suite, named after it.
///
/// The argument is an expression that gives a future of the store, evaluated in every test;
/// the store can be any type that implements [`EventStore`](crate::EventStore), such as
/// `Arc<dyn EventStore>`. After `optional:`, the future gives an `Option` of the store
/// instead, and a test that gets `None` passes without checking anything: for a backend
/// whose database may not be there (say so from the expression, such as with a
/// `println!`). See the [`testing`](crate::testing) module for examples.
///
/// Attributes written before the argument go on every generated test: a suite that needs a
/// database can be reported as ignored when there is none, rather than as passed, with a
/// `cfg` the program's build script sets:
/// `event_store_conformance!(#[cfg_attr(not(has_database), ignore = "no database")] make())`.
#[macro_export]
macro_rules! event_store_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__event_store_checks, event_store, [] $($args)*);
    };
}

/// Generates one `#[tokio::test]` per check of the snapshot store suite, named after it.
///
/// The argument is an expression that gives a future of the store, evaluated in every test;
/// the store can be any type that implements [`SnapshotStore`](crate::SnapshotStore). After
/// `optional:`, the future gives an `Option` of the store, as in
/// [`event_store_conformance!`](crate::event_store_conformance).
#[macro_export]
macro_rules! snapshot_store_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__snapshot_store_checks, snapshot_store, [] $($args)*);
    };
}

/// Generates one `#[tokio::test]` per check of the suite of a backend's
/// [abilities](crate::abilities), named after it.
///
/// The argument is an expression that gives a future of the backend's
/// [`Stores`](crate::backend::Stores); after `optional:`, of an `Option` of them, as in
/// [`event_store_conformance!`](crate::event_store_conformance).
#[macro_export]
macro_rules! stores_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__stores_checks, stores, [] $($args)*);
    };
}

/// Generates one `#[tokio::test]` per check of the subscription store suite, named after it;
/// the argument is as for [`event_store_conformance!`](crate::event_store_conformance).
#[macro_export]
macro_rules! subscription_store_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__subscription_store_checks, subscription_store, [] $($args)*);
    };
}

/// Generates one `#[tokio::test]` per check of the stream lifecycle suite (see
/// [`crate::lifecycle::StreamLifecycle`]), named after it; the argument gives the
/// [`Stores`](crate::backend::Stores), as for
/// [`event_store_conformance!`](crate::event_store_conformance).
#[macro_export]
macro_rules! stream_lifecycle_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__stream_lifecycle_checks, stream_lifecycle, [] $($args)*);
    };
}

/// Generates one `#[tokio::test]` per check of the key store suite (see
/// [`crate::personal::KeyStore`]), named after it; the argument is as for
/// [`event_store_conformance!`](crate::event_store_conformance).
#[macro_export]
macro_rules! key_store_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__key_store_checks, key_store, [] $($args)*);
    };
}

/// Generates one `#[tokio::test]` per check of the read model store suite, named after it;
/// the argument is as for [`event_store_conformance!`](crate::event_store_conformance).
#[macro_export]
macro_rules! read_model_store_conformance {
    ($($args:tt)*) => {
        $crate::__conformance_args!(__read_model_store_checks, read_model_store, [] $($args)*);
    };
}

/// The arguments of a conformance macro: attributes for every test, then the store's
/// expression, after `optional:` or not.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_args {
    ($checks:ident, $suite:ident, [$($attrs:tt)*] #[$attr:meta] $($rest:tt)*) => {
        $crate::__conformance_args!($checks, $suite, [$($attrs)* #[$attr]] $($rest)*);
    };
    ($checks:ident, $suite:ident, [$($attrs:tt)*] optional: $make_store:expr $(,)?) => {
        $crate::$checks!(__conformance_tests($suite, optional, $make_store, [$($attrs)*]));
    };
    ($checks:ident, $suite:ident, [$($attrs:tt)*] $make_store:expr $(,)?) => {
        $crate::$checks!(__conformance_tests($suite, required, $make_store, [$($attrs)*]));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (($suite:ident, $kind:ident, $make_store:expr, $attrs:tt) $($check:ident)*) => {
        $(
            $crate::__conformance_test!($attrs, $suite, $kind, $check, $make_store);
        )*
    };
}

/// One test of a conformance suite, with the attributes given to the macro.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ([$($attrs:tt)*], $suite:ident, required, $check:ident, $make_store:expr) => {
        #[::tokio::test]
        $($attrs)*
        async fn $check() {
            let store = $make_store.await;
            $crate::testing::$suite::$check(&store).await;
        }
    };
    ([$($attrs:tt)*], $suite:ident, optional, $check:ident, $make_store:expr) => {
        #[::tokio::test]
        $($attrs)*
        async fn $check() {
            if let ::std::option::Option::Some(store) = $make_store.await {
                $crate::testing::$suite::$check(&store).await;
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_runner {
    (($store:ty) $($check:ident)*) => {
        /// The names of every check of this suite, in the order [`run_all`] runs them.
        pub const NAMES: &[&str] = &[$(stringify!($check)),*];

        /// Runs every check of this suite on one store, one after the other; panics at the
        /// first that fails, after printing its name to stderr.
        pub async fn run_all(store: &$store) {
            $(
                eprintln!("eventsource conformance: {}", stringify!($check));
                $check(store).await;
            )*
        }
    };
}
