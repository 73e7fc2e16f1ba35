//! The texts a forgetting looks for: the subject's values, read once with the key before it
//! is deleted.

use serde_json::Value;

/// Texts shorter than this are not looked for: too short to tell apart from other data.
pub(crate) const SHORTEST: usize = 4;

/// The subject's values as texts to look for: every string inside them of at least
/// [`SHORTEST`] characters, and every number of as many digits, without repeats.
#[derive(Debug, Default)]
pub(crate) struct Sought {
    texts: Vec<String>,
}

impl Sought {
    /// Adds the texts of `value`.
    pub(crate) fn add(&mut self, value: &Value) {
        for text in leaf_texts(value) {
            if text.chars().count() >= SHORTEST && !self.texts.contains(&text) {
                self.texts.push(text);
            }
        }
    }

    pub(crate) fn texts(&self) -> &[String] {
        &self.texts
    }

    /// Whether `text` holds one of the values, as it is or as JSON writes it.
    pub(crate) fn found_in(&self, text: &str) -> bool {
        self.texts
            .iter()
            .any(|sought| text.contains(sought.as_str()) || text.contains(json_inner(sought).as_str()))
    }

    /// Whether a string or number inside `value` is one of the values, whole: what a
    /// snapshot's state is checked for, where a part of another text is no copy.
    pub(crate) fn found_whole_in(&self, value: &Value) -> bool {
        leaf_texts(value).any(|text| self.texts.contains(&text))
    }

    /// `text` with every value in it replaced by `[forgotten]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut redacted = text.to_owned();
        for sought in &self.texts {
            redacted = redacted.replace(sought.as_str(), "[forgotten]");
            redacted = redacted.replace(json_inner(sought).as_str(), "[forgotten]");
        }
        redacted
    }
}

/// The text of every string and number inside `value`, at any depth.
fn leaf_texts(value: &Value) -> impl Iterator<Item = String> + '_ {
    let mut stack = vec![value];
    std::iter::from_fn(move || {
        while let Some(value) = stack.pop() {
            match value {
                Value::String(s) => return Some(s.clone()),
                Value::Number(n) => return Some(n.to_string()),
                Value::Array(items) => stack.extend(items),
                Value::Object(fields) => stack.extend(fields.values()),
                Value::Bool(_) | Value::Null => {}
            }
        }
        None
    })
}

/// A string as it appears inside JSON text: escaped, without its quotes.
fn json_inner(text: &str) -> String {
    let quoted = serde_json::to_string(text).expect("a string encodes");
    quoted[1..quoted.len() - 1].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_and_numbers_are_sought_as_written_and_as_json() {
        let mut sought = Sought::default();
        sought.add(&serde_json::json!({"street": "Rue \"Haute\" 5", "zip": 75001, "n": 7, "ok": true}));
        sought.add(&serde_json::json!("ada@example.com"));
        sought.add(&serde_json::json!("ada@example.com"));
        assert_eq!(sought.texts().len(), 3, "{:?}", sought.texts());
        assert!(sought.found_in(r#"{"street":"Rue \"Haute\" 5"}"#), "JSON-escaped");
        assert!(sought.found_in("mail to ada@example.com failed"));
        assert!(!sought.found_in("n = 7"), "short values are not sought");
        assert_eq!(
            sought.redact("mail to ada@example.com failed"),
            "mail to [forgotten] failed"
        );
        assert!(sought.found_whole_in(&serde_json::json!({"a": [{"b": 75001}]})));
        assert!(
            !sought.found_whole_in(&serde_json::json!({"a": "ada@example.com.au"})),
            "a part is no copy"
        );
    }
}
