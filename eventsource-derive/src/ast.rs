//! The typed model of an `#[event]` struct and a `#[derive(Aggregate)]` struct.
//!
//! Nodes keep the syn nodes they came from, so every phase can point at the user's tokens.

use proc_macro2::TokenStream;
use syn::{Data, DeriveInput, Fields, Ident, Path};

use crate::attr::{AggregateAttrs, EventAttrs};
use crate::ctxt::Ctxt;

/// A struct annotated with `#[event(...)]`.
pub struct Event<'a> {
    pub original: &'a DeriveInput,
    pub shape: Shape<'a>,
    pub attrs: EventAttrs,
    /// The fields marked `#[personal(subject = ...)]`.
    pub personal: Vec<crate::personal::PersonalField>,
}

/// A struct deriving `Aggregate`.
pub struct Aggregate<'a> {
    pub original: &'a DeriveInput,
    pub shape: Shape<'a>,
    pub attrs: AggregateAttrs<'a>,
    /// The listed events, in order, repeats included.
    pub events: Vec<ListedEvent>,
}

/// One path of `#[aggregate(events(...))]`.
pub struct ListedEvent {
    pub path: Path,
    /// The enum variant: the last segment of the path.
    pub variant: Ident,
}

/// What kind of item the macro was put on.
pub enum Shape<'a> {
    Named,
    Unit,
    Tuple(&'a syn::FieldsUnnamed),
    Enum(&'a syn::token::Enum),
    Union(&'a syn::token::Union),
}

impl<'a> Event<'a> {
    pub fn from_ast(cx: &Ctxt, args: TokenStream, original: &'a DeriveInput) -> Self {
        Event {
            original,
            shape: Shape::of(&original.data),
            attrs: EventAttrs::from_args(cx, args),
            personal: crate::personal::fields(cx, original),
        }
    }
}

impl<'a> Aggregate<'a> {
    pub fn from_ast(cx: &Ctxt, original: &'a DeriveInput) -> Self {
        let attrs = AggregateAttrs::from_attrs(cx, &original.attrs);
        let events = attrs
            .events
            .value
            .iter()
            .flatten()
            .map(|path| ListedEvent {
                path: path.clone(),
                variant: path.segments.last().unwrap().ident.clone(),
            })
            .collect();
        Aggregate {
            original,
            shape: Shape::of(&original.data),
            attrs,
            events,
        }
    }

    /// The listed events with each variant name once: the first of any repeats.
    pub fn distinct_events(&self) -> Vec<&ListedEvent> {
        let mut seen = Vec::new();
        for event in &self.events {
            if !seen.iter().any(|e: &&ListedEvent| e.variant == event.variant) {
                seen.push(event);
            }
        }
        seen
    }
}

impl<'a> Shape<'a> {
    fn of(data: &'a Data) -> Self {
        match data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(_) => Shape::Named,
                Fields::Unit => Shape::Unit,
                Fields::Unnamed(fields) => Shape::Tuple(fields),
            },
            Data::Enum(data) => Shape::Enum(&data.enum_token),
            Data::Union(data) => Shape::Union(&data.union_token),
        }
    }

    pub fn is_struct(&self) -> bool {
        matches!(self, Shape::Named | Shape::Unit)
    }
}
