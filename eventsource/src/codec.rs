//! JSON encoding of events and snapshot state.
//!
//! `serde_json` writes a NaN or an infinity as `null`, which then fails to decode (or decodes
//! as something else) long after the value was accepted. Encoding here refuses non-finite
//! floats up front, so a bad value is an error at save time and never reaches a store.

use serde::de::DeserializeOwned;
use serde::ser::{self, Serialize};

use crate::error::{Error, Result};

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
