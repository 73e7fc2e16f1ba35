//! The examples' seed domain (the account of the tutorial and the other examples) against its
//! checked-in schema lock, `examples/schema.lock`: a state or event whose shape changed without
//! a version bump fails here. After a deliberate change: `EVENTSOURCE_SCHEMA_LOCK=overwrite
//! cargo test --test schema_lock`, and review the lock's diff. The service example's domain
//! has a lock of its own, `examples/service/schema.lock`, checked by `tests/bank_service.rs`.

#[allow(dead_code)]
#[path = "../examples/domain/account.rs"]
mod account;

#[test]
fn the_examples_match_their_schema_lock() {
    eventsourcing_kit::testing::check_schema_lock(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/schema.lock"
    ));
}
