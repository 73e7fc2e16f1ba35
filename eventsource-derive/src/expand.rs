//! Code generation.
//!
//! A mistake does not stop generation: the errors are emitted beside code generated from
//! whatever was valid (an invalid name falls back to the struct's, a repeated event is
//! kept once), so the mistake is reported once and not again by every use of the types.
//! Only what cannot be generated sensibly is left out.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, ToTokens};
use syn::ext::IdentExt;
use syn::{DeriveInput, Ident, LitStr, Path, WherePredicate};

use crate::ast::{Aggregate, Event, ListedEvent, Shape};
use crate::attr;
use crate::ctxt::Ctxt;
use crate::valid;

/// The path of the library's support for generated code: `<crate>::__private`, where the
/// crate is `::eventsourcing_kit` unless `crate = "..."` gives another path.
fn private(krate: Option<&Path>) -> TokenStream {
    match krate {
        Some(krate) => quote!(#krate::__private),
        None => quote!(::eventsourcing_kit::__private),
    }
}

/// `#[serde(crate = "...")]` for the serde derives of an event: serde as the library
/// re-exports it.
fn serde_crate(krate: Option<&Path>) -> TokenStream {
    let path = match krate {
        Some(krate) => LitStr::new(
            &format!("{}::__private::serde", valid::show(krate)),
            ends(krate).0,
        ),
        None => LitStr::new("::eventsourcing_kit::__private::serde", Span::call_site()),
    };
    quote!(#[serde(crate = #path)])
}

pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    let original: DeriveInput = match syn::parse2(item.clone()) {
        Ok(original) => original,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[event] applies to a struct with named fields",
            )
            .into_compile_error();
            return quote!(#error #item);
        }
    };
    let cx = Ctxt::new();
    let event = Event::from_ast(&cx, args, &original);
    valid::check_event(&cx, &event);
    let errors = cx.check().err();
    expand_event(&event, errors)
}

pub fn derive_aggregate(original: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let aggregate = Aggregate::from_ast(&cx, original);
    valid::check_aggregate(&cx, &aggregate);
    let errors = cx.check().err();
    expand_aggregate(&aggregate, errors)
}

fn expand_event(event: &Event, errors: Option<syn::Error>) -> TokenStream {
    let krate = event.attrs.krate.value.as_ref();
    let p = &private(krate);
    let original = &crate::personal::without_attrs(event.original);
    let ident = &original.ident;
    let compile_errors = errors.as_ref().map(syn::Error::to_compile_error);

    // A union cannot derive the traits an event needs, nor can a generic struct be one
    // registered type: leave the item as written.
    let implementable = !matches!(event.shape, Shape::Union(_)) && original.generics.params.is_empty();
    if !implementable {
        return quote!(#compile_errors #original);
    }

    let attrs = &original.attrs;
    let mut derives = Vec::new();
    let mut derives_serde = false;
    for (name, path, serde) in [
        ("Clone", quote!(::core::clone::Clone), false),
        ("Debug", quote!(::core::fmt::Debug), false),
        ("Serialize", quote!(#p::serde::Serialize), true),
        ("Deserialize", quote!(#p::serde::Deserialize), true),
    ] {
        if !attr::derives(attrs, name) {
            derives.push(path);
            derives_serde |= serde;
        }
    }
    let derive = (!derives.is_empty()).then(|| quote!(#[derive(#(#derives),*)]));
    let serde_crate = (derives_serde && !attr::has_serde_crate(attrs)).then(|| serde_crate(krate));

    let ident_name = ident.unraw().to_string();
    let event_type = match &event.attrs.name.value {
        Some(name) => name.to_token_stream(),
        None => ident_name.to_token_stream(),
    };
    let aggregate_type = match &event.attrs.aggregate.value {
        Some(aggregate) => aggregate.to_token_stream(),
        None => quote!(#p::ANY_AGGREGATE),
    };
    let version = event.attrs.version.value.unwrap_or(1);
    let aliases = event.attrs.aliases.value.as_deref().unwrap_or_default();
    // An event that did not compile is not registered: its name may be a stand-in.
    let registration = errors.is_none().then(|| {
        quote! {
            #p::inventory::submit! {
                #p::EventRegistration {
                    event_type: #event_type,
                    aliases: &[#(#aliases),*],
                    aggregate_type: #aggregate_type,
                    event_version: #version,
                    rust_type: ::core::concat!(::core::module_path!(), "::", #ident_name),
                    shape: #p::shape_of::<#ident>,
                    personal: <#ident as #p::Event>::PERSONAL,
                }
            }
        }
    });
    // With a mistake in the chain, events decode at their own version only.
    let decode_version = errors
        .is_none()
        .then(|| {
            upcast_chain(
                p,
                ident,
                version,
                event.attrs.upcast.value.as_deref().unwrap_or_default(),
            )
        })
        .flatten();

    let personal_keys = event.personal.iter().map(|f| &f.key);
    let subject_keys = event.personal.iter().map(|f| &f.subject_key);
    // Only for an event that compiled: a mistake is reported alone.
    let require_personal_data =
        (!event.personal.is_empty() && errors.is_none()).then(|| quote!(#p::require_personal_data!();));

    quote! {
        #compile_errors
        #derive
        #serde_crate
        #original
        const _: () = {
            #require_personal_data
            #[automatically_derived]
            impl #p::Event for #ident {
                const EVENT_TYPE: &'static str = #event_type;
                const AGGREGATE_TYPE: &'static str = #aggregate_type;
                const EVENT_VERSION: u32 = #version;
                const ALIASES: &'static [&'static str] = &[#(#aliases),*];
                const PERSONAL: &'static [#p::PersonalField] = &[#(#p::PersonalField::new(#personal_keys, #subject_keys)),*];
                #decode_version
            }
            #registration
        };
    }
}

/// `Event::decode_version` of an event with upcasts: one function per stored version, each
/// bringing its value one version up and handing it to the next, the current version last.
///
/// A version upcast on JSON is held as a `serde_json::Value`, one upcast as a type as that
/// type, the current version as the event itself.
fn upcast_chain(p: &TokenStream, ident: &Ident, version: u32, steps: &[attr::Step]) -> Option<TokenStream> {
    if steps.is_empty() {
        return None;
    }
    let step = |k: u32| steps.iter().find(|step| step.from == k);
    let held = |k: u32| match step(k).map(|step| &step.how) {
        Some(attr::StepKind::Typed(old)) => quote!(#old),
        _ if k == version => quote!(#ident),
        _ => quote!(#p::serde_json::Value),
    };
    let from = |k: u32| format_ident!("__from_v{}", k);
    let functions = (1..=version).map(|k| {
        let name = from(k);
        let this = held(k);
        let body = match step(k).map(|step| &step.how) {
            None => quote!(::core::result::Result::Ok(__value)),
            Some(how) => {
                let next = from(k + 1);
                let next_held = held(k + 1);
                // Spanned at the user's function or type, where a mismatch is reported.
                let upcast = match how {
                    attr::StepKind::Json(function) => {
                        let function = without_self(function, ident);
                        let (_, at) = ends(&function);
                        let call = respan(quote!(#p::upcast_json::<#ident, _, _, #next_held>), at);
                        let args = parens_at(quote!(#k, #function, __value), at);
                        quote!(#call #args)
                    }
                    attr::StepKind::Typed(old) => {
                        let (_, at) = ends(old);
                        let call = respan(quote!(#p::upcast_typed::<#ident, #old, #next_held>), at);
                        let args = parens_at(quote!(#k, __value), at);
                        quote!(#call #args)
                    }
                };
                quote!(#next(#upcast?))
            }
        };
        quote! {
            fn #name(__value: #this) -> #p::Result<#ident> {
                #body
            }
        }
    });
    let arms = (1..=version).map(|k| {
        let name = from(k);
        let this = held(k);
        quote!(#k => #name(#p::decode_stored::<#ident, #this>(#k, __payload)?),)
    });
    Some(quote! {
        fn decode_version(__version: u32, __payload: &str) -> #p::Result<Self> {
            #(#functions)*
            match __version {
                #(#arms)*
                _ => ::core::result::Result::Err(#p::unknown_event_version::<Self>(__version)),
            }
        }
    })
}

/// `path` with a leading `Self` replaced by the event's name: the steps are nested
/// functions, where `Self` does not reach.
fn without_self(path: &Path, ident: &Ident) -> Path {
    let mut path = path.clone();
    if let Some(first) = path.segments.first_mut() {
        if first.ident == "Self" {
            first.ident = ident.clone();
        }
    }
    path
}

/// `Aggregate::migrate_snapshot` of an aggregate with migrations: each step from the
/// snapshot's schema version on, in order.
fn migration_chain(p: &TokenStream, steps: &[attr::Step], type_name: &str) -> Option<TokenStream> {
    let mut steps: Vec<_> = steps.iter().collect();
    steps.sort_by_key(|step| step.from);
    let oldest = steps.first()?.from;
    let applied = steps.iter().map(|step| {
        let k = step.from;
        let (attr::StepKind::Json(function) | attr::StepKind::Typed(function)) = &step.how;
        let (_, at) = ends(function);
        let call = respan(quote!(#p::migrate_state), at);
        let args = parens_at(quote!(#type_name, #k, #function, __state), at);
        quote! {
            if __schema_version <= #k {
                __state = #call #args?;
            }
        }
    });
    Some(quote! {
        const MIGRATES_FROM: u32 = #oldest;

        fn migrate_snapshot(__schema_version: u32, mut __state: #p::serde_json::Value) -> #p::Result<#p::serde_json::Value> {
            if !(#oldest..=<Self as #p::Aggregate>::SCHEMA_VERSION).contains(&__schema_version) {
                return ::core::result::Result::Err(#p::no_migration::<Self>(__schema_version));
            }
            #(#applied)*
            ::core::result::Result::Ok(__state)
        }
    })
}

fn expand_aggregate(aggregate: &Aggregate, errors: Option<syn::Error>) -> TokenStream {
    let p = &private(aggregate.attrs.krate.value.as_ref());
    let original = aggregate.original;
    let ident = &original.ident;
    let vis = &original.vis;
    let compile_errors = errors.as_ref().map(syn::Error::to_compile_error);
    let ident_name = ident.unraw().to_string();
    let enum_ident = format_ident!("{}Event", ident.unraw(), span = ident.span());
    let enum_name = enum_ident.to_string();
    let type_name = match &aggregate.attrs.name.value {
        Some(name) => name.value(),
        None => ident_name.clone(),
    };
    let schema_version = aggregate.attrs.schema_version.value.unwrap_or(1);

    let events = aggregate.distinct_events();
    let paths: Vec<_> = events.iter().map(|e| &e.path).collect();
    let variants: Vec<_> = events.iter().map(|e| &e.variant).collect();
    // Every impl that needs the listed types to be events says so in a where clause that
    // the compiler checks only where the impl is used. A listed type that is not an event
    // is then reported once, by the membership check below, and not by every impl.
    let bounds: Vec<WherePredicate> = events
        .iter()
        .map(|e| {
            let path = &e.path;
            let bound = around(path, quote!(for<'__eventsource>), quote!(: #p::Event));
            syn::parse_quote!(#bound)
        })
        .collect();
    let where_events = quote!(where #(#bounds,)*);
    let event_types: Vec<_> = events.iter().map(|e| event_const(p, e, "EVENT_TYPE")).collect();
    let event_versions: Vec<_> = events
        .iter()
        .map(|e| event_const(p, e, "EVENT_VERSION"))
        .collect();
    let personal_fields: Vec<_> = events.iter().map(|e| event_const(p, e, "PERSONAL")).collect();

    let enum_doc =
        format!("The events of [`{ident_name}`], one variant per event of its `#[aggregate(events(...))]`.");
    let variant_docs = variants.iter().map(|v| format!("The `{v}` event."));
    let enum_def = quote! {
        #[doc = #enum_doc]
        // Variants are named after the events, which often share the aggregate's name.
        #[allow(clippy::large_enum_variant, clippy::enum_variant_names)]
        #vis enum #enum_ident {
            #(#[doc = #variant_docs] #variants(#paths),)*
        }
    };

    let enum_impls = quote! {
        #(
            #[automatically_derived]
            impl ::core::convert::From<#paths> for #enum_ident {
                fn from(event: #paths) -> Self {
                    #enum_ident::#variants(event)
                }
            }
        )*

        #[automatically_derived]
        impl ::core::clone::Clone for #enum_ident #where_events {
            fn clone(&self) -> Self {
                match *self {
                    #(#enum_ident::#variants(ref __event) => #enum_ident::#variants(::core::clone::Clone::clone(__event)),)*
                }
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #enum_ident #where_events {
            fn fmt(&self, __f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                match *self {
                    #(#enum_ident::#variants(ref __event) => __f.debug_tuple(::core::stringify!(#variants)).field(__event).finish(),)*
                }
            }
        }

        #[automatically_derived]
        impl #p::serde::Serialize for #enum_ident #where_events {
            fn serialize<__S>(&self, __serializer: __S) -> ::core::result::Result<__S::Ok, __S::Error>
            where
                __S: #p::serde::Serializer,
            {
                match *self {
                    #(#enum_ident::#variants(ref __event) => #p::serialize_event(__serializer, #enum_name, __event),)*
                }
            }
        }

        #[automatically_derived]
        impl<'de> #p::serde::Deserialize<'de> for #enum_ident #where_events {
            fn deserialize<__D>(__deserializer: __D) -> ::core::result::Result<Self, __D::Error>
            where
                __D: #p::serde::Deserializer<'de>,
            {
                #p::deserialize_event(__deserializer)
            }
        }

        #[automatically_derived]
        impl #p::EventEnum for #enum_ident #where_events {
            const NAME: &'static str = #enum_name;
            const EVENT_TYPES: &'static [&'static str] = &[#(#event_types),*];

            fn deserialize_data<'de, __D>(__event_type: &str, __data: __D) -> ::core::result::Result<Self, __D::Error>
            where
                __D: #p::serde::Deserializer<'de>,
            {
                #(
                    if #p::is_named::<#paths>(__event_type) {
                        return <#paths as #p::serde::Deserialize>::deserialize(__data).map(#enum_ident::#variants);
                    }
                )*
                ::core::result::Result::Err(<__D::Error as #p::serde::de::Error>::unknown_variant(
                    __event_type,
                    <Self as #p::EventEnum>::EVENT_TYPES,
                ))
            }
        }

        #[automatically_derived]
        impl #p::AggregateEvent for #enum_ident #where_events {
            fn event_type(&self) -> &'static str {
                match *self {
                    #(#enum_ident::#variants(_) => #event_types,)*
                }
            }

            fn event_version(&self) -> u32 {
                match *self {
                    #(#enum_ident::#variants(_) => #event_versions,)*
                }
            }

            fn personal_fields(&self) -> &'static [#p::PersonalField] {
                match *self {
                    #(#enum_ident::#variants(_) => #personal_fields,)*
                }
            }

            fn to_json(&self) -> #p::Result<::std::string::String> {
                match *self {
                    #(#enum_ident::#variants(ref __event) => #p::encode_event(__event),)*
                }
            }

            fn decode(__event_type: &str, __event_version: u32, __payload: &str) -> #p::Result<Self> {
                #(
                    if #p::is_named::<#paths>(__event_type) {
                        return <#paths as #p::Event>::decode_version(__event_version, __payload).map(#enum_ident::#variants);
                    }
                )*
                ::core::result::Result::Err(#p::unknown_event_type(__event_type, #type_name))
            }

            fn from_json(__event_type: &str, __payload: &str) -> #p::Result<Self> {
                #(
                    if #p::is_named::<#paths>(__event_type) {
                        return #p::decode_event::<#paths>(__payload).map(#enum_ident::#variants);
                    }
                )*
                ::core::result::Result::Err(#p::unknown_event_type(__event_type, #type_name))
            }
        }
    };

    let migrations = errors
        .is_none()
        .then(|| {
            migration_chain(
                p,
                aggregate.attrs.migrate.value.as_deref().unwrap_or_default(),
                &type_name,
            )
        })
        .flatten();
    // Without a struct there is no state to apply events to: the shape error says so.
    let aggregate_impl = aggregate.shape.is_struct().then(|| {
        let (impl_generics, ty_generics, where_clause) = original.generics.split_for_impl();
        let mut where_clause = where_clause.cloned().unwrap_or_else(|| syn::parse_quote!(where));
        where_clause.predicates.extend(bounds.iter().cloned());
        let apply = events.iter().map(|e| {
            let path = &e.path;
            // A missing impl is reported at the `Self` of this path: put it at the event's name.
            let (_, name) = ends(path);
            let prefix = respan(quote!(<Self as #p::Apply<), name);
            let suffix = respan(quote!(>>::apply), name);
            quote!(#prefix #path #suffix)
        });
        quote! {
            #[automatically_derived]
            impl #impl_generics #p::Aggregate for #ident #ty_generics #where_clause {
                const TYPE_NAME: &'static str = #type_name;
                const SCHEMA_VERSION: u32 = #schema_version;
                type Event = #enum_ident;
                #migrations

                fn apply_event(&mut self, __event: &Self::Event) {
                    match *__event {
                        #(#enum_ident::#variants(ref __event) => #apply(self, __event),)*
                    }
                }
            }
        }
    });

    let migrates_from = aggregate
        .attrs
        .migrate
        .value
        .iter()
        .flatten()
        .map(|step| step.from)
        .min()
        .unwrap_or(schema_version);
    // A generic state has one shape per instance: none to lock.
    // A generic state has one repository per type argument: none to register by name.
    let (shape, operations) = if original.generics.params.is_empty() {
        (
            quote!(#p::shape_of::<#ident>),
            Some(quote! {
                #p::inventory::submit! {
                    #p::OperationsRegistration {
                        name: #type_name,
                        operations: &#p::OperationsOf::<#ident>::NEW,
                    }
                }
            }),
        )
    } else {
        (quote!(#p::generic_shape), None)
    };
    let registration = (errors.is_none() && aggregate_impl.is_some()).then(|| {
        quote! {
            #p::inventory::submit! {
                #p::AggregateRegistration {
                    name: #type_name,
                    schema_version: #schema_version,
                    migrates_from: #migrates_from,
                    event_types: &[#(#event_types),*],
                    rust_type: ::core::concat!(::core::module_path!(), "::", #ident_name),
                    shape: #shape,
                }
            }
            #operations
        }
    });

    let valid_name = aggregate.attrs.name.value.as_ref().map(|_| type_name.as_str());
    let membership = events.iter().map(|e| membership_check(p, e, valid_name));
    let clashes = events.iter().enumerate().flat_map(|(i, later)| {
        events[..i]
            .iter()
            .map(move |earlier| name_clash_check(p, earlier, later))
    });

    quote! {
        #compile_errors
        #enum_def
        const _: () = {
            #enum_impls
            #aggregate_impl
            #registration
            #(#membership)*
            #(#clashes)*
        };
    }
}

/// A compile-time check that two listed events do not share an event type name or alias (the
/// stored key of an event is its aggregate type and its event type), reported at the later one.
fn name_clash_check(p: &TokenStream, earlier: &ListedEvent, later: &ListedEvent) -> TokenStream {
    let first = event_const(p, earlier, "EVENT_TYPE");
    let first_aliases = event_const(p, earlier, "ALIASES");
    let second = event_const(p, later, "EVENT_TYPE");
    let second_aliases = event_const(p, later, "ALIASES");
    let message = format!(
        "events `{}` and `{}` share an event type name or alias; rename one with #[event(name = \"...\")]",
        valid::show(&earlier.path),
        valid::show(&later.path)
    );
    let (start, end) = ends(&later.path);
    let panic = respan(quote!(::core::panic!), start);
    let args = respan(quote!(("{}", #message)), end);
    quote! {
        const _: () = if #p::share_a_name(#first, #first_aliases, #second, #second_aliases) {
            #panic #args
        };
    }
}

/// `<Path as Event>::NAME`, spanned over the listed path.
fn event_const(p: &TokenStream, event: &ListedEvent, name: &str) -> TokenStream {
    let path = &event.path;
    let name = Ident::new(name, Span::call_site());
    around(path, quote!(<), quote!(as #p::Event>::#name))
}

/// A compile-time check that a listed event belongs to this aggregate, reported at its
/// name in the list. It is also where a listed type that is not an event is reported;
/// without a valid aggregate name, that is all it checks.
fn membership_check(p: &TokenStream, event: &ListedEvent, type_name: Option<&str>) -> TokenStream {
    let path = &event.path;
    let aggregate_type = event_const(p, event, "AGGREGATE_TYPE");
    let Some(type_name) = type_name else {
        return quote!(const _: &str = #aggregate_type;);
    };
    let message = format!(
        "event `{}` belongs to another aggregate, not to `{type_name}`",
        valid::show(path)
    );
    // Through "{}", so that braces in the name are not read as a format string.
    let (first, last) = ends(path);
    let panic = respan(quote!(::core::panic!), first);
    let args = respan(quote!(("{}", #message)), last);
    quote! {
        const _: () = if !#p::belongs_to(#aggregate_type, #type_name) {
            #panic #args
        };
    }
}

/// `path` between `prefix`, spanned at its first token, and `suffix`, spanned at its last,
/// so that the compiler underlines the whole path when it reports an error about them.
fn around(path: &Path, prefix: TokenStream, suffix: TokenStream) -> TokenStream {
    let (first, last) = ends(path);
    let prefix = respan(prefix, first);
    let suffix = respan(suffix, last);
    quote!(#prefix #path #suffix)
}

/// The spans of the first and the last token of a path.
fn ends(path: &Path) -> (Span, Span) {
    let first = match &path.leading_colon {
        Some(colon) => colon.spans[0],
        None => path.segments[0].ident.span(),
    };
    (first, path.segments.last().unwrap().ident.span())
}

/// `(tokens)`, the parentheses spanned at `span` (where a call's errors point) and the tokens
/// as they are, so that the macro's own locals keep its hygiene.
fn parens_at(tokens: TokenStream, span: Span) -> TokenStream {
    let mut group = Group::new(proc_macro2::Delimiter::Parenthesis, tokens);
    group.set_span(span);
    TokenTree::Group(group).into()
}

/// `tokens`, every one spanned at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                token = Group::new(group.delimiter(), respan(group.stream(), span)).into();
            }
            token.set_span(span);
            token
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn derive_aggregate(tokens: proc_macro2::TokenStream) -> String {
        super::derive_aggregate(&syn::parse2(tokens).unwrap()).to_string()
    }

    /// Every path to the library goes through the given crate, none through `::eventsourcing_kit`.
    fn assert_through(generated: &str, krate: &str) {
        assert!(!generated.contains("compile_error"), "{generated}");
        assert!(!generated.contains(":: eventsourcing_kit"), "{generated}");
        assert!(
            generated.contains(&format!("{krate} :: __private ::")),
            "{generated}"
        );
    }

    #[test]
    fn an_event_reaches_the_library_through_its_crate_path() {
        let generated = super::event(
            quote!(aggregate = "Account", version = 3, upcast(1 => json(v1_to_v2), 2 => OldV2), crate = "renamed"),
            quote!(pub struct Deposited { pub amount: f64 }),
        )
        .to_string();
        assert_through(&generated, "renamed");
        assert!(
            generated.contains(r#"serde (crate = "renamed::__private::serde")"#),
            "{generated}"
        );
    }

    #[test]
    fn an_aggregate_reaches_the_library_through_its_crate_path() {
        let generated = derive_aggregate(quote! {
            #[aggregate(name = "Account", schema_version = 2, migrate(1 => v1_to_v2))]
            #[aggregate(events(Opened, Deposited), crate = "crate::reexport")]
            pub struct Account { pub balance: f64 }
        });
        assert_through(&generated, "crate :: reexport");
    }

    #[test]
    fn without_a_crate_path_the_library_is_eventsource() {
        let generated = derive_aggregate(quote! {
            #[aggregate(name = "Account", events(Deposited))]
            pub struct Account { pub balance: f64 }
        });
        assert!(
            generated.contains(":: eventsourcing_kit :: __private ::"),
            "{generated}"
        );
        let generated = super::event(
            quote!(aggregate = "Account"),
            quote!(
                pub struct Deposited {}
            ),
        )
        .to_string();
        assert!(
            generated.contains(r#"serde (crate = "::eventsourcing_kit::__private::serde")"#),
            "{generated}"
        );
    }
}
