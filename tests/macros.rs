//! Integration tests of `#[event]` and `#[derive(Aggregate)]`.
