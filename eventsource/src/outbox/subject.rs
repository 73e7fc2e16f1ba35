//! NATS subjects: what a token may hold, and an aggregate type written as one.

use crate::error::{Error, Result};

/// `text` as one token of a NATS subject: ASCII letters, digits, `-` and `_` as they are,
/// every other character as `~XX` per byte of its UTF-8 form (hexadecimal, upper case), so
/// that two aggregate types never share a token.
pub fn subject_token(text: &str) -> String {
    let mut token = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => token.push(char::from(byte)),
            other => token.push_str(&format!("~{other:02X}")),
        }
    }
    token
}

/// Checks a subject prefix: tokens separated by `.`, none empty, no space or wildcard.
pub(super) fn validate_prefix(prefix: &str) -> Result<()> {
    let bad = prefix.is_empty()
        || prefix.split('.').any(|token| {
            token.is_empty()
                || token
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        });
    if bad {
        return Err(Error::InvalidInput(format!(
            "{prefix:?} is no NATS subject prefix: tokens separated by `.`, none empty, without spaces or wildcards"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_plain_names_and_escape_the_rest() {
        assert_eq!(subject_token("Order"), "Order");
        assert_eq!(subject_token("process.warehouse"), "process~2Ewarehouse");
        assert_eq!(subject_token("a b*>~"), "a~20b~2A~3E~7E");
        assert_eq!(subject_token("Bestellung-Ä"), "Bestellung-~C3~84");
        assert_ne!(subject_token("a.b"), subject_token("a_b"));
    }

    #[test]
    fn prefixes_are_subjects() {
        assert!(validate_prefix("events").is_ok());
        assert!(validate_prefix("shop.events").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
