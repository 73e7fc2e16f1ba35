//! `#[personal(subject = field)]` on the fields of an `#[event]` struct: the model, its
//! checks, and the struct without the attribute (which is the macro's own, not rustc's).

use syn::ext::IdentExt;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, LitStr, Meta};

use crate::ctxt::Ctxt;

/// The field attribute.
pub const PERSONAL_ATTR: &str = "personal";

/// A personal field: its name in JSON, and the JSON name of the field naming its subject.
pub struct PersonalField {
    pub key: String,
    pub subject_key: String,
}

/// The personal fields of the struct, checked: each is a `Personal<...>` with one
/// `#[personal(subject = field)]`, its subject another field of the struct that is not
/// personal, and neither is renamed by serde beyond a plain `rename`.
pub fn fields(cx: &Ctxt, input: &DeriveInput) -> Vec<PersonalField> {
    let Data::Struct(data) = &input.data else {
        return Vec::new();
    };
    let named = match &data.fields {
        Fields::Named(named) => named,
        fields => {
            for field in fields.iter() {
                for attr in field.attrs.iter().filter(|a| a.path().is_ident(PERSONAL_ATTR)) {
                    cx.error_spanned_by(attr, "#[personal] marks a named field of an #[event] struct");
                }
            }
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for field in &named.named {
        let mut attrs = field.attrs.iter().filter(|a| a.path().is_ident(PERSONAL_ATTR));
        let Some(attr) = attrs.next() else {
            if is_personal_type(&field.ty) {
                cx.error_spanned_by(
                    &field.ty,
                    format!(
                        "field `{}` holds a `Personal<...>` value: mark it #[personal(subject = field)] \
                         with the field that names its data subject, so that it is stored sealed",
                        field.ident.as_ref().expect("a named field").unraw()
                    ),
                );
            }
            continue;
        };
        for again in attrs {
            cx.error_spanned_by(again, "duplicate #[personal] attribute");
        }
        let Some(subject) = subject(cx, attr) else {
            continue;
        };
        let name = field.ident.as_ref().expect("a named field");
        if !is_personal_type(&field.ty) {
            cx.error_spanned_by(
                &field.ty,
                format!(
                    "personal field `{}` must be a `Personal<...>` (eventsourcing_kit::personal::Personal), \
                     which reads as forgotten once its subject is",
                    name.unraw()
                ),
            );
        }
        let Some(target) = named.named.iter().find(|f| f.ident.as_ref() == Some(&subject)) else {
            cx.error_spanned_by(
                &subject,
                format!(
                    "the struct has no field `{}` to name the subject",
                    subject.unraw()
                ),
            );
            continue;
        };
        if target.ident.as_ref() == Some(name) {
            cx.error_spanned_by(&subject, "a personal field cannot name itself as its subject");
            continue;
        }
        if target.attrs.iter().any(|a| a.path().is_ident(PERSONAL_ATTR)) {
            cx.error_spanned_by(
                &subject,
                format!(
                    "field `{}` is personal itself: the subject's field stays in the clear, since it names the key",
                    subject.unraw()
                ),
            );
            continue;
        }
        let (Some(key), Some(subject_key)) = (json_name(cx, field), json_name(cx, target)) else {
            continue;
        };
        found.push(PersonalField { key, subject_key });
    }
    if !found.is_empty() {
        if let Some(attr) = serde_keys(&input.attrs)
            .find(|(key, _)| key == "rename_all")
            .map(|(_, a)| a)
        {
            cx.error_spanned_by(
                attr,
                "an #[event] with personal fields names its fields one by one (`#[serde(rename = \"...\")]`), not with `rename_all`",
            );
        }
    }
    found
}

/// The subject of `#[personal(subject = field)]` (the field as an identifier or a string).
fn subject(cx: &Ctxt, attr: &Attribute) -> Option<Ident> {
    const USAGE: &str = "expected #[personal(subject = field)], the field that names the data subject";
    let Meta::List(list) = &attr.meta else {
        cx.error_spanned_by(attr, USAGE);
        return None;
    };
    let mut subject = None;
    let parsed = list.parse_nested_meta(|meta| {
        if !meta.path.is_ident("subject") {
            return Err(meta.error(USAGE));
        }
        let value = meta.value()?;
        let ident = if value.peek(LitStr) {
            let lit: LitStr = value.parse()?;
            lit.parse::<Ident>()?
        } else {
            Ident::parse_any(value)?
        };
        if subject.replace(ident).is_some() {
            return Err(meta.error("duplicate `subject`"));
        }
        Ok(())
    });
    match parsed {
        Err(e) => {
            cx.syn_error(e);
            None
        }
        Ok(()) if subject.is_none() => {
            cx.error_spanned_by(attr, USAGE);
            None
        }
        Ok(()) => subject,
    }
}

fn is_personal_type(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Personal" && !last.arguments.is_empty()),
        syn::Type::Group(group) => is_personal_type(&group.elem),
        _ => false,
    }
}

/// The name of the field in JSON: its own, or a plain `#[serde(rename = "...")]`. A field
/// flattened, skipped or renamed differently each way has no one name, and is refused.
fn json_name(cx: &Ctxt, field: &syn::Field) -> Option<String> {
    let mut name = field.ident.as_ref().expect("a named field").unraw().to_string();
    for (key, attr) in serde_keys(&field.attrs) {
        match key.as_str() {
            "rename" => match rename(attr) {
                Some(renamed) => name = renamed,
                None => {
                    cx.error_spanned_by(attr, "a personal field or its subject is renamed with `#[serde(rename = \"...\")]`, the same name both ways");
                    return None;
                }
            },
            "flatten" | "skip" | "skip_serializing" | "skip_deserializing" | "alias" => {
                cx.error_spanned_by(attr, format!("a personal field or its subject cannot be `#[serde({key})]`: it is found by its one name"));
                return None;
            }
            _ => {}
        }
    }
    Some(name)
}

/// The keys of the `#[serde(...)]` attributes, with the attribute each is in.
fn serde_keys(attrs: &[Attribute]) -> impl Iterator<Item = (String, &Attribute)> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("serde"))
        .flat_map(|attr| {
            let mut keys = Vec::new();
            if let Meta::List(list) = &attr.meta {
                let _ = list.parse_nested_meta(|meta| {
                    if let Some(ident) = meta.path.get_ident() {
                        keys.push(ident.to_string());
                    }
                    // Skip the value, whatever it is.
                    if meta.input.peek(syn::Token![=]) {
                        let _: syn::Expr = meta.value()?.parse()?;
                    } else if meta.input.peek(syn::token::Paren) {
                        let _ = meta.parse_nested_meta(|_| Ok(()));
                    }
                    Ok(())
                });
            }
            keys.into_iter().map(move |key| (key, attr))
        })
}

/// The name of a `#[serde(rename = "...")]` in `attr`; `None` for `rename(...)`.
fn rename(attr: &Attribute) -> Option<String> {
    let mut renamed = None;
    let _ = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("rename") && meta.input.peek(syn::Token![=]) {
            let lit: LitStr = meta.value()?.parse()?;
            renamed = Some(lit.value());
        } else if meta.input.peek(syn::Token![=]) {
            let _: syn::Expr = meta.value()?.parse()?;
        } else if meta.input.peek(syn::token::Paren) {
            let _ = meta.parse_nested_meta(|_| Ok(()));
        }
        Ok(())
    });
    renamed
}

/// The struct as written, without its `#[personal]` attributes.
pub fn without_attrs(input: &DeriveInput) -> DeriveInput {
    let mut input = input.clone();
    if let Data::Struct(data) = &mut input.data {
        for field in data.fields.iter_mut() {
            field.attrs.retain(|a| !a.path().is_ident(PERSONAL_ATTR));
        }
    }
    input
}
