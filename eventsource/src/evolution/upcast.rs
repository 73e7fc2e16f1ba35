//! The steps of an upcast chain and of a snapshot migration, as the macros call them.

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::Event;

/// What an upcaster or a migration on JSON may return: the next version's JSON, or a
/// `Result` of it whose error says why the value cannot be upcast.
///
/// ```
/// use serde_json::{json, Value};
///
/// // A rename: version 1 called the amount `value`.
/// fn deposit_v1_to_v2(mut v1: Value) -> Value {
///     if let Some(amount) = v1.as_object_mut().and_then(|o| o.remove("value")) {
///         v1["amount"] = amount;
///     }
///     v1
/// }
///
/// // A split that can fail.
/// fn owner_v2_to_v3(mut v2: Value) -> Result<Value, String> {
///     let name = v2["owner"].as_str().ok_or("`owner` is not a string")?.to_owned();
///     let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
///     v2["first_name"] = json!(first);
///     v2["last_name"] = json!(last);
///     Ok(v2)
/// }
/// # assert_eq!(deposit_v1_to_v2(json!({"value": 5})), json!({"amount": 5}));
/// # assert_eq!(owner_v2_to_v3(json!({"owner": "Ada Lovelace"})).unwrap()["last_name"], "Lovelace");
/// ```
pub trait UpcastOutput {
    /// The next version's JSON, or why there is none.
    fn into_next(self) -> Result<Value, String>;
}

impl UpcastOutput for Value {
    fn into_next(self) -> Result<Value, String> {
        Ok(self)
    }
}

impl<E: Display> UpcastOutput for Result<Value, E> {
    fn into_next(self) -> Result<Value, String> {
        self.map_err(|e| e.to_string())
    }
}

fn event_what<E: Event>() -> String {
    format!("event {}.{}", E::AGGREGATE_TYPE, E::EVENT_TYPE)
}

fn failed(what: String, from_version: u32, reason: impl ToString) -> Error {
    Error::Upcast {
        what,
        from_version,
        reason: reason.to_string(),
    }
}

// Called by the code the macros generate.

/// A stored payload of `version`, decoded as what that version is held as.
pub fn decode_stored<E: Event, T: DeserializeOwned>(version: u32, payload: &str) -> Result<T> {
    crate::codec::from_json(payload, || format!("{} at version {version}", event_what::<E>()))
}

/// One step on JSON: the upcaster's output, decoded as what the next version is held as.
pub fn upcast_json<E, F, R, Next>(from: u32, upcast: F, value: Value) -> Result<Next>
where
    E: Event,
    F: FnOnce(Value) -> R,
    R: UpcastOutput,
    Next: DeserializeOwned,
{
    let next = upcast(value)
        .into_next()
        .map_err(|reason| failed(event_what::<E>(), from, reason))?;
    serde_json::from_value(next).map_err(|e| {
        failed(
            event_what::<E>(),
            from,
            format!("the upcast JSON does not decode as version {}: {e}", from + 1),
        )
    })
}

/// One step as a type: the old version converted into the next one.
pub fn upcast_typed<E, Old, Next>(from: u32, old: Old) -> Result<Next>
where
    E: Event,
    Next: TryFrom<Old>,
    <Next as TryFrom<Old>>::Error: Display,
{
    Next::try_from(old).map_err(|e| failed(event_what::<E>(), from, e))
}

/// One snapshot migration step.
pub fn migrate_state<F, R>(aggregate_type: &str, from: u32, migrate: F, state: Value) -> Result<Value>
where
    F: FnOnce(Value) -> R,
    R: UpcastOutput,
{
    migrate(state)
        .into_next()
        .map_err(|reason| failed(format!("snapshot of {aggregate_type}"), from, reason))
}
