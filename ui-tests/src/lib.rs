//! Compile-fail tests of the `eventsource` macros live in `tests/ui/`; see `tests/ui.rs`.
