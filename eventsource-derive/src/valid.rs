//! Checks across the keys of an attribute and the item it is on.

use proc_macro2::Span;
use quote::ToTokens;
use syn::ext::IdentExt;

use crate::ast::{Aggregate, Event, Shape};
use crate::ctxt::Ctxt;

pub fn check_event(cx: &Ctxt, event: &Event) {
    check_shape(cx, &event.shape, "#[event]", "a struct with named fields");
    let generics = &event.original.generics;
    if !generics.params.is_empty() {
        cx.error_spanned_by(generics, "an #[event] struct cannot have generic parameters");
    }
    if !event.attrs.aggregate.given {
        cx.error_at(Span::call_site(), "missing #[event(aggregate = \"...\")]");
    }
}

pub fn check_aggregate(cx: &Ctxt, aggregate: &Aggregate) {
    check_shape(cx, &aggregate.shape, "#[derive(Aggregate)]", "a struct");
    let attrs = &aggregate.attrs;
    let Some(attr) = attrs.attr else {
        cx.error_at(
            Span::call_site(),
            "missing #[aggregate(name = \"...\", events(...))] attribute",
        );
        return;
    };
    if !attrs.name.given {
        cx.error_spanned_by(attr, "missing #[aggregate(name = \"...\")]");
    }
    if !attrs.events.given {
        cx.error_spanned_by(attr, "missing #[aggregate(events(...))]");
    }
    for (i, event) in aggregate.events.iter().enumerate() {
        let Some(first) = aggregate.events[..i].iter().find(|e| e.variant == event.variant) else {
            continue;
        };
        if show(&first.path) == show(&event.path) {
            cx.error_spanned_by(
                &event.path,
                format!(
                    "event `{}` is listed twice in #[aggregate(events(...))]",
                    show(&event.path)
                ),
            );
        } else {
            cx.error_spanned_by(
                &event.path,
                format!(
                    "events `{}` and `{}` would both be the variant `{}Event::{}`; list events with distinct names",
                    show(&first.path),
                    show(&event.path),
                    aggregate.original.ident.unraw(),
                    event.variant
                ),
            );
        }
    }
}

fn check_shape(cx: &Ctxt, shape: &Shape, macro_name: &str, expected: &str) {
    match shape {
        Shape::Named | Shape::Unit => {}
        Shape::Tuple(fields) => cx.error_spanned_by(
            fields,
            format!("{macro_name} applies to {expected}, not to a tuple struct"),
        ),
        Shape::Enum(token) => cx.error_spanned_by(
            token,
            format!("{macro_name} applies to {expected}, not to an enum"),
        ),
        Shape::Union(token) => cx.error_spanned_by(
            token,
            format!("{macro_name} applies to {expected}, not to a union"),
        ),
    }
}

/// A path as the user would write it.
pub fn show(path: &syn::Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}
