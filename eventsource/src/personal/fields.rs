//! The top-level fields of a payload, found in its text without parsing their values: where
//! sealing finds the values it seals and opening the sealed values it opens, so that neither
//! parses nor writes the rest of the payload again.

use std::borrow::Cow;
use std::ops::Range;

use super::value::{is_marker, SEALED};
use crate::error::{Error, Result};
use crate::event::EventEnvelope;

/// The start of a sealed value, as sealing writes it.
pub(super) const PREFIX: &str = r#"{"$personal":{"subject":"#;
/// Between the subject and the sealed text.
const MIDDLE: &str = r#","sealed":""#;
/// After the sealed text.
const END: &str = r#""}}"#;

/// Whether a payload may hold sealed fields: a cheap look before anything else.
pub(crate) fn may_be_sealed(payload: &str) -> bool {
    payload.contains("\"$personal\"")
}

/// One top-level field of a JSON object's text: its name, and where its value is.
pub(super) struct TopField<'a> {
    pub(super) name: Cow<'a, str>,
    pub(super) value: Range<usize>,
}

/// The top-level fields of `text`, a JSON object, in order; `None` if it is not one.
pub(super) fn top_fields(text: &str) -> Option<Vec<TopField<'_>>> {
    let bytes = text.as_bytes();
    let mut i = skip_space(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_space(bytes, i + 1);
    let mut fields = Vec::new();
    if bytes.get(i) == Some(&b'}') {
        return (skip_space(bytes, i + 1) == bytes.len()).then_some(fields);
    }
    loop {
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(bytes, i)?;
        let name = unquote(&text[i..key_end])?;
        i = skip_space(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_space(bytes, i + 1);
        let (end, next) = value_end(bytes, start)?;
        fields.push(TopField {
            name,
            value: start..end,
        });
        match bytes[next] {
            b',' => i = skip_space(bytes, next + 1),
            _ => return (skip_space(bytes, next + 1) == bytes.len()).then_some(fields),
        }
    }
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Where the value that starts at `start` ends (past its last byte), and where the comma or
/// brace after it is.
fn value_end(bytes: &[u8], start: usize) -> Option<(usize, usize)> {
    let (mut depth, mut i, mut end) = (0usize, start, start);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = string_end(bytes, i)?;
                end = i;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b',' | b'}' if depth == 0 => return (end > start).then_some((end, i)),
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        i += 1;
        end = i;
    }
    None
}

/// Where the JSON string that starts at `start` (its opening quote) ends: past its closing
/// quote.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += plain_run(bytes.get(i..)?);
        match bytes.get(i)? {
            b'\\' => i += 2,
            _ => return Some(i + 1),
        }
    }
}

/// How many bytes at the start of `bytes` are neither a quote nor a backslash: eight at a
/// time while a word holds neither (sealed texts are long runs of base64), then one by one.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Whether some byte of `word` is `byte`: the exact test for a zero byte, on `word ^ byte`s.
    let holds = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if holds(word, b'"') || holds(word, b'\\') {
            break;
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .unwrap_or(bytes.len() - i)
}

/// The text of a JSON string (its quotes included).
pub(super) fn unquote(quoted: &str) -> Option<Cow<'_, str>> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    match inner.contains('\\') {
        false => Some(Cow::Borrowed(inner)),
        true => serde_json::from_str::<String>(quoted).ok().map(Cow::Owned),
    }
}

/// A sealed field: its name, its subject, the sealed text, and where its value is in the
/// payload.
pub(super) struct SealedField<'a> {
    pub(super) field: Cow<'a, str>,
    pub(super) subject: Cow<'a, str>,
    pub(super) sealed: Cow<'a, str>,
    pub(super) span: Range<usize>,
}

/// The sealed fields of the event's payload; none if it has none, or is no JSON object (then
/// decoding fails on it, saying why). A sealed value that is not a subject and a sealed
/// text is [`Error::Corrupt`].
pub(super) fn sealed_fields(envelope: &EventEnvelope) -> Result<Vec<SealedField<'_>>> {
    let payload = &*envelope.payload;
    if !may_be_sealed(payload) {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for field in top_fields(payload).unwrap_or_default() {
        let value = &payload[field.value.clone()];
        if !value.starts_with('{') || !value.contains("\"$personal\"") {
            continue;
        }
        let (subject, sealed) = match exact(value) {
            Some(found) => found,
            None => match loose(value) {
                Some(Ok(found)) => found,
                Some(Err(())) => {
                    return Err(corrupt(
                        envelope,
                        &field.name,
                        "its sealed value is not an object of a subject and a sealed text",
                    ))
                }
                None => continue,
            },
        };
        found.push(SealedField {
            field: field.name,
            subject,
            sealed,
            span: field.value,
        });
    }
    Ok(found)
}

/// A sealed value's subject and sealed text.
type SubjectAndSealed<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The subject and sealed text of a value exactly as sealing writes it.
fn exact(value: &str) -> Option<SubjectAndSealed<'_>> {
    let rest = value.strip_prefix(PREFIX)?;
    let subject_end = string_end(rest.as_bytes(), 0)?;
    let subject = unquote(&rest[..subject_end])?;
    let sealed = rest[subject_end..].strip_prefix(MIDDLE)?.strip_suffix(END)?;
    (!sealed.contains(['"', '\\'])).then_some((subject, Cow::Borrowed(sealed)))
}

/// The subject and sealed text of a sealed value written another way (spaces, another
/// order): `None` if it is no sealed value, `Err` if it is one without both.
fn loose(value: &str) -> Option<std::result::Result<SubjectAndSealed<'static>, ()>> {
    let parsed: serde_json::Value = serde_json::from_str(value).ok()?;
    if !is_marker(&parsed, SEALED) {
        return None;
    }
    let inner = &parsed[SEALED];
    Some(match (inner["subject"].as_str(), inner["sealed"].as_str()) {
        (Some(subject), Some(sealed)) => Ok((Cow::Owned(subject.to_owned()), Cow::Owned(sealed.to_owned()))),
        _ => Err(()),
    })
}

/// The [`Error::Corrupt`] of a personal field of the event.
pub(super) fn corrupt(envelope: &EventEnvelope, field: &str, reason: impl ToString) -> Error {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
            Just(Value::from("\"{},[]:\\")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The fields found in the text of any object, compact or pretty, are the object's own,
        /// each with its value's text.
        #[test]
        fn top_fields_agree_with_a_parser(
            fields in prop::collection::btree_map(".{0,6}", json(), 0..6),
            pretty in any::<bool>(),
        ) {
            let object: serde_json::Map<String, Value> = fields.into_iter().collect();
            let text = match pretty {
                true => serde_json::to_string_pretty(&object).unwrap(),
                false => serde_json::to_string(&object).unwrap(),
            };
            let found = top_fields(&text).expect("an object's fields are found");
            prop_assert_eq!(found.len(), object.len());
            for field in found {
                let value: Value = serde_json::from_str(&text[field.value]).unwrap();
                prop_assert_eq!(Some(&value), object.get(&*field.name));
            }
        }

        /// The end of any JSON string is found, past its closing quote, whatever it holds
        /// and wherever its quotes and backslashes fall in the words the scan reads; a string
        /// cut short has none.
        #[test]
        fn the_end_of_any_string_is_found(
            text in prop::collection::vec(prop::sample::select(vec!['a', '"', '\\', '/', 'é', 'x']), 0..40),
            before in 0usize..9,
        ) {
            let text: String = text.into_iter().collect();
            let quoted = format!("{}{}", " ".repeat(before), serde_json::to_string(&text).unwrap());
            prop_assert_eq!(string_end(quoted.as_bytes(), before), Some(quoted.len()));
            prop_assert_eq!(string_end(&quoted.as_bytes()[..quoted.len() - 1], before), None);
        }

        /// Any text at all is scanned without a panic.
        #[test]
        fn any_text_is_scanned_without_a_panic(text in ".{0,40}") {
            let _ = top_fields(&text);
            let _ = sealed_fields(&EventEnvelope::from_json(
                uuid::Uuid::nil(), "Customer", 1, "Registered", 1, format!("{{\"$personal\":{text}"),
            ));
        }
    }

    fn names_and_values(text: &str) -> Option<Vec<(String, &str)>> {
        Some(
            top_fields(text)?
                .into_iter()
                .map(|f| (f.name.into_owned(), &text[f.value]))
                .collect(),
        )
    }

    #[test]
    fn top_level_fields_are_found_in_compact_and_spaced_text() {
        let text = r#"{"a":1,"b\"c":"x,}y","d":{"e":[1,{"f":"}"}]},"g":null}"#;
        assert_eq!(
            names_and_values(text).unwrap(),
            vec![
                ("a".to_owned(), "1"),
                ("b\"c".to_owned(), r#""x,}y""#),
                ("d".to_owned(), r#"{"e":[1,{"f":"}"}]}"#),
                ("g".to_owned(), "null"),
            ]
        );
        let spaced = "{ \"a\" : [ 1 , 2 ] ,\n \"b\" : true }\n";
        assert_eq!(
            names_and_values(spaced).unwrap(),
            vec![("a".to_owned(), "[ 1 , 2 ]"), ("b".to_owned(), "true")]
        );
        assert_eq!(names_and_values("{}").unwrap(), vec![]);
        for bad in [
            "",
            "[1]",
            "{\"a\"}",
            "{\"a\":1",
            "{\"a\":1}x",
            "{\"a\":}",
            "{\"a\":\"x}",
        ] {
            assert!(top_fields(bad).is_none(), "{bad:?}");
        }
    }

    fn envelope(payload: &str) -> EventEnvelope {
        EventEnvelope::from_json(uuid::Uuid::new_v4(), "Customer", 1, "Registered", 1, payload)
    }

    fn found(payload: &str) -> Vec<(String, String, String)> {
        sealed_fields(&envelope(payload))
            .unwrap()
            .into_iter()
            .map(|f| {
                (
                    f.field.into_owned(),
                    f.subject.into_owned(),
                    f.sealed.into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn sealed_fields_are_the_top_level_values_sealing_wrote() {
        let payload = r#"{"customer":"c\"1","email":{"$personal":{"subject":"c\"1","sealed":"QUJD"}},"note":"{\"$personal\"","deep":{"x":{"$personal":{"subject":"c-1","sealed":"QUJD"}}},"na\u006de":{ "$personal" : { "sealed" : "REVG", "subject" : "c-2" } }}"#;
        assert_eq!(
            found(payload),
            vec![
                ("email".to_owned(), "c\"1".to_owned(), "QUJD".to_owned()),
                ("name".to_owned(), "c-2".to_owned(), "REVG".to_owned()),
            ],
            "a marker below the top level, or in a string, is data"
        );
        let event = envelope(payload);
        let sealed = sealed_fields(&event).unwrap();
        assert_eq!(
            &payload[sealed[0].span.clone()],
            r#"{"$personal":{"subject":"c\"1","sealed":"QUJD"}}"#
        );
        assert!(found(r#"{"a":"no marker"}"#).is_empty());
        assert!(found("not json \"$personal\"").is_empty());
        match sealed_fields(&envelope(r#"{"email":{"$personal":{"subject":1}}}"#)) {
            Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("email"), "{reason}"),
            other => panic!("expected Corrupt, got {:?}", other.map(|f| f.len())),
        }
    }
}
