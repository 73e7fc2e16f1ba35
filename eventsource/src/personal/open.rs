//! Opening the personal fields of events as they are read: each sealed value put back in
//! place, or `{"$forgotten":true}` for a forgotten subject, so decoding never meets a sealed
//! field.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use super::cipher::{Cipher, Unopened};
use super::fields::{corrupt, sealed_fields, SealedField};
use super::keyring::Keyring;
use super::seal::binding;
use super::value::FORGOTTEN_TEXT;
use super::{KeyState, SubjectKey};
use crate::error::Result;
use crate::event::{EventEnvelope, StoredEvent};

pub(crate) use super::fields::may_be_sealed;

/// What a subject's values read as.
enum Reading {
    /// Open, with the subject's key (boxed: its key schedule is large).
    Open(Box<Cipher>),
    /// Forgotten.
    Forgotten,
    /// Not at all: the subject has no key.
    NoKey,
}

/// Opens the events of one read (a load, a batch), asking the keyring once for each subject.
pub(crate) struct Opener<'k> {
    keys: &'k Keyring,
    /// The subjects met so far, with what their values read as.
    known: Vec<(String, Reading)>,
}

impl<'k> Opener<'k> {
    pub(crate) fn new(keys: &'k Keyring) -> Self {
        Opener {
            keys,
            known: Vec::new(),
        }
    }

    /// The event's payload with its personal fields opened (as it is if it has none).
    pub(crate) async fn open<'e>(&mut self, envelope: &'e EventEnvelope) -> Result<Cow<'e, str>> {
        let sealed = sealed_fields(envelope)?;
        if sealed.is_empty() {
            return Ok(Cow::Borrowed(&envelope.payload));
        }
        self.learn(sealed.iter().map(|f| &*f.subject)).await?;
        self.opened(envelope, &sealed).map(Cow::Owned)
    }

    /// Asks the keyring, in one call, for the states of the subjects not met yet.
    async fn learn<'s>(&mut self, subjects: impl Iterator<Item = &'s str>) -> Result<()> {
        let mut missing: Vec<&str> = Vec::new();
        for subject in subjects {
            if !missing.contains(&subject) && !self.known.iter().any(|(s, _)| s == subject) {
                missing.push(subject);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let states = self.keys.reading_keys(&missing).await?;
        self.known
            .extend(missing.into_iter().zip(states).map(|(subject, state)| {
                let reading = match state {
                    Some(KeyState::Active(key)) => Reading::Open(Box::new(Cipher::new(&key))),
                    Some(KeyState::Forgotten) => Reading::Forgotten,
                    None => Reading::NoKey,
                };
                (subject.to_owned(), reading)
            }));
        Ok(())
    }

    /// The payload with each of its sealed fields replaced by what it reads as.
    fn opened(&self, envelope: &EventEnvelope, sealed: &[SealedField<'_>]) -> Result<String> {
        let payload = &*envelope.payload;
        let mut out = Vec::with_capacity(payload.len());
        let mut at = 0;
        for field in sealed {
            let reading = self
                .known
                .iter()
                .find(|(s, _)| *s == field.subject)
                .map_or(&Reading::NoKey, |(_, reading)| reading);
            out.extend_from_slice(&payload.as_bytes()[at..field.span.start]);
            match reading {
                Reading::Open(cipher) => {
                    let start = out.len();
                    open_value(envelope, field, cipher, &mut out)?;
                    if std::str::from_utf8(&out[start..]).is_err() {
                        return Err(corrupt(
                            envelope,
                            &field.field,
                            "it opens to text that is not UTF-8",
                        ));
                    }
                }
                Reading::Forgotten => out.extend_from_slice(FORGOTTEN_TEXT.as_bytes()),
                Reading::NoKey => {
                    return Err(corrupt(
                        envelope,
                        &field.field,
                        format!(
                            "it is sealed for subject {}, who has no key in the key store",
                            crate::text::escape(&field.subject)
                        ),
                    ))
                }
            }
            at = field.span.end;
        }
        out.extend_from_slice(&payload.as_bytes()[at..]);
        // Spans end at ASCII bytes of the payload, and each value opened was checked.
        String::from_utf8(out).map_err(|_| corrupt(envelope, "", "it is not UTF-8"))
    }
}

/// The events with their personal fields opened, with one look at the keyring for the
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
        let fields = sealed_fields(event)?;
        if !fields.is_empty() {
            sealed.push((i, fields));
        }
    }
    if sealed.is_empty() {
        return Ok(Cow::Borrowed(events));
    }
    let mut opener = Opener::new(keys);
    let subjects: Vec<String> = sealed
        .iter()
        .flat_map(|(_, fields)| fields.iter().map(|f| f.subject.to_string()))
        .collect();
    opener.learn(subjects.iter().map(String::as_str)).await?;
    let mut opened = events.to_vec();
    for (i, fields) in sealed {
        opened[i].envelope.payload = Arc::from(opener.opened(&events[i], &fields)?);
    }
    Ok(Cow::Owned(opened))
}

/// Appends the plaintext JSON of one sealed field to `out`.
fn open_value(
    envelope: &EventEnvelope,
    sealed: &SealedField<'_>,
    cipher: &Cipher,
    out: &mut Vec<u8>,
) -> Result<()> {
    let bound = binding(envelope.event_id, &sealed.field, &sealed.subject);
    cipher.open_into(&bound, &sealed.sealed, out).map_err(|e| {
        corrupt(
            envelope,
            &sealed.field,
            match e {
                Unopened::Malformed => "its sealed text is malformed",
                Unopened::Disabled => {
                    "this build of eventsourcing-kit lacks the `personal-data` feature, which opens it"
                }
                Unopened::Rejected => {
                    "it does not open with its subject's key: sealed with another key, for \
                     another event, or changed since"
                }
            },
        )
    })
}

/// The values of `subject`'s sealed fields in one event, opened with the subject's `key`
/// (what a forgetting looks for in every copy before it deletes the key); none if the event
/// holds no value of the subject. A value that does not open is
/// [`Error::Corrupt`](crate::Error::Corrupt).
pub(crate) fn values_of(envelope: &EventEnvelope, subject: &str, key: &SubjectKey) -> Result<Vec<Value>> {
    let cipher = Cipher::new(key);
    sealed_fields(envelope)?
        .iter()
        .filter(|sealed| sealed.subject == subject)
        .map(|sealed| {
            let mut plaintext = Vec::new();
            open_value(envelope, sealed, &cipher, &mut plaintext)?;
            serde_json::from_slice(&plaintext)
                .map_err(|e| corrupt(envelope, &sealed.field, format!("it opens to no JSON value: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::value::{is_marker, FORGOTTEN};
    use super::*;

    #[test]
    fn the_forgotten_text_is_the_mark_personal_reads() {
        let value: Value = serde_json::from_str(FORGOTTEN_TEXT).unwrap();
        assert!(is_marker(&value, FORGOTTEN));
        let read: super::super::Personal<String> = serde_json::from_str(FORGOTTEN_TEXT).unwrap();
        assert!(read.is_forgotten());
        let written = serde_json::to_string(&super::super::Personal::<String>::Forgotten).unwrap();
        assert_eq!(written, FORGOTTEN_TEXT, "sealing recognises what Personal writes");
    }
}
