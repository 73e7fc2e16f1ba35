//! The examples' domain (accounts and orders) against its checked-in schema lock,
//! `examples/schema.lock`: a state or event whose shape changed without a version bump fails
//! here. After a deliberate change: `EVENTSOURCE_SCHEMA_LOCK=overwrite cargo test --test
//! schema_lock`, and review the lock's diff.

#[allow(dead_code)]
#[path = "../examples/domain/account.rs"]
mod account;
#[allow(dead_code)]
#[path = "../examples/domain/order.rs"]
mod order;

#[test]
fn the_examples_match_their_schema_lock() {
    eventsource::testing::check_schema_lock(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/schema.lock"));
}
