//! Compile-fail tests of the `eventsourcing-kit` macros live in `tests/ui/`; see `tests/ui.rs`.
