//! What the macros' generated code reaches; not a public API.

pub use inventory;
pub use serde;

pub use crate::aggregate::{Aggregate, AggregateEvent, Apply};
pub use crate::error::{Error, Result};
pub use crate::event::Event;
pub use crate::registry::{AggregateRegistration, EventRegistration};

/// The payload JSON of one event.
pub fn encode_event<E: Event>(event: &E) -> Result<String> {
    crate::codec::to_json(event, || format!("event {}", E::EVENT_TYPE))
}

/// One event decoded from its payload JSON.
pub fn decode_event<E: Event>(payload: &str) -> Result<E> {
    crate::codec::from_json(payload, || format!("event {}", E::EVENT_TYPE))
}

/// The error for a stored event type that the aggregate does not list.
pub fn unknown_event_type(event_type: &str, aggregate_type: &str) -> Error {
    Error::UnknownEventType {
        event_type: event_type.to_owned(),
        aggregate_type: aggregate_type.to_owned(),
    }
}

/// String equality usable in constants, for compile-time checks of the derive.
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
