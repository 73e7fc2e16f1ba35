//! Names and messages as text for a terminal: the characters that must not reach one as they
//! are, and their escapes.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: a control character (C0, DEL, C1: a
/// newline, a carriage return, the escape that starts a terminal sequence), a line or
/// paragraph separator, or a bidirectional formatting character (which reorders the text
/// around it on screen).
pub(crate) fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every character [`is_unsafe`] written as its Rust escape: `\n`, `\r`, `\t`,
/// and `\u{1b}` and the like for the others. Text without one is returned as it is.
///
/// Backslashes are left as they are, so that text escaped already (a name printed with
/// `{:?}` in an error message) is not escaped twice: escaping is idempotent, and can be
/// applied to a whole message as well as to the names in it.
#[cfg_attr(not(feature = "admin"), allow(dead_code))] // the admin's text output
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(
            escape("read-model v2 ü"),
            Cow::Borrowed("read-model v2 ü")
        ));
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape("\x1b[2J\x07\x7f\u{85}"), "\\u{1b}[2J\\u{7}\\u{7f}\\u{85}");
        assert_eq!(
            escape("x\u{202e}y\u{2028}z\u{2066}"),
            "x\\u{202e}y\\u{2028}z\\u{2066}"
        );
    }

    #[test]
    fn escaping_twice_changes_nothing() {
        let once = escape("a\n\x1b[2J\\n\"q\"");
        assert_eq!(once, "a\\n\\u{1b}[2J\\n\"q\"");
        assert_eq!(escape(&once), once);
        let debug = format!("{:?}", "a\nb");
        assert_eq!(escape(&debug), debug);
    }
}
