//! Checks across the keys of an attribute and the item it is on.

use proc_macro2::Span;
use quote::ToTokens;
use syn::ext::IdentExt;

use crate::ast::{Aggregate, Event, Shape};
use crate::attr::{Step, StepKind};
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
    check_upcast_chain(cx, event);
    if let Some(aliases) = &event.attrs.aliases.value {
        let name = match &event.attrs.name.value {
            Some(name) => name.value(),
            None => event.original.ident.unraw().to_string(),
        };
        for (i, alias) in aliases.iter().enumerate() {
            if alias.value() == name {
                cx.error_spanned_by(alias, format!("`{name}` is the event's own name, not an alias"));
            } else if aliases[..i].iter().any(|a| a.value() == alias.value()) {
                cx.error_spanned_by(alias, format!("alias `{}` is given twice", alias.value()));
            }
        }
    }
}

/// An event at version N reads every older version: `upcast(...)` has one step from each of
/// 1 to N - 1, and a version upcast as a type is followed by a version that is a type too.
fn check_upcast_chain(cx: &Ctxt, event: &Event) {
    let attrs = &event.attrs;
    let version = match attrs.version.value {
        Some(version) => version,
        // An invalid version is reported already.
        None if attrs.version.given => return,
        None => 1,
    };
    let steps = attrs.upcast.value.as_deref().unwrap_or_default();
    let valid = check_steps(cx, steps, version, "event", "version", "upcast", "an upcast");
    if attrs.upcast.given && attrs.upcast.value.is_none() {
        return;
    }
    let missing: Vec<u32> = (1..version).filter(|v| !valid.contains(v)).collect();
    if !missing.is_empty() {
        let span = attrs
            .upcast_span
            .or(attrs.version_span)
            .unwrap_or_else(Span::call_site);
        let list = missing.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
        cx.error_at(
            span,
            format!(
                "#[event(version = {version})] has no upcast from version {list}: stored events of every \
                 older version must still load; add `{} => json(function)` or `{} => OldStruct` to #[event(upcast(...))]",
                missing[0], missing[0]
            ),
        );
    }
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by_key(|step| step.from);
    for pair in sorted.windows(2) {
        let [earlier, later] = pair else { continue };
        if let (StepKind::Typed(old), StepKind::Json(_)) = (&earlier.how, &later.how) {
            if later.from == earlier.from + 1 {
                cx.error_spanned_by(
                    &later.from_lit,
                    format!(
                        "version {} is upcast as the type `{}`, which converts into version {}: give version {} a type too (`{} => Struct`)",
                        earlier.from,
                        show(old),
                        later.from,
                        later.from,
                        later.from
                    ),
                );
            }
        }
    }
}

/// Checks each step's version against the current one and against repeats; returns the
/// versions of the valid steps.
fn check_steps(
    cx: &Ctxt,
    steps: &[Step],
    current: u32,
    of: &str,
    version_key: &str,
    list_key: &str,
    a_step: &str,
) -> Vec<u32> {
    let mut valid = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if step.from == 0 || step.from >= current {
            cx.error_spanned_by(
                &step.from_lit,
                format!(
                    "no {list_key} from {version_key} {}: the {of} is at {version_key} {current}, and {a_step} goes from an older {version_key} to the next",
                    step.from
                ),
            );
        } else if steps[..i].iter().any(|s| s.from == step.from) {
            cx.error_spanned_by(
                &step.from_lit,
                format!("{a_step} from {version_key} {} is given twice", step.from),
            );
        } else {
            valid.push(step.from);
        }
    }
    valid
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
    check_migrations(cx, aggregate);
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

/// Snapshot migrations reach the current schema version: from the oldest one given, every
/// schema version up to the current one has a step.
fn check_migrations(cx: &Ctxt, aggregate: &Aggregate) {
    let attrs = &aggregate.attrs;
    let Some(steps) = &attrs.migrate.value else {
        return;
    };
    let current = match attrs.schema_version.value {
        Some(current) => current,
        // An invalid schema version is reported already.
        None if attrs.schema_version.given => return,
        None => 1,
    };
    let valid = check_steps(
        cx,
        steps,
        current,
        "aggregate",
        "schema version",
        "migration",
        "a migration",
    );
    let Some(&oldest) = valid.iter().min() else {
        return;
    };
    let missing: Vec<u32> = (oldest..current).filter(|v| !valid.contains(v)).collect();
    if let Some(gap) = missing.first() {
        let step = steps.iter().find(|s| s.from == oldest).unwrap();
        cx.error_spanned_by(
            &step.from_lit,
            format!(
                "a snapshot of schema version {oldest} cannot reach schema version {current}: there is no migration from schema version {gap}; add `{gap} => function` to #[aggregate(migrate(...))]"
            ),
        );
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
