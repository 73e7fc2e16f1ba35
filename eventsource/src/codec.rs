//! JSON encoding of events and snapshot state.
//!
//! `serde_json` writes a NaN or an infinity as `null`, which then fails to decode (or decodes
//! as something else) long after the value was accepted. Encoding here refuses non-finite
//! floats up front, so a bad value is an error at save time and never reaches a store.
//!
//! The same holds for anything else the decoder would refuse: a value nested deeper than the
//! decoder's recursion limit, or a type whose `Deserialize` does not read what its
//! `Serialize` writes. What the repository saves is decoded once more before it is written
//! ([`loadable_event`], [`loadable_state`], [`loadable_value`]), so whatever a save accepts,
//! a load accepts.

use serde::de::DeserializeOwned;
use serde::ser::{self, Serialize};

use crate::aggregate::AggregateEvent;
use crate::error::{Error, Result};

/// The deepest nesting of arrays and objects that decoding accepts: `serde_json` refuses
/// the 128th level to keep its recursion off the end of the stack.
pub(crate) const MAX_DEPTH: usize = 127;

/// Checks that an event's payload decodes as the event it was encoded from.
pub(crate) fn loadable_event<E: AggregateEvent>(event_type: &str, payload: &str) -> Result<()> {
    let refused = |reason: String| Error::Serialization {
        action: "serialize",
        what: format!("event {event_type}"),
        reason: format!("its JSON would not load back: {reason}"),
    };
    within_depth(payload).map_err(refused)?;
    match E::from_json(event_type, payload) {
        Ok(_) => Ok(()),
        Err(Error::Serialization { reason, .. }) => Err(refused(reason)),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// Checks that a snapshot state decodes as the type it was encoded from.
pub(crate) fn loadable_state<T: DeserializeOwned>(json: &str, what: impl Fn() -> String) -> Result<()> {
    let refused = |reason: String| Error::Serialization {
        action: "serialize",
        what: what(),
        reason: format!("its JSON would not load back: {reason}"),
    };
    within_depth(json).map_err(refused)?;
    from_json::<T>(json, &what).map(drop).map_err(|e| match e {
        Error::Serialization { reason, .. } => refused(reason),
        e => refused(e.to_string()),
    })
}

/// Checks that a JSON value (event metadata) is nested no deeper than decoding accepts.
pub(crate) fn loadable_value(value: &serde_json::Value, what: impl FnOnce() -> String) -> Result<()> {
    use serde_json::Value;
    // An explicit stack: the value may be deeper than the call stack allows.
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth + 1 > MAX_DEPTH {
            return Err(Error::Serialization {
                action: "serialize",
                what: what(),
                reason: format!("it is nested deeper than the {MAX_DEPTH} levels decoding accepts"),
            });
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in JSON text, counted without recursion.
pub(crate) fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn within_depth(json: &str) -> std::result::Result<(), String> {
    let depth = nesting_depth(json);
    if depth > MAX_DEPTH {
        return Err(format!(
            "it is nested {depth} levels deep, deeper than the {MAX_DEPTH} levels decoding accepts"
        ));
    }
    Ok(())
}

/// Serializes `value` to JSON text, refusing non-finite floats anywhere inside it.
pub fn to_json<T: Serialize + ?Sized>(value: &T, what: impl FnOnce() -> String) -> Result<String> {
    let fail = |reason: String| Error::Serialization {
        action: "serialize",
        what: what(),
        reason,
    };
    let mut path = FiniteCheck::default();
    if let Err(e) = value.serialize(&mut path) {
        return Err(fail(e.0));
    }
    serde_json::to_string(value).map_err(|e| fail(e.to_string()))
}

/// Deserializes `T` from JSON text.
pub fn from_json<T: DeserializeOwned>(json: &str, what: impl FnOnce() -> String) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Serialization {
        action: "deserialize",
        what: what(),
        reason: e.to_string(),
    })
}

/// Walks a value the way a serializer would, failing on the first non-finite float.
#[derive(Default)]
struct FiniteCheck {
    field: Option<&'static str>,
}

#[derive(Debug)]
struct NotFinite(String);

impl std::fmt::Display for NotFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFinite {}

impl ser::Error for NotFinite {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        NotFinite(msg.to_string())
    }
}

impl FiniteCheck {
    fn float(&self, v: f64) -> Result<(), NotFinite> {
        if v.is_finite() {
            return Ok(());
        }
        Err(NotFinite(match self.field {
            Some(field) => format!("field `{field}` is {v}, which JSON cannot represent"),
            None => format!("a float is {v}, which JSON cannot represent"),
        }))
    }
}

type Check = Result<(), NotFinite>;

macro_rules! accept {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Check { Ok(()) })*
    };
}

impl ser::Serializer for &mut FiniteCheck {
    type Ok = ();
    type Error = NotFinite;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    accept!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_f32(self, v: f32) -> Check {
        self.float(v.into())
    }
    fn serialize_f64(self, v: f64) -> Check {
        self.float(v)
    }
    fn serialize_none(self) -> Check {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Check {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Check {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Check {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Check {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Check {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, NotFinite> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, NotFinite> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, NotFinite> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, NotFinite> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, NotFinite> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, NotFinite> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, NotFinite> {
        Ok(self)
    }
}

macro_rules! compound {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl<'a> ser::$trait for &'a mut FiniteCheck {
            type Ok = ();
            type Error = NotFinite;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Check {
                value.serialize(&mut **self)
            }
            fn end(self) -> Check {
                Ok(())
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for &mut FiniteCheck {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Check {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Check {
        value.serialize(&mut **self)
    }
    fn end(self) -> Check {
        Ok(())
    }
}

macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl<'a> ser::$trait for &'a mut FiniteCheck {
            type Ok = ();
            type Error = NotFinite;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Check {
                let outer = self.field.replace(key);
                let result = value.serialize(&mut **self);
                self.field = outer;
                result
            }
            fn end(self) -> Check {
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_depth_counts_levels_outside_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(r#"{"a":"[[[{{\"]]"}"#), 1);
        assert_eq!(nesting_depth(r#"["\\",[]]"#), 2);
    }

    #[test]
    fn the_depth_limit_is_the_decoders() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH + 1)).is_err());
        assert!(within_depth(&nested(MAX_DEPTH)).is_ok());
        assert!(within_depth(&nested(MAX_DEPTH + 1)).is_err());
        let mut value = serde_json::Value::Null;
        for _ in 0..MAX_DEPTH {
            value = serde_json::Value::Array(vec![value]);
        }
        assert!(loadable_value(&value, String::new).is_ok());
        value = serde_json::Value::Array(vec![value]);
        assert!(loadable_value(&value, String::new).is_err());
    }

    #[derive(serde::Serialize)]
    struct Reading {
        label: String,
        values: Vec<f64>,
        nested: Option<Box<Reading>>,
    }

    #[test]
    fn finite_values_encode_like_serde_json() {
        let r = Reading {
            label: "a".into(),
            values: vec![1.5, -2.0],
            nested: None,
        };
        assert_eq!(
            to_json(&r, || "r".into()).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
    }

    #[test]
    fn non_finite_floats_are_refused_with_the_field_name() {
        let inner = Reading {
            label: "in".into(),
            values: vec![f64::NAN],
            nested: None,
        };
        let r = Reading {
            label: "a".into(),
            values: vec![],
            nested: Some(Box::new(inner)),
        };
        let err = to_json(&r, || "event Reading".into()).unwrap_err().to_string();
        assert!(
            err.contains("event Reading") && err.contains("`values`") && err.contains("NaN"),
            "{err}"
        );
        let err = to_json(&f32::INFINITY, || "x".into()).unwrap_err().to_string();
        assert!(err.contains("inf"), "{err}");
    }
}
