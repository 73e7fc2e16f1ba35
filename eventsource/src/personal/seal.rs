//! Sealing the personal fields of event payloads before they are appended, and opening them
//! when events are read.
//!
//! A sealed field holds `{"$personal": {"subject": "...", "sealed": "..."}}`: the subject in
//! the clear (it names the key) and the value's JSON sealed with the subject's key, bound to
//! the event's id, the field's name and the subject. Opening puts the value back, or
//! `{"$forgotten": true}` for a forgotten subject, so decoding never meets a sealed field.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::keyring::Keyring;
use super::value::{is_marker, FORGOTTEN, SEALED};
use super::{KeyState, PersonalField};
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};

/// Envelopes whose personal fields are still in the clear, with each one's personal fields:
/// [`seal`](Self::seal) is the only way to the envelopes an append takes.
#[must_use = "the envelopes are appended once sealed"]
pub(crate) struct Unsealed {
    envelopes: Vec<EventEnvelope>,
    personal: Vec<&'static [PersonalField]>,
}

impl Unsealed {
    pub(crate) fn new(envelopes: Vec<EventEnvelope>, personal: Vec<&'static [PersonalField]>) -> Self {
        debug_assert_eq!(envelopes.len(), personal.len());
        Unsealed { envelopes, personal }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    /// The envelopes with their personal fields sealed by `keys`: [`Error::InvalidConfiguration`]
    /// if some event has personal fields and there is no keyring, [`Error::SubjectForgotten`]
    /// for a value of a forgotten subject, [`Error::InvalidInput`] for a subject field that
    /// names no subject. Without personal fields, the envelopes as they are.
    pub(crate) async fn seal(self, keys: Option<&Keyring>) -> Result<Vec<EventEnvelope>> {
        let Some(keys) = keys else {
            return self.without_keys();
        };
        let Unsealed {
            mut envelopes,
            personal,
        } = self;
        for (envelope, fields) in envelopes.iter_mut().zip(personal) {
            if !fields.is_empty() {
                envelope.payload = seal_payload(keys, envelope, fields).await?;
            }
        }
        Ok(envelopes)
    }

    /// The envelopes, where no event has personal fields: [`Error::InvalidConfiguration`]
    /// for the first that has, since there is no keyring to seal them with.
    pub(crate) fn without_keys(self) -> Result<Vec<EventEnvelope>> {
        if let Some((envelope, _)) = self
            .envelopes
            .iter()
            .zip(&self.personal)
            .find(|(_, f)| !f.is_empty())
        {
            return Err(Error::InvalidConfiguration(format!(
                "event {} of {} has personal fields, and this save has no keyring to seal them \
                 with: save it through a repository built from `Stores`, or one given a keyring \
                 (see eventsourcing_kit::personal)",
                envelope.event_type, envelope.aggregate_type
            )));
        }
        Ok(self.envelopes)
    }
}

async fn seal_payload(
    keys: &Keyring,
    envelope: &EventEnvelope,
    fields: &[PersonalField],
) -> Result<Arc<str>> {
    let what = || format!("event {} ({})", envelope.event_id, envelope.event_type);
    let mut map: Map<String, Value> = crate::codec::from_json(&envelope.payload, what)?;
    for field in fields {
        let Some(value) = map.get(field.field) else {
            continue;
        };
        if value.is_null() || is_marker(value, FORGOTTEN) {
            continue;
        }
        let subject = subject_of(&map, field, envelope)?;
        let key = keys
            .writing_key(&subject, &envelope.aggregate_type, envelope.aggregate_id)
            .await?;
        let plaintext = serde_json::to_vec(value).expect("a JSON value encodes");
        let sealed = super::cipher::seal(
            &key,
            &binding(envelope.event_id, field.field, &subject),
            &plaintext,
        )?;
        let mut inner = Map::new();
        inner.insert("subject".into(), Value::String(subject));
        inner.insert("sealed".into(), Value::String(sealed));
        let mut marker = Map::new();
        marker.insert(SEALED.into(), Value::Object(inner));
        map.insert(field.field.to_owned(), Value::Object(marker));
    }
    Ok(Arc::from(
        serde_json::to_string(&map).expect("a JSON object encodes"),
    ))
}

/// The subject a personal field names: the text of its subject field, a string or a number.
fn subject_of(map: &Map<String, Value>, field: &PersonalField, envelope: &EventEnvelope) -> Result<String> {
    let subject = match map.get(field.subject) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        other => {
            return Err(Error::InvalidInput(format!(
                "event {} ({}): personal field `{}` belongs to the subject in field `{}`, which is {}",
                envelope.event_id,
                envelope.event_type,
                field.field,
                field.subject,
                match other {
                    None => "missing".to_owned(),
                    Some(v) => format!("{v}, not a non-empty string or a number"),
                }
            )))
        }
    };
    Ok(subject)
}

/// What a sealed value is bound to: the event, the field, the subject.
fn binding(event_id: Uuid, field: &str, subject: &str) -> Vec<u8> {
    format!("eventsourcing-kit personal v1\0{event_id}\0{field}\0{subject}").into_bytes()
}

/// Whether a payload may hold sealed fields: a cheap look before a parse.
pub(crate) fn may_be_sealed(payload: &str) -> bool {
    payload.contains("\"$personal\"")
}

/// A sealed field of a payload: the field's name, the subject and the sealed text.
struct SealedField {
    field: String,
    subject: String,
    sealed: String,
}

/// A payload's object and its sealed fields.
type SealedPayload = (Map<String, Value>, Vec<SealedField>);

/// The payload's object and its sealed fields; `None` if it has none.
fn sealed_fields(envelope: &EventEnvelope) -> Result<Option<SealedPayload>> {
    if !may_be_sealed(&envelope.payload) {
        return Ok(None);
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&envelope.payload) else {
        return Ok(None);
    };
    let mut found = Vec::new();
    for (field, value) in &map {
        if !is_marker(value, SEALED) {
            continue;
        }
        let inner = &value[SEALED];
        let (Some(subject), Some(sealed)) = (inner["subject"].as_str(), inner["sealed"].as_str()) else {
            return Err(corrupt(
                envelope,
                field,
                "its sealed value is not an object of a subject and a sealed text",
            ));
        };
        found.push(SealedField {
            field: field.clone(),
            subject: subject.to_owned(),
            sealed: sealed.to_owned(),
        });
    }
    Ok((!found.is_empty()).then_some((map, found)))
}

fn corrupt(envelope: &EventEnvelope, field: &str, reason: impl ToString) -> Error {
    Error::corrupt(
        format!(
            "event {} ({} of {} {} at version {})",
            envelope.event_id,
            envelope.event_type,
            envelope.aggregate_type,
            envelope.aggregate_id,
            envelope.aggregate_version
        ),
        format!("personal field `{field}`: {}", reason.to_string()),
    )
}

/// The payload with each sealed field opened with the state of its subject.
fn open_fields(
    envelope: &EventEnvelope,
    mut map: Map<String, Value>,
    found: Vec<SealedField>,
    state_of: impl Fn(&str) -> Option<KeyState>,
) -> Result<Arc<str>> {
    for sealed in found {
        let value = match state_of(&sealed.subject) {
            Some(KeyState::Active(key)) => {
                let bound = binding(envelope.event_id, &sealed.field, &sealed.subject);
                let plaintext = super::cipher::open(&key, &bound, &sealed.sealed).map_err(|e| {
                    corrupt(
                        envelope,
                        &sealed.field,
                        match e {
                            super::cipher::Unopened::Malformed => "its sealed text is malformed",
                            super::cipher::Unopened::Rejected => {
                                "it does not open with its subject's key: sealed with another key, \
                                 for another event, or changed since"
                            }
                        },
                    )
                })?;
                serde_json::from_slice(&plaintext).map_err(|e| {
                    corrupt(envelope, &sealed.field, format!("it opens to no JSON value: {e}"))
                })?
            }
            Some(KeyState::Forgotten) => {
                let mut marker = Map::new();
                marker.insert(FORGOTTEN.into(), Value::Bool(true));
                Value::Object(marker)
            }
            None => {
                return Err(corrupt(
                    envelope,
                    &sealed.field,
                    format!(
                        "it is sealed for subject {}, who has no key in the key store",
                        sealed.subject
                    ),
                ))
            }
        };
        map.insert(sealed.field, value);
    }
    Ok(Arc::from(
        serde_json::to_string(&map).expect("a JSON object encodes"),
    ))
}

/// The payload of one event with its personal fields opened (as it is if it has none).
pub(crate) async fn open_payload(keys: &Keyring, envelope: &EventEnvelope) -> Result<Arc<str>> {
    let Some((map, found)) = sealed_fields(envelope)? else {
        return Ok(envelope.payload.clone());
    };
    let subjects: Vec<String> = found.iter().map(|f| f.subject.clone()).collect();
    let asked: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let states = keys.reading_keys(&asked).await?;
    let state_of = |subject: &str| {
        subjects
            .iter()
            .position(|s| s == subject)
            .and_then(|i| states[i].clone())
    };
    open_fields(envelope, map, found, state_of)
}

/// The events with their personal fields opened, with one look at the key store for the
/// subjects of all of them; borrowed as they are if none is sealed or there is no keyring
/// (then a sealed field fails to decode, saying why).
pub(crate) async fn open_events<'a>(
    keys: Option<&Keyring>,
    events: &'a [StoredEvent],
) -> Result<Cow<'a, [StoredEvent]>> {
    let Some(keys) = keys else {
        return Ok(Cow::Borrowed(events));
    };
    let mut sealed = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if let Some(found) = sealed_fields(event)? {
            sealed.push((i, found));
        }
    }
    if sealed.is_empty() {
        return Ok(Cow::Borrowed(events));
    }
    let mut subjects: Vec<String> = sealed
        .iter()
        .flat_map(|(_, (_, found))| found.iter().map(|f| f.subject.clone()))
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    let asked: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let states = keys.reading_keys(&asked).await?;
    let state_of = |subject: &str| {
        subjects
            .binary_search_by(|s| s.as_str().cmp(subject))
            .ok()
            .and_then(|i| states[i].clone())
    };
    let mut opened = events.to_vec();
    for (i, (map, found)) in sealed {
        let payload = open_fields(&events[i], map, found, state_of)?;
        opened[i].envelope.payload = payload;
    }
    Ok(Cow::Owned(opened))
}

/// The values of `subject`'s sealed fields in one event, opened with the subject's `key`
/// (what a forgetting looks for in every copy before it deletes the key); none if the event
/// holds no value of the subject. A value that does not open is [`Error::Corrupt`].
pub(crate) fn values_of(
    envelope: &EventEnvelope,
    subject: &str,
    key: &super::SubjectKey,
) -> Result<Vec<Value>> {
    let Some((_, found)) = sealed_fields(envelope)? else {
        return Ok(Vec::new());
    };
    found
        .into_iter()
        .filter(|sealed| sealed.subject == subject)
        .map(|sealed| {
            let bound = binding(envelope.event_id, &sealed.field, &sealed.subject);
            let plaintext = super::cipher::open(key, &bound, &sealed.sealed)
                .map_err(|_| corrupt(envelope, &sealed.field, "it does not open with its subject's key"))?;
            serde_json::from_slice(&plaintext)
                .map_err(|e| corrupt(envelope, &sealed.field, format!("it opens to no JSON value: {e}")))
        })
        .collect()
}
