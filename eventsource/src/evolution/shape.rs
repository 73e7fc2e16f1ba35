//! The serialized shape of a type, traced from its serde `Deserialize` impl.
//!
//! [`trace`] deserializes the type from a deserializer that answers every request with a
//! sample value and writes down what was requested: a struct's field names and their
//! formats, recursively, the variants of every enum (one run per variant), options, lists,
//! maps. It is what JSON would hold, as the type's own serde attributes make it (renames,
//! `skip`, `default`): the shape a stored state or event has.
//!
//! Strings are answered with a few samples in turn (empty, a UUID, a timestamp, a date,
//! ...) until the field's `Deserialize` accepts one, so ids and timestamps trace as `str`.
//! A type that deserializes through `deserialize_any` (`serde_json::Value`, untagged or
//! internally tagged enums) traces as `any` there: the lock cannot see inside it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// The format of one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Not traced (only inside a recursive type).
    Unknown,
    /// Read through `deserialize_any`: any JSON.
    Any,
    /// `bool`.
    Bool,
    /// A signed integer of the given bits.
    Int(u8),
    /// An unsigned integer of the given bits.
    Uint(u8),
    /// A float of the given bits.
    Float(u8),
    /// `char`.
    Char,
    /// A string.
    Str,
    /// Bytes.
    Bytes,
    /// `()`.
    Unit,
    /// An optional value.
    Option(Box<Format>),
    /// A list.
    Seq(Box<Format>),
    /// A map.
    Map(Box<Format>, Box<Format>),
    /// A tuple.
    Tuple(Vec<Format>),
    /// A named container, described in [`Traced::containers`].
    Named(String),
    /// A [`Personal`](crate::personal::Personal) value of the given format, stored sealed.
    Personal(Box<Format>),
}

/// A named struct or enum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Container {
    /// A struct with named fields, in order.
    Struct(Vec<(String, Format)>),
    /// A newtype struct.
    NewType(Format),
    /// A tuple struct.
    Tuple(Vec<Format>),
    /// A unit struct.
    Unit,
    /// An enum: its variants by index.
    Enum(BTreeMap<u32, (String, Variant)>),
}

/// One variant of an enum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Not traced yet.
    Unknown,
    /// A unit variant.
    Unit,
    /// A newtype variant.
    NewType(Format),
    /// A tuple variant.
    Tuple(Vec<Format>),
    /// A struct variant.
    Struct(Vec<(String, Format)>),
}

/// The shape of one type: its own format and every named container it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traced {
    /// The type's format: for a struct, `Named` of its name.
    pub root: Format,
    /// Every struct and enum reached, by name.
    pub containers: BTreeMap<String, Container>,
}

/// Strings offered, in turn, to a field whose `Deserialize` refuses the previous one.
const SAMPLE_STRINGS: &[&str] = &[
    "",
    "00000000-0000-0000-0000-000000000000",
    "1970-01-01T00:00:00Z",
    "1970-01-01",
    "00:00:00",
    "0",
    "a",
];

/// Runs at most this many deserializations: one per enum variant and per refused string.
const MAX_RUNS: usize = 4096;

/// How deep a recursive type is followed inside itself before tracing gives up.
const MAX_RECURSION: usize = 32;

/// Traces the serialized shape of `T`; an error says why it cannot be traced.
pub fn trace<T: DeserializeOwned>() -> Result<Traced, String> {
    let mut state = State::default();
    let mut root = None;
    for _ in 0..MAX_RUNS {
        state.start_run();
        let mut slot = Format::Unknown;
        let outcome = T::deserialize(Tracer {
            state: &mut state,
            out: &mut slot,
        });
        if let Some(conflict) = state.conflict.take() {
            return Err(conflict);
        }
        if outcome.is_err() {
            state.undo_run();
        }
        match outcome {
            Ok(_) => {
                root.get_or_insert(slot);
            }
            // A recursive enum whose variant inside itself did not end the recursion: the
            // next run tries its next variant there.
            Err(TraceError(reason)) if state.too_deep.is_some() => {
                let name = state.too_deep.take().unwrap_or_default();
                let count = state.enums.get(name).map_or(0, |p| p.count);
                let ending = state.ending.entry(name).or_default();
                *ending += 1;
                if *ending >= count {
                    return Err(reason);
                }
                continue;
            }
            Err(TraceError(reason)) => match state.refused_string.take() {
                Some(key) => {
                    let choice = state.strings.entry(key.clone()).or_default();
                    *choice += 1;
                    if *choice >= SAMPLE_STRINGS.len() {
                        return Err(format!(
                            "the string at `{key}` accepts none of the sample strings: {reason}"
                        ));
                    }
                    continue;
                }
                None => return Err(reason),
            },
        }
        if !state.more_to_trace() {
            return Ok(Traced {
                root: root.unwrap_or(Format::Unknown),
                containers: state.containers,
            });
        }
    }
    Err(format!("more than {MAX_RUNS} variants or strings to try"))
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, Container>,
    /// Containers being deserialized, outermost first.
    stack: Vec<&'static str>,
    /// How many of them are a container inside itself.
    recursion: usize,
    /// Field names and element indexes from the root to the value being deserialized.
    path: Vec<String>,
    /// The sample string chosen for each path.
    strings: HashMap<String, usize>,
    /// The path of the string the last run's type refused.
    refused_string: Option<String>,
    /// Per enum: how many variants it has, which were traced, and what each reaches.
    enums: BTreeMap<&'static str, EnumProgress>,
    /// The enum variants being deserialized, outermost first.
    choices: Vec<(&'static str, u32)>,
    /// Whether the last run traced a variant no run had.
    progressed: bool,
    /// Per recursive enum: the variant it takes inside itself, when none is known to be a unit.
    ending: HashMap<&'static str, u32>,
    /// The container whose recursion the last run gave up on.
    too_deep: Option<&'static str>,
    /// The variants this run took for the first time: not traced after all if it fails.
    fresh: Vec<(&'static str, u32)>,
    /// Two different types under one name.
    conflict: Option<String>,
}

#[derive(Default)]
struct EnumProgress {
    count: u32,
    traced: BTreeSet<u32>,
    /// Per variant: the enums met inside it.
    reaches: BTreeMap<u32, BTreeSet<&'static str>>,
}

impl State {
    fn start_run(&mut self) {
        self.stack.clear();
        self.recursion = 0;
        self.path.clear();
        self.choices.clear();
        self.progressed = false;
        self.fresh.clear();
    }

    /// Forgets the variants a failed run took for the first time.
    fn undo_run(&mut self) {
        for (name, variant) in self.fresh.drain(..) {
            if let Some(progress) = self.enums.get_mut(name) {
                progress.traced.remove(&variant);
            }
        }
    }

    fn untraced(&self, name: &str) -> bool {
        self.enums
            .get(name)
            .is_some_and(|p| (p.traced.len() as u32) < p.count)
    }

    /// Whether another run is worth making: some variant is still untraced, and the last run
    /// got further (a variant no run can reach stays untraced, shown as `?`).
    fn more_to_trace(&self) -> bool {
        self.progressed && self.enums.keys().any(|name| self.untraced(name))
    }

    /// The variant of enum `name` to take in this run: one not traced yet, else one inside
    /// which an enum with untraced variants was met, else the first.
    fn choose(&mut self, name: &'static str, count: u32) -> u32 {
        for &(outer, variant) in &self.choices {
            if let Some(outer) = self.enums.get_mut(outer) {
                outer.reaches.entry(variant).or_default().insert(name);
            }
        }
        let progress = self.enums.entry(name).or_default();
        progress.count = count;
        if let Some(fresh) = (0..count).find(|v| !progress.traced.contains(v)) {
            progress.traced.insert(fresh);
            self.fresh.push((name, fresh));
            self.progressed = true;
            return fresh;
        }
        let progress = &self.enums[name];
        progress
            .reaches
            .iter()
            .find(|(_, inner)| inner.iter().any(|e| self.untraced(e)))
            .map_or(0, |(&variant, _)| variant)
    }

    /// Inside itself, an enum takes a variant known to be a unit, likeliest to end the
    /// recursion, or its first.
    fn choose_to_end(&self, name: &str) -> u32 {
        let unit = match self.containers.get(name) {
            Some(Container::Enum(variants)) => variants
                .iter()
                .find(|(_, (_, v))| *v == Variant::Unit)
                .map(|(&index, _)| index),
            _ => None,
        };
        unit.unwrap_or_else(|| self.ending.get(name).copied().unwrap_or(0))
    }

    fn sample_string(&self) -> (&'static str, String) {
        let key = self.path.join(".");
        let choice = self.strings.get(&key).copied().unwrap_or(0);
        (SAMPLE_STRINGS[choice.min(SAMPLE_STRINGS.len() - 1)], key)
    }

    /// Records a container traced outside any recursion, merged with what earlier runs saw.
    fn record(&mut self, name: &str, container: Container) {
        if self.recursion > 0 {
            return;
        }
        match self.containers.get_mut(name) {
            None => {
                self.containers.insert(name.to_owned(), container);
            }
            Some(known) => {
                if let Err(()) = merge_container(known, container) {
                    self.conflict.get_or_insert_with(|| {
                        format!(
                            "two different types are named `{name}`; the lock tells containers apart by name"
                        )
                    });
                }
            }
        }
    }
}

fn merge_container(known: &mut Container, new: Container) -> Result<(), ()> {
    match (known, new) {
        (Container::Struct(a), Container::Struct(b)) => merge_fields(a, b),
        (Container::NewType(a), Container::NewType(b)) => merge_format(a, b),
        (Container::Tuple(a), Container::Tuple(b)) => merge_list(a, b),
        (Container::Unit, Container::Unit) => Ok(()),
        (Container::Enum(a), Container::Enum(b)) => {
            for (index, (name, variant)) in b {
                match a.get_mut(&index) {
                    None => {
                        a.insert(index, (name, variant));
                    }
                    Some((known_name, _)) if *known_name != name => return Err(()),
                    Some((_, known)) => merge_variant(known, variant)?,
                }
            }
            Ok(())
        }
        _ => Err(()),
    }
}

fn merge_variant(known: &mut Variant, new: Variant) -> Result<(), ()> {
    match (known, new) {
        (_, Variant::Unknown) => Ok(()),
        (known @ Variant::Unknown, new) => {
            *known = new;
            Ok(())
        }
        (Variant::Unit, Variant::Unit) => Ok(()),
        (Variant::NewType(a), Variant::NewType(b)) => merge_format(a, b),
        (Variant::Tuple(a), Variant::Tuple(b)) => merge_list(a, b),
        (Variant::Struct(a), Variant::Struct(b)) => merge_fields(a, b),
        _ => Err(()),
    }
}

fn merge_fields(known: &mut [(String, Format)], new: Vec<(String, Format)>) -> Result<(), ()> {
    if known.len() != new.len() {
        return Err(());
    }
    for ((name, format), (new_name, new_format)) in known.iter_mut().zip(new) {
        if *name != new_name {
            return Err(());
        }
        merge_format(format, new_format)?;
    }
    Ok(())
}

fn merge_list(known: &mut [Format], new: Vec<Format>) -> Result<(), ()> {
    if known.len() != new.len() {
        return Err(());
    }
    known
        .iter_mut()
        .zip(new)
        .try_for_each(|(format, new)| merge_format(format, new))
}

fn merge_format(known: &mut Format, new: Format) -> Result<(), ()> {
    match (known, new) {
        (_, Format::Unknown) => Ok(()),
        (known @ Format::Unknown, new) => {
            *known = new;
            Ok(())
        }
        (Format::Option(a), Format::Option(b))
        | (Format::Seq(a), Format::Seq(b))
        | (Format::Personal(a), Format::Personal(b)) => merge_format(a, *b),
        (Format::Map(ka, va), Format::Map(kb, vb)) => {
            merge_format(ka, *kb)?;
            merge_format(va, *vb)
        }
        (Format::Tuple(a), Format::Tuple(b)) => merge_list(a, b),
        (a, b) if *a == b => Ok(()),
        _ => Err(()),
    }
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

/// Answers one deserialization request and writes its format to `out`.
struct Tracer<'a> {
    state: &'a mut State,
    out: &'a mut Format,
}

type Traces<T> = Result<T, TraceError>;

macro_rules! scalar {
    ($($method:ident => $format:expr, $visit:ident($value:expr);)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
            *self.out = $format;
            visitor.$visit($value)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    scalar! {
        deserialize_bool => Format::Bool, visit_bool(false);
        deserialize_i8 => Format::Int(8), visit_i8(0);
        deserialize_i16 => Format::Int(16), visit_i16(0);
        deserialize_i32 => Format::Int(32), visit_i32(0);
        deserialize_i64 => Format::Int(64), visit_i64(0);
        deserialize_i128 => Format::Int(128), visit_i128(0);
        deserialize_u8 => Format::Uint(8), visit_u8(0);
        deserialize_u16 => Format::Uint(16), visit_u16(0);
        deserialize_u32 => Format::Uint(32), visit_u32(0);
        deserialize_u64 => Format::Uint(64), visit_u64(0);
        deserialize_u128 => Format::Uint(128), visit_u128(0);
        deserialize_f32 => Format::Float(32), visit_f32(0.0);
        deserialize_f64 => Format::Float(64), visit_f64(0.0);
        deserialize_char => Format::Char, visit_char('A');
        deserialize_bytes => Format::Bytes, visit_bytes(&[]);
        deserialize_byte_buf => Format::Bytes, visit_byte_buf(Vec::new());
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        *self.out = Format::Unit;
        visitor.visit_unit()
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        *self.out = Format::Any;
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        *self.out = Format::Any;
        visitor.visit_unit()
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        *self.out = Format::Str;
        let (sample, key) = self.state.sample_string();
        visitor.visit_str(sample).inspect_err(|_| {
            self.state.refused_string.get_or_insert(key);
        })
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        if self.state.recursion > 0 {
            *self.out = Format::Option(Box::new(Format::Unknown));
            return visitor.visit_none();
        }
        let mut inner = Format::Unknown;
        let value = visitor.visit_some(Tracer {
            state: self.state,
            out: &mut inner,
        })?;
        *self.out = Format::Option(Box::new(inner));
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Traces<V::Value> {
        *self.out = Format::Named(name.to_owned());
        self.state.record(name, Container::Unit);
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Traces<V::Value> {
        if name == crate::personal::NEWTYPE {
            // A personal value: its own shape, which `Personal` asks for through `visit_some`.
            let mut inner = Format::Unknown;
            let value = visitor.visit_some(Tracer {
                state: self.state,
                out: &mut inner,
            })?;
            *self.out = Format::Personal(Box::new(inner));
            return Ok(value);
        }
        *self.out = Format::Named(name.to_owned());
        let mut inner = Format::Unknown;
        let value = within(self.state, name, |state| {
            visitor.visit_newtype_struct(Tracer {
                state,
                out: &mut inner,
            })
        })?;
        self.state.record(name, Container::NewType(inner));
        Ok(value)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        let len = usize::from(self.state.recursion == 0);
        let mut seq = Elements::new(self.state, len);
        let value = visitor.visit_seq(&mut seq)?;
        let item = seq.formats.pop().unwrap_or(Format::Unknown);
        *self.out = Format::Seq(Box::new(item));
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Traces<V::Value> {
        let mut seq = Elements::new(self.state, len);
        let value = visitor.visit_seq(&mut seq)?;
        *self.out = Format::Tuple(seq.formats);
        Ok(value)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Traces<V::Value> {
        *self.out = Format::Named(name.to_owned());
        let (value, formats) = within(self.state, name, |state| {
            let mut seq = Elements::new(state, len);
            let value = visitor.visit_seq(&mut seq)?;
            Ok((value, seq.formats))
        })?;
        self.state.record(name, Container::Tuple(formats));
        Ok(value)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Traces<V::Value> {
        let entries = usize::from(self.state.recursion == 0);
        let mut map = Entries {
            state: self.state,
            left: entries,
            key: Format::Unknown,
            value: Format::Unknown,
        };
        let value = visitor.visit_map(&mut map)?;
        *self.out = Format::Map(Box::new(map.key), Box::new(map.value));
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Traces<V::Value> {
        *self.out = Format::Named(name.to_owned());
        let (value, formats) = within(self.state, name, |state| {
            let mut seq = Elements::named(state, fields);
            let value = visitor.visit_seq(&mut seq)?;
            Ok((value, seq.formats))
        })?;
        let named = fields.iter().map(|f| f.to_string()).zip(formats).collect();
        self.state.record(name, Container::Struct(named));
        Ok(value)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Traces<V::Value> {
        *self.out = Format::Named(name.to_owned());
        let count = variants.len() as u32;
        let chosen = if self.state.recursion > 0 || self.state.stack.contains(&name) {
            self.state.choose_to_end(name)
        } else {
            self.state.choose(name, count)
        };
        let variant_name = variants
            .get(chosen as usize)
            .ok_or_else(|| TraceError(format!("enum `{name}` has no variants")))?;
        let mut traced = Variant::Unknown;
        self.state.choices.push((name, chosen));
        let value = within(self.state, name, |state| {
            visitor.visit_enum(OneVariant {
                state,
                index: chosen,
                out: &mut traced,
            })
        });
        self.state.choices.pop();
        let value = value?;
        let all = BTreeMap::from([(chosen, (variant_name.to_string(), traced))]);
        self.state.record(name, Container::Enum(all));
        Ok(value)
    }

    fn is_human_readable(&self) -> bool {
        // The shape JSON stores.
        true
    }
}

/// Runs `f` with `name` on the container stack, counting recursion.
fn within<T>(state: &mut State, name: &'static str, f: impl FnOnce(&mut State) -> Traces<T>) -> Traces<T> {
    let recursive = state.stack.contains(&name);
    if recursive {
        if state.recursion >= MAX_RECURSION {
            state.too_deep = Some(name);
            return Err(TraceError(format!(
                "`{name}` contains itself too deeply to be traced"
            )));
        }
        state.recursion += 1;
    }
    state.stack.push(name);
    let outcome = f(state);
    state.stack.pop();
    if recursive {
        state.recursion -= 1;
    }
    outcome
}

/// The elements of a list, tuple or struct, each traced into its own format.
struct Elements<'a> {
    state: &'a mut State,
    names: Option<&'static [&'static str]>,
    len: usize,
    formats: Vec<Format>,
}

impl<'a> Elements<'a> {
    fn new(state: &'a mut State, len: usize) -> Self {
        Elements {
            state,
            names: None,
            len,
            formats: Vec::new(),
        }
    }

    fn named(state: &'a mut State, names: &'static [&'static str]) -> Self {
        Elements {
            state,
            names: Some(names),
            len: names.len(),
            formats: Vec::new(),
        }
    }
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Traces<Option<S::Value>> {
        let index = self.formats.len();
        if index >= self.len {
            return Ok(None);
        }
        let step = match self.names {
            Some(names) => names[index].to_owned(),
            None => index.to_string(),
        };
        self.state.path.push(step);
        let mut format = Format::Unknown;
        let value = seed.deserialize(Tracer {
            state: self.state,
            out: &mut format,
        });
        self.state.path.pop();
        self.formats.push(format);
        value.map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len - self.formats.len())
    }
}

/// The entries of a map: one, traced into the key's and the value's formats.
struct Entries<'a> {
    state: &'a mut State,
    left: usize,
    key: Format,
    value: Format,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Traces<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.state.path.push("key".into());
        let key = seed.deserialize(Tracer {
            state: self.state,
            out: &mut self.key,
        });
        self.state.path.pop();
        key.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Traces<V::Value> {
        self.state.path.push("value".into());
        let value = seed.deserialize(Tracer {
            state: self.state,
            out: &mut self.value,
        });
        self.state.path.pop();
        value
    }
}

/// The variant an enum takes in this run.
struct OneVariant<'a> {
    state: &'a mut State,
    index: u32,
    out: &'a mut Variant,
}

impl<'de, 'a> de::EnumAccess<'de> for OneVariant<'a> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Traces<(S::Value, Self)> {
        let index: de::value::U32Deserializer<TraceError> = self.index.into_deserializer();
        let value = seed.deserialize(index)?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for OneVariant<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Traces<()> {
        *self.out = Variant::Unit;
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Traces<S::Value> {
        let mut format = Format::Unknown;
        let value = seed.deserialize(Tracer {
            state: self.state,
            out: &mut format,
        })?;
        *self.out = Variant::NewType(format);
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Traces<V::Value> {
        let mut seq = Elements::new(self.state, len);
        let value = visitor.visit_seq(&mut seq)?;
        *self.out = Variant::Tuple(seq.formats);
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Traces<V::Value> {
        let mut seq = Elements::named(self.state, fields);
        let value = visitor.visit_seq(&mut seq)?;
        let named = fields.iter().map(|f| f.to_string()).zip(seq.formats).collect();
        *self.out = Variant::Struct(named);
        Ok(value)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Unknown => f.write_str("?"),
            Format::Any => f.write_str("any"),
            Format::Bool => f.write_str("bool"),
            Format::Int(bits) => write!(f, "i{bits}"),
            Format::Uint(bits) => write!(f, "u{bits}"),
            Format::Float(bits) => write!(f, "f{bits}"),
            Format::Char => f.write_str("char"),
            Format::Str => f.write_str("str"),
            Format::Bytes => f.write_str("bytes"),
            Format::Unit => f.write_str("()"),
            Format::Option(inner) => write!(f, "option<{inner}>"),
            Format::Personal(inner) => write!(f, "personal<{inner}>"),
            Format::Seq(inner) => write!(f, "seq<{inner}>"),
            Format::Map(key, value) => write!(f, "map<{key}, {value}>"),
            Format::Tuple(items) => write!(f, "({})", list(items)),
            Format::Named(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Container::Struct(fields) if fields.is_empty() => f.write_str("struct {}"),
            Container::Struct(fields) => write!(f, "struct {{ {} }}", named(&sorted(fields))),
            Container::NewType(inner) => write!(f, "newtype({inner})"),
            Container::Tuple(items) => write!(f, "tuple({})", list(items)),
            Container::Unit => f.write_str("unit"),
            Container::Enum(variants) => {
                let shown: Vec<String> = variants
                    .values()
                    .map(|(name, variant)| match variant {
                        Variant::Unknown => format!("{name} ?"),
                        Variant::Unit => name.clone(),
                        Variant::NewType(inner) => format!("{name}({inner})"),
                        Variant::Tuple(items) => format!("{name}({})", list(items)),
                        Variant::Struct(fields) if fields.is_empty() => format!("{name} {{}}"),
                        Variant::Struct(fields) => format!("{name} {{ {} }}", named(&sorted(fields))),
                    })
                    .collect();
                write!(f, "enum {{ {} }}", shown.join(", "))
            }
        }
    }
}

/// Fields by name: JSON objects have no order, so a reordering is no change of shape.
fn sorted(fields: &[(String, Format)]) -> Vec<(String, Format)> {
    let mut fields = fields.to_vec();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

fn list(items: &[Format]) -> String {
    items.iter().map(Format::to_string).collect::<Vec<_>>().join(", ")
}

fn named(fields: &[(String, Format)]) -> String {
    fields
        .iter()
        .map(|(name, format)| format!("{name}: {format}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Traced {
    /// The shape as lines of text, the root first, then every container by name:
    /// `Account = struct { owner: str, balance: f64 }`.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !matches!(&self.root, Format::Named(name) if self.containers.contains_key(name)) {
            lines.push(format!("= {}", self.root));
        }
        let root = match &self.root {
            Format::Named(name) => Some(name.as_str()),
            _ => None,
        };
        let ordered = root
            .and_then(|name| self.containers.get_key_value(name))
            .into_iter()
            .chain(
                self.containers
                    .iter()
                    .filter(|(name, _)| Some(name.as_str()) != root),
            );
        for (name, container) in ordered {
            lines.push(format!("{name} = {container}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Account {
        id: uuid::Uuid,
        opened_at: chrono::DateTime<chrono::Utc>,
        owner: String,
        #[serde(rename = "bal")]
        balance: f64,
        tags: Vec<String>,
        limits: std::collections::HashMap<String, u64>,
        status: Status,
        parent: Option<Box<Account>>,
        pair: (u8, bool),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Status {
        Open,
        Frozen { reason: String, until: Option<i64> },
        Closed(u32),
    }

    #[test]
    fn a_struct_traces_to_its_fields_variants_and_nested_types() {
        let traced = trace::<Account>().unwrap();
        assert_eq!(
            traced.lines(),
            [
                "Account = struct { bal: f64, id: str, limits: map<str, u64>, opened_at: str, owner: str, \
                 pair: (u8, bool), parent: option<Account>, status: Status, tags: seq<str> }",
                "Status = enum { Open, Frozen { reason: str, until: option<i64> }, Closed(u32) }",
            ]
        );
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Payment {
        Card(Scheme),
        Cash,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Scheme {
        Visa,
        Amex { premium: bool },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Node(Box<Tree>, Box<Tree>),
        Leaf(Scheme),
        Empty,
    }

    #[test]
    fn every_variant_of_enums_inside_enums_and_of_recursive_enums_is_traced() {
        assert_eq!(
            trace::<Payment>().unwrap().lines(),
            [
                "Payment = enum { Card(Scheme), Cash }",
                "Scheme = enum { Visa, Amex { premium: bool } }",
            ]
        );
        assert_eq!(
            trace::<Tree>().unwrap().lines(),
            [
                "Tree = enum { Node(Tree, Tree), Leaf(Scheme), Empty }",
                "Scheme = enum { Visa, Amex { premium: bool } }",
            ]
        );
    }

    #[test]
    fn a_value_that_is_not_a_container_is_its_format() {
        assert_eq!(trace::<Vec<u64>>().unwrap().lines(), ["= seq<u64>"]);
        assert_eq!(trace::<serde_json::Value>().unwrap().lines(), ["= any"]);
    }
}
