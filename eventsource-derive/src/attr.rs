//! Parsing of `#[event(...)]` and `#[aggregate(...)]`, one key at a time.
//!
//! Each key is parsed on its own, so one malformed key does not hide the mistakes in the
//! others. A value that is wrong is reported here and left out of the model; the key still
//! counts as given, so no "missing" error follows it.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::Parser;
use syn::{Attribute, Expr, Ident, Lit, LitStr, Meta, Path};

use crate::ctxt::Ctxt;

/// The attribute macro that makes a struct an event.
pub const EVENT_ATTR: &str = "event";
/// The helper attribute of `#[derive(Aggregate)]`.
pub const AGGREGATE_ATTR: &str = "aggregate";
/// `#[event(aggregate = "...")]`: the aggregate the event belongs to.
pub const AGGREGATE: &str = "aggregate";
/// `#[event(name = "...")]` and `#[aggregate(name = "...")]`.
pub const NAME: &str = "name";
/// `#[event(version = N)]`.
pub const VERSION: &str = "version";
/// `#[aggregate(schema_version = N)]`.
pub const SCHEMA_VERSION: &str = "schema_version";
/// `#[aggregate(events(Path, ...))]`.
pub const EVENTS: &str = "events";
/// `#[event(upcast(1 => json(function), 2 => OldStruct))]`.
pub const UPCAST: &str = "upcast";
/// `#[event(aliases("OldName", ...))]`.
pub const ALIASES: &str = "aliases";
/// `#[aggregate(migrate(1 => function, ...))]`.
pub const MIGRATE: &str = "migrate";
/// `#[event(crate = "...")]` and `#[aggregate(crate = "...")]`: the path of the library.
pub const CRATE: &str = "crate";

/// One key of an attribute: whether it was written, and its value if that was valid.
pub struct Setting<T> {
    pub given: bool,
    pub value: Option<T>,
}

impl<T> Setting<T> {
    fn none() -> Self {
        Setting {
            given: false,
            value: None,
        }
    }

    /// Notes the key as given and parses its value, unless it was given before.
    fn set(&mut self, cx: &Ctxt, syntax: &str, meta: Option<&Meta>, parse: impl FnOnce(&Meta) -> Option<T>) {
        match meta {
            Some(meta) if self.given => {
                cx.error_spanned_by(meta, format!("duplicate {syntax} attribute"));
            }
            Some(meta) => {
                self.given = true;
                self.value = parse(meta);
            }
            // It did not parse, which is reported: only keep it from counting as missing.
            None => self.given = true,
        }
    }
}

/// The keys of `#[event(...)]`.
pub struct EventAttrs {
    pub aggregate: Setting<LitStr>,
    pub name: Setting<LitStr>,
    pub version: Setting<u32>,
    /// Where the version was written, for errors about the upcast chain it needs.
    pub version_span: Option<Span>,
    pub upcast: Setting<Vec<Step>>,
    /// Where `upcast(...)` was written.
    pub upcast_span: Option<Span>,
    pub aliases: Setting<Vec<LitStr>>,
    /// The path the library is reached through, when it is not `::eventsourcing_kit`.
    pub krate: Setting<Path>,
}

/// One step of an upcast chain or a snapshot migration: how a stored value of version
/// `from` becomes one of version `from + 1`.
pub struct Step {
    pub from: u32,
    /// The version as written, where errors about this step point.
    pub from_lit: syn::LitInt,
    pub how: StepKind,
}

pub enum StepKind {
    /// `json(path::to::function)`: a function of the JSON value.
    Json(Path),
    /// `OldStruct`: the old version as its own type, converted with `TryFrom`.
    Typed(Path),
}

impl EventAttrs {
    pub fn from_args(cx: &Ctxt, args: TokenStream) -> Self {
        let mut attrs = EventAttrs {
            aggregate: Setting::none(),
            name: Setting::none(),
            version: Setting::none(),
            version_span: None,
            upcast: Setting::none(),
            upcast_span: None,
            aliases: Setting::none(),
            krate: Setting::none(),
        };
        let keys = &[AGGREGATE, NAME, VERSION, UPCAST, ALIASES, CRATE];
        for_each_key(cx, EVENT_ATTR, keys, args, |key, meta| {
            let syntax = &syntax(EVENT_ATTR, key);
            let expected = &example(EVENT_ATTR, key);
            match key {
                // aggregate = "Account"
                AGGREGATE => attrs.aggregate.set(cx, syntax, meta, |meta| {
                    type_name(cx, name_value(cx, meta, expected)?, syntax)
                }),
                // name = "AccountOpened"
                NAME => attrs.name.set(cx, syntax, meta, |meta| {
                    type_name(cx, name_value(cx, meta, expected)?, syntax)
                }),
                // version = 2
                VERSION => attrs.version.set(cx, syntax, meta, |meta| {
                    let value = name_value(cx, meta, expected)?;
                    attrs.version_span = Some(spanned(value));
                    positive_u32(cx, value, syntax)
                }),
                // upcast(1 => json(v1_to_v2), 2 => DepositedV2)
                UPCAST => attrs.upcast.set(cx, syntax, meta, |meta| {
                    attrs.upcast_span = Some(spanned(meta));
                    steps(cx, meta, expected, true)
                }),
                // crate = "path::to::eventsourcing_kit"
                CRATE => attrs.krate.set(cx, syntax, meta, |meta| {
                    crate_path(cx, name_value(cx, meta, expected)?, syntax)
                }),
                // aliases("MoneyDeposited")
                _ => attrs
                    .aliases
                    .set(cx, syntax, meta, |meta| alias_list(cx, meta, expected)),
            }
        });
        attrs
    }
}

/// The keys of every `#[aggregate(...)]` on a struct.
pub struct AggregateAttrs<'a> {
    /// The first `#[aggregate(...)]`, where a missing key is reported.
    pub attr: Option<&'a Attribute>,
    pub name: Setting<LitStr>,
    pub schema_version: Setting<u32>,
    pub events: Setting<Vec<Path>>,
    pub migrate: Setting<Vec<Step>>,
    /// The path the library is reached through, when it is not `::eventsourcing_kit`.
    pub krate: Setting<Path>,
}

impl<'a> AggregateAttrs<'a> {
    pub fn from_attrs(cx: &Ctxt, all: &'a [Attribute]) -> Self {
        let mut attrs = AggregateAttrs {
            attr: None,
            name: Setting::none(),
            schema_version: Setting::none(),
            events: Setting::none(),
            migrate: Setting::none(),
            krate: Setting::none(),
        };
        for attr in all.iter().filter(|attr| attr.path().is_ident(AGGREGATE_ATTR)) {
            attrs.attr.get_or_insert(attr);
            let Meta::List(list) = &attr.meta else {
                cx.error_spanned_by(attr, "expected #[aggregate(name = \"...\", events(...))]");
                // That says what is missing; no need to say it again key by key.
                attrs.name.given = true;
                attrs.events.given = true;
                continue;
            };
            let keys = &[NAME, SCHEMA_VERSION, EVENTS, MIGRATE, CRATE];
            for_each_key(cx, AGGREGATE_ATTR, keys, list.tokens.clone(), |key, meta| {
                let syntax = &syntax(AGGREGATE_ATTR, key);
                let expected = &example(AGGREGATE_ATTR, key);
                match key {
                    // name = "Account"
                    NAME => attrs.name.set(cx, syntax, meta, |meta| {
                        type_name(cx, name_value(cx, meta, expected)?, syntax)
                    }),
                    // schema_version = 2
                    SCHEMA_VERSION => attrs.schema_version.set(cx, syntax, meta, |meta| {
                        positive_u32(cx, name_value(cx, meta, expected)?, syntax)
                    }),
                    // migrate(1 => account_v1_to_v2)
                    MIGRATE => attrs
                        .migrate
                        .set(cx, syntax, meta, |meta| steps(cx, meta, expected, false)),
                    // crate = "path::to::eventsourcing_kit"
                    CRATE => attrs.krate.set(cx, syntax, meta, |meta| {
                        crate_path(cx, name_value(cx, meta, expected)?, syntax)
                    }),
                    // events(AccountOpened, path::to::MoneyDeposited)
                    _ => attrs
                        .events
                        .set(cx, syntax, meta, |meta| event_list(cx, meta, expected)),
                }
            });
        }
        attrs
    }
}

/// How a key is referred to in messages: `#[event(version = ...)]`.
fn syntax(attr: &str, key: &str) -> String {
    match key {
        EVENTS | UPCAST | ALIASES | MIGRATE => format!("#[{attr}({key}(...))]"),
        _ => format!("#[{attr}({key} = ...)]"),
    }
}

/// A key as it should be written: `#[event(version = N)]`.
fn example(attr: &str, key: &str) -> String {
    match key {
        VERSION | SCHEMA_VERSION => format!("#[{attr}({key} = N)]"),
        EVENTS => format!("#[{attr}({key}(Event, ...))]"),
        UPCAST => format!("#[{attr}({key}(1 => json(function), 2 => OldStruct, ...))]"),
        ALIASES => format!("#[{attr}({key}(\"OldName\", ...))]"),
        MIGRATE => format!("#[{attr}({key}(1 => function, ...))]"),
        _ => format!("#[{attr}({key} = \"...\")]"),
    }
}

/// Calls `on_key` with each `key = value` item of an attribute, split at top-level commas
/// and parsed one by one. An unknown key is reported; so is an item that does not parse,
/// which `on_key` then gets without its `Meta` if it starts with a known key.
fn for_each_key(
    cx: &Ctxt,
    attr: &str,
    keys: &[&'static str],
    tokens: TokenStream,
    mut on_key: impl FnMut(&'static str, Option<&Meta>),
) {
    for item in split_commas(tokens) {
        let parsed = syn::parse2::<Meta>(item.clone());
        let first = match &parsed {
            Ok(meta) => meta.path().get_ident().cloned(),
            Err(_) => match item.clone().into_iter().next() {
                Some(TokenTree::Ident(ident)) => Some(ident),
                _ => None,
            },
        };
        let key = first
            .as_ref()
            .and_then(|ident| keys.iter().find(|key| ident == *key));
        match (key, parsed) {
            (Some(key), Ok(meta)) => on_key(key, Some(&meta)),
            (Some(key), Err(_)) => {
                cx.error_spanned_by(&item, format!("expected {}", example(attr, key)));
                on_key(key, None);
            }
            (None, _) => unknown_key(cx, &item, first.as_ref(), attr, keys),
        }
    }
}

fn unknown_key(cx: &Ctxt, item: &TokenStream, first: Option<&Ident>, attr: &str, keys: &[&str]) {
    let expected = match keys {
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|key| format!("`{key}`")).collect();
            format!("{} or `{last}`", init.join(", "))
        }
        [] => unreachable!(),
    };
    match first {
        Some(ident) => cx.error_spanned_by(
            ident,
            format!("unknown #[{attr}(...)] key `{ident}`; expected {expected}"),
        ),
        None => cx.error_spanned_by(
            item,
            format!("expected one of the #[{attr}(...)] keys {expected}"),
        ),
    }
}

/// The value of `key = value`, or an error showing `expected`.
fn name_value<'m>(cx: &Ctxt, meta: &'m Meta, expected: &str) -> Option<&'m Expr> {
    match meta {
        Meta::NameValue(nv) => Some(ungroup(&nv.value)),
        _ => {
            cx.error_spanned_by(meta, format!("expected {expected}"));
            None
        }
    }
}

/// `$value` from a `macro_rules!` expansion arrives wrapped in an invisible group.
fn ungroup(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

/// A type name: a non-empty string without whitespace or control characters.
fn type_name(cx: &Ctxt, value: &Expr, syntax: &str) -> Option<LitStr> {
    let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(lit), ..
    }) = value
    else {
        cx.error_spanned_by(value, format!("{syntax} must be a string literal"));
        return None;
    };
    let name = lit.value();
    if name.is_empty() {
        cx.error_spanned_by(lit, format!("{syntax} must not be empty"));
        return None;
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.error_spanned_by(
            lit,
            format!("{syntax} must not contain whitespace or control characters"),
        );
        return None;
    }
    if name.starts_with('$') {
        cx.error_spanned_by(
            lit,
            format!("{syntax} must not start with `$`: those names belong to the library's system events"),
        );
        return None;
    }
    Some(LitStr::new(&name, lit.span()))
}

/// The path of the library: a string literal holding a path such as `::eventsourcing_kit` or
/// `crate::reexport`, its tokens spanned at the literal.
fn crate_path(cx: &Ctxt, value: &Expr, syntax: &str) -> Option<Path> {
    let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(lit), ..
    }) = value
    else {
        cx.error_spanned_by(value, format!("{syntax} must be a string literal"));
        return None;
    };
    match lit.parse_with(Path::parse_mod_style) {
        Ok(path) => Some(path),
        Err(_) => {
            cx.error_spanned_by(
                lit,
                format!(
                    "{syntax} must be a path to the eventsourcing_kit crate, such as \"::eventsourcing_kit\""
                ),
            );
            None
        }
    }
}

/// A version number: an integer from 1 to `u32::MAX`.
fn positive_u32(cx: &Ctxt, value: &Expr, syntax: &str) -> Option<u32> {
    let int = match value {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(int), ..
        }) if !int.base10_digits().starts_with('-') => int,
        _ => {
            cx.error_spanned_by(value, format!("{syntax} must be a positive integer"));
            return None;
        }
    };
    match int.base10_parse::<u32>() {
        Ok(0) => {
            cx.error_spanned_by(int, format!("{syntax} must be a positive integer, not 0"));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            cx.error_spanned_by(int, format!("{syntax} must be at most {}", u32::MAX));
            None
        }
    }
}

/// The paths of `events(...)`, each parsed on its own.
fn event_list(cx: &Ctxt, meta: &Meta, expected: &str) -> Option<Vec<Path>> {
    let Meta::List(list) = meta else {
        cx.error_spanned_by(meta, format!("expected {expected}"));
        return None;
    };
    let mut paths = Vec::new();
    for item in split_commas(list.tokens.clone()) {
        match Path::parse_mod_style.parse2(item.clone()) {
            Ok(path) => paths.push(path),
            Err(_) => cx.error_spanned_by(item, "expected the path of an #[event] struct"),
        }
    }
    if paths.is_empty() && list.tokens.is_empty() {
        cx.error_spanned_by(meta, "#[aggregate(events(...))] lists no events");
    }
    Some(paths)
}

/// The steps of `upcast(...)` (`typed` allowed) or `migrate(...)`, each parsed on its own.
fn steps(cx: &Ctxt, meta: &Meta, expected: &str, typed: bool) -> Option<Vec<Step>> {
    let Meta::List(list) = meta else {
        cx.error_spanned_by(meta, format!("expected {expected}"));
        return None;
    };
    let mut steps = Vec::new();
    let mut malformed = false;
    for item in split_commas(list.tokens.clone()) {
        malformed |= step.parse2(item.clone()).is_err();
        match step.parse2(item.clone()) {
            // A migration is always a function of the JSON: `json(...)` may be left out.
            Ok(Step {
                from,
                from_lit,
                how: StepKind::Typed(path) | StepKind::Json(path),
            }) if !typed => steps.push(Step {
                from,
                from_lit,
                how: StepKind::Json(path),
            }),
            Ok(step) => steps.push(step),
            Err(_) if typed => cx.error_spanned_by(
                item,
                "expected `N => json(function)` or `N => OldStruct`: how a stored event of version N becomes version N + 1",
            ),
            Err(_) => cx.error_spanned_by(
                item,
                "expected `N => function`: how a snapshot state of schema version N becomes schema version N + 1",
            ),
        }
    }
    if steps.is_empty() && list.tokens.is_empty() {
        cx.error_spanned_by(meta, format!("{expected} lists no steps"));
    }
    // A step that did not parse is reported: the chain is not checked without it.
    (!malformed).then_some(steps)
}

/// `N => json(path)` or `N => Path`.
fn step(input: syn::parse::ParseStream) -> syn::Result<Step> {
    let from_lit: syn::LitInt = input.parse()?;
    let from = from_lit.base10_parse::<u32>()?;
    input.parse::<syn::Token![=>]>()?;
    let path = Path::parse_mod_style(input)?;
    let how = if path.is_ident("json") && input.peek(syn::token::Paren) {
        let inner;
        syn::parenthesized!(inner in input);
        let function = Path::parse_mod_style(&inner)?;
        if !inner.is_empty() {
            return Err(inner.error("expected the path of a function"));
        }
        StepKind::Json(function)
    } else {
        StepKind::Typed(path)
    };
    if !input.is_empty() {
        return Err(input.error("expected `,`"));
    }
    Ok(Step { from, from_lit, how })
}

/// The names of `aliases(...)`, each checked as a type name.
fn alias_list(cx: &Ctxt, meta: &Meta, expected: &str) -> Option<Vec<LitStr>> {
    let Meta::List(list) = meta else {
        cx.error_spanned_by(meta, format!("expected {expected}"));
        return None;
    };
    let syntax = syntax(EVENT_ATTR, ALIASES);
    let mut names = Vec::new();
    for item in split_commas(list.tokens.clone()) {
        match syn::parse2::<Expr>(item.clone()) {
            Ok(expr) => names.extend(type_name(cx, ungroup(&expr), &syntax)),
            Err(_) => cx.error_spanned_by(item, format!("expected {expected}")),
        }
    }
    Some(names)
}

/// The span of some tokens, for errors reported later.
fn spanned(tokens: &impl quote::ToTokens) -> Span {
    syn::spanned::Spanned::span(&tokens.to_token_stream())
}

/// Top-level comma-separated items of a token stream.
fn split_commas(tokens: TokenStream) -> Vec<TokenStream> {
    let mut items = vec![TokenStream::new()];
    for tt in tokens {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => items.push(TokenStream::new()),
            _ => items.last_mut().unwrap().extend([tt]),
        }
    }
    items.retain(|item| !item.is_empty());
    items
}

/// Whether the struct already derives a trait, by the last segment of the derive's path.
pub fn derives(attrs: &[Attribute], name: &str) -> bool {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("derive"))
        .filter_map(|attr| {
            attr.parse_args_with(syn::punctuated::Punctuated::<Path, syn::Token![,]>::parse_terminated)
                .ok()
        })
        .flatten()
        .any(|path| path.segments.last().is_some_and(|last| last.ident == name))
}

/// Whether a `#[serde(crate = "...")]` is already there.
pub fn has_serde_crate(attrs: &[Attribute]) -> bool {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("serde"))
        .any(|attr| match &attr.meta {
            Meta::List(list) => list
                .tokens
                .clone()
                .into_iter()
                .any(|tt| matches!(tt, TokenTree::Ident(ident) if ident == "crate")),
            _ => false,
        })
}
