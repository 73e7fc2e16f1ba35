//! Sealing the personal fields of event payloads before they are appended.
//!
//! A sealed field holds `{"$personal":{"subject":"...","sealed":"..."}}`: the subject in the
//! clear (it names the key) and the value's JSON sealed with the subject's key, bound to the
//! event's id, the field's name and the subject ([`binding`]). [`super::open`] puts the value
//! back.

use std::sync::Arc;

use uuid::Uuid;

use super::cipher::Cipher;
use super::fields::{sealed_fields, top_fields, unquote, PREFIX};
use super::keyring::Keyring;
use super::value::FORGOTTEN_TEXT;
use super::PersonalField;
use crate::error::{Error, Result};
use crate::event::EventEnvelope;

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

    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
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
        self.refuse_lookalikes()?;
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
    /// [`Error::InvalidInput`] for an event with a top-level value shaped like a sealed one
    /// (`{"$personal": ...}`), which opening would take for one: nothing sealed it yet.
    fn refuse_lookalikes(&self) -> Result<()> {
        for envelope in &self.envelopes {
            let field = match sealed_fields(envelope) {
                Ok(found) => found.first().map(|f| format!("field `{}`", f.field)),
                // Shaped like a sealed value, and not even a whole one.
                Err(e) => Some(e.to_string()),
            };
            if let Some(field) = field {
                return Err(Error::InvalidInput(format!(
                    "event {} ({}): {field} holds a value shaped like a sealed personal value \
                     (an object of the one key `$personal`), which only sealing writes",
                    envelope.event_id, envelope.event_type
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn without_keys(self) -> Result<Vec<EventEnvelope>> {
        self.refuse_lookalikes()?;
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

/// The payload with each personal field's value sealed with its subject's key, in place:
/// the rest of the text is kept as it is.
async fn seal_payload(
    keys: &Keyring,
    envelope: &EventEnvelope,
    fields: &[PersonalField],
) -> Result<Arc<str>> {
    let payload = &*envelope.payload;
    let top = top_fields(payload).ok_or_else(|| Error::Serialization {
        action: "serialize",
        what: format!("event {} ({})", envelope.event_id, envelope.event_type),
        reason: "an event with personal fields is a JSON object".into(),
    })?;
    let value_of = |name: &str| top.iter().find(|f| f.name == name).map(|f| f.value.clone());
    let mut sealed_values = Vec::new();
    for field in fields {
        let Some(span) = value_of(field.field) else {
            continue;
        };
        let value = &payload[span.clone()];
        if value == "null" || value == FORGOTTEN_TEXT {
            continue;
        }
        let subject = subject_of(payload, value_of(field.subject), field, envelope)?;
        let key = keys
            .writing_key(&subject, &envelope.aggregate_type, envelope.aggregate_id)
            .await?;
        let bound = binding(envelope.event_id, field.field, &subject);
        let sealed = Cipher::new(&key).seal(&bound, value.as_bytes())?;
        let subject = serde_json::to_string(&subject).expect("a string encodes");
        sealed_values.push((span, format!(r#"{PREFIX}{subject},"sealed":"{sealed}"}}}}"#)));
    }
    sealed_values.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(payload.len() + 96 * sealed_values.len());
    let mut at = 0;
    for (span, marker) in sealed_values {
        out.push_str(&payload[at..span.start]);
        out.push_str(&marker);
        at = span.end;
    }
    out.push_str(&payload[at..]);
    Ok(Arc::from(out))
}

/// The subject a personal field names: the text of its subject field (at `span`), a string
/// or a number.
fn subject_of(
    payload: &str,
    span: Option<std::ops::Range<usize>>,
    field: &PersonalField,
    envelope: &EventEnvelope,
) -> Result<String> {
    let text = span.map(|span| &payload[span]);
    let subject = match text {
        Some(quoted) if quoted.starts_with('"') => {
            unquote(quoted).filter(|s| !s.is_empty()).map(|s| s.into_owned())
        }
        Some(number) => serde_json::from_str::<serde_json::Number>(number)
            .ok()
            .map(|n| n.to_string()),
        None => None,
    };
    subject.ok_or_else(|| {
        Error::InvalidInput(format!(
            "event {} ({}): personal field `{}` belongs to the subject in field `{}`, which is {}",
            envelope.event_id,
            envelope.event_type,
            field.field,
            field.subject,
            match text {
                None => "missing".to_owned(),
                Some(v) => format!("{v}, not a non-empty string or a number"),
            }
        ))
    })
}

/// What a sealed value is bound to: the event, the field, the subject (each field of known
/// length, so that no two bindings read the same).
pub(super) fn binding(event_id: Uuid, field: &str, subject: &str) -> Vec<u8> {
    const CONTEXT: &[u8] = b"eventsourcing-kit personal v1\0";
    let mut bound = Vec::with_capacity(CONTEXT.len() + 16 + 4 + field.len() + subject.len());
    bound.extend_from_slice(CONTEXT);
    bound.extend_from_slice(event_id.as_bytes());
    bound.extend_from_slice(&(field.len() as u32).to_le_bytes());
    bound.extend_from_slice(field.as_bytes());
    bound.extend_from_slice(subject.as_bytes());
    bound
}
