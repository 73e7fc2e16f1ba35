//! [`Personal`]: a field's value, or the mark that its data subject was forgotten.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// The key of the JSON object that stands for a forgotten value: `{"$forgotten": true}`.
pub(crate) const FORGOTTEN: &str = "$forgotten";

/// A forgotten value's JSON, as `Personal` writes it.
pub(crate) const FORGOTTEN_TEXT: &str = r#"{"$forgotten":true}"#;

/// The key of the JSON object that holds a sealed value (see [`crate::personal`]).
pub(crate) const SEALED: &str = "$personal";

/// The name under which [`Personal`] asks a deserializer for its value; the schema tracer
/// (see [`crate::evolution::shape`]) knows it and traces the value's shape.
pub(crate) const NEWTYPE: &str = "$eventsourcing_kit::Personal";

/// The value of a personal field (`#[personal(subject = ...)]` on an `#[event]` field, see
/// [`crate::personal`]): known, or forgotten with its data subject.
///
/// In JSON a known value is the value itself, and a forgotten one `{"$forgotten": true}`,
/// so aggregate states and read models that keep a `Personal` store either. Its `Debug`
/// never shows the value, so that logs of events and states do not copy personal data.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Personal<T> {
    /// The value, as recorded.
    Known(T),
    /// The data subject was forgotten: the value can no longer be read.
    Forgotten,
}

impl<T> Personal<T> {
    /// A known value.
    pub fn new(value: T) -> Self {
        Personal::Known(value)
    }

    /// The value, unless it is forgotten.
    pub fn known(&self) -> Option<&T> {
        match self {
            Personal::Known(value) => Some(value),
            Personal::Forgotten => None,
        }
    }

    /// The value, unless it is forgotten.
    pub fn into_known(self) -> Option<T> {
        match self {
            Personal::Known(value) => Some(value),
            Personal::Forgotten => None,
        }
    }

    /// Whether the value is forgotten.
    pub fn is_forgotten(&self) -> bool {
        matches!(self, Personal::Forgotten)
    }

    /// A reference to the value, or forgotten.
    pub fn as_ref(&self) -> Personal<&T> {
        match self {
            Personal::Known(value) => Personal::Known(value),
            Personal::Forgotten => Personal::Forgotten,
        }
    }

    /// The value mapped by `f`, or forgotten.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Personal<U> {
        match self {
            Personal::Known(value) => Personal::Known(f(value)),
            Personal::Forgotten => Personal::Forgotten,
        }
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Personal::Known(value)
    }
}

impl<T: Default> Default for Personal<T> {
    /// A known default value.
    fn default() -> Self {
        Personal::Known(T::default())
    }
}

impl<T> std::fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Personal::Known(_) => f.write_str("Personal(..)"),
            Personal::Forgotten => f.write_str("Personal::Forgotten"),
        }
    }
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Personal::Known(value) => value.serialize(serializer),
            Personal::Forgotten => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(FORGOTTEN, &true)?;
                map.end()
            }
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(NEWTYPE, Inner(std::marker::PhantomData))
    }
}

/// Whether `value` is an object of the one key `key`.
pub(crate) fn is_marker(value: &serde_json::Value, key: &str) -> bool {
    value
        .as_object()
        .is_some_and(|object| object.len() == 1 && object.contains_key(key))
}

struct Inner<T>(std::marker::PhantomData<T>);

impl<'de, T: serde::de::DeserializeOwned> Visitor<'de> for Inner<T> {
    type Value = Personal<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a personal value")
    }

    /// JSON (and every deserializer of serde's own making): the value, or a mark.
    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if is_marker(&value, FORGOTTEN) {
            return Ok(Personal::Forgotten);
        }
        if is_marker(&value, SEALED) {
            return Err(de::Error::custom(
                "a sealed personal value reached decoding: it was read without a key store \
                 (a repository or consumer with personal data, see eventsourcing_kit::personal)",
            ));
        }
        T::deserialize(value)
            .map(Personal::Known)
            .map_err(de::Error::custom)
    }

    /// The schema tracer, which hands over the value's own deserializer this way.
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        T::deserialize(deserializer).map(Personal::Known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_value_is_its_json_and_a_forgotten_one_the_mark() {
        let known = Personal::new("ada@example.com".to_owned());
        assert_eq!(serde_json::to_string(&known).unwrap(), "\"ada@example.com\"");
        let forgotten: Personal<String> = Personal::Forgotten;
        assert_eq!(
            serde_json::to_string(&forgotten).unwrap(),
            r#"{"$forgotten":true}"#
        );
        for value in [known, forgotten] {
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(serde_json::from_str::<Personal<String>>(&json).unwrap(), value);
        }
    }

    #[test]
    fn a_sealed_value_does_not_decode_and_says_why() {
        let sealed = r#"{"$personal":{"subject":"c-1","sealed":"AAAA"}}"#;
        let error = serde_json::from_str::<Personal<String>>(sealed)
            .unwrap_err()
            .to_string();
        assert!(error.contains("without a key store"), "{error}");
    }

    #[test]
    fn debug_does_not_show_the_value() {
        let text = format!("{:?}", Personal::new("ada@example.com"));
        assert!(!text.contains("ada"), "{text}");
    }
}
