//! The values of a store URL's query parameters, read and bounded before anything is
//! allocated, opened or connected: one reading of a whole number, one of a duration, one of a
//! yes-or-no flag and one of a word from a list, shared by every backend's URL.
// A build with one SQL backend leaves the readings only the other one uses.
#![cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::slice::SliceCount;

/// One parameter of one backend's URL: it reads values and words their refusals, always
/// naming the URL's backend and the parameter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Param<'a> {
    /// `PostgreSQL` or `SQLite`.
    backend: &'static str,
    key: &'a str,
}

/// How much of a refused value a message repeats.
const ECHOED: usize = 40;

/// The units a duration takes, with their length in nanoseconds; a number alone is seconds.
/// Messages show a bound in the last unit of this list that divides it (`2min`, `24h`).
const UNITS: [(&str, u128); 6] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("d", 86_400_000_000_000),
    ("min", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

const NANOS_PER_MILLI: u128 = 1_000_000;

impl<'a> Param<'a> {
    pub(crate) fn new(backend: &'static str, key: &'a str) -> Self {
        Self { backend, key }
    }

    /// [`Error::InvalidConfiguration`]: "the {backend} URL's `{key}` {why}".
    pub(crate) fn refuse(&self, why: impl fmt::Display) -> Error {
        Error::InvalidConfiguration(format!("the {} URL's `{}` {why}", self.backend, self.key))
    }

    /// [`Error::InvalidConfiguration`]: "the {backend} URL's `{key}` {rule}, not `{value}`",
    /// the value escaped and cut short.
    pub(crate) fn refuse_value(&self, rule: impl fmt::Display, value: &str) -> Error {
        self.refuse(format_args!("{rule}, not {}", echo(value)))
    }

    /// The value of a parameter seen for the first time (recorded in `seen`), refused if it
    /// was given before or is empty.
    pub(crate) fn value<'v>(&self, value: &'v str, seen: &mut Vec<&'a str>) -> Result<&'v str> {
        if seen.contains(&self.key) {
            return Err(self.refuse("parameter is given twice"));
        }
        seen.push(self.key);
        if value.is_empty() {
            return Err(self.refuse("parameter has no value"));
        }
        Ok(value)
    }

    /// A whole number within `bounds`, written in decimal digits only.
    pub(crate) fn count(&self, value: &str, bounds: RangeInclusive<u32>) -> Result<u32> {
        let refuse = || {
            self.refuse_value(
                format_args!(
                    "must be a whole number from {} to {}",
                    bounds.start(),
                    bounds.end()
                ),
                value,
            )
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        // Digits only, so the one failure left is a number too large for a u32.
        let n: u32 = value.parse().map_err(|_| refuse())?;
        if bounds.contains(&n) {
            Ok(n)
        } else {
            Err(refuse())
        }
    }

    /// A number of slices: a power of two from 1 to 65,536 (see [`SliceCount::new`]).
    pub(crate) fn slice_count(&self, value: &str) -> Result<SliceCount> {
        let count = self.count(value, 1..=SliceCount::MAX.get())?;
        SliceCount::new(count).map_err(|_| {
            self.refuse_value(
                format_args!("must be a power of two from 1 to {}", SliceCount::MAX.get()),
                value,
            )
        })
    }

    /// A duration within `bounds`, in whole milliseconds: a decimal number followed by `ms`,
    /// `s`, `m` or `min`, `h` or `d`, or without a unit for seconds (`500ms`, `5s`, `1.5`,
    /// `2m`, `1h`). It is
    /// read exactly, so a value finer than a millisecond (`0.0001ms`, `1.0005s`) is refused
    /// rather than rounded, and a value too large for any clock is refused rather than
    /// overflowing.
    pub(crate) fn duration(&self, value: &str, bounds: RangeInclusive<Duration>) -> Result<Duration> {
        let refuse = || {
            self.refuse_value(
                format_args!(
                    "must be a duration from {} to {} in whole milliseconds (a number with `ms`, \
                     `s`, `m`, `h` or `d`, or a number of seconds: `500ms`, `5s`, `1.5`, `2m`)",
                    Shown(*bounds.start()),
                    Shown(*bounds.end()),
                ),
                value,
            )
        };
        let millis = exact_millis(value).ok_or_else(refuse)?;
        let duration = Duration::from_millis(millis);
        if bounds.contains(&duration) {
            Ok(duration)
        } else {
            Err(refuse())
        }
    }

    /// A yes-or-no flag as SQLite reads one: `1`, `yes`, `true` or `on`, `0`, `no`, `false` or
    /// `off`, in any case.
    pub(crate) fn flag(&self, value: &str) -> Result<bool> {
        const YES: [&str; 4] = ["1", "yes", "true", "on"];
        const NO: [&str; 4] = ["0", "no", "false", "off"];
        let is = |words: &[&str]| words.iter().any(|word| word.eq_ignore_ascii_case(value));
        match (is(&YES), is(&NO)) {
            (true, _) => Ok(true),
            (_, true) => Ok(false),
            _ => Err(self.refuse_value(
                format_args!("must be one of {} or {}", YES.join(", "), NO.join(", ")),
                value,
            )),
        }
    }

    /// One of `words`, exactly.
    pub(crate) fn word<'v>(&self, value: &'v str, words: &[&str]) -> Result<&'v str> {
        if words.contains(&value) {
            return Ok(value);
        }
        let words: Vec<String> = words.iter().map(|word| format!("`{word}`")).collect();
        Err(self.refuse_value(format_args!("must be one of {}", words.join(", ")), value))
    }
}

/// A key or value of a URL's query as the URL means it, decoded as the PostgreSQL driver's
/// URL parser decodes its query (form decoding: `+` is a space, `%XX` the byte of
/// hexadecimal `XX`), by the same crate; `None` for a `%` not followed by two hexadecimal
/// digits, which that decoding would keep as it is and so hide a typo, or for bytes that are
/// not UTF-8.
pub(crate) fn decoded(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !text.contains(['%', '+']) {
        return Some(std::borrow::Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let escapes_whole = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(at, _)| {
            bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        });
    if !escapes_whole {
        return None;
    }
    let spaced = text.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8().ok()?;
    Some(std::borrow::Cow::Owned(decoded.into_owned()))
}

/// The whole milliseconds a duration's text says, if it says a whole number of them.
fn exact_millis(value: &str) -> Option<u64> {
    let at = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(at);
    let unit = if unit.is_empty() { "s" } else { unit };
    let (_, nanos_per_unit) = UNITS.iter().find(|(name, _)| *name == unit)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // Trailing zeros of the fraction say nothing; beyond 18 digits no unit here gives whole
    // milliseconds (and 10^18 still fits a u128 with room to multiply).
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 18 {
        return None;
    }
    let mut units: u128 = 0;
    for digit in whole.bytes() {
        units = units * 10 + u128::from(digit - b'0');
        // Past any bound a caller sets: stop before the arithmetic can overflow.
        if units > u128::from(u64::MAX) {
            return None;
        }
    }
    let mut nanos = units * nanos_per_unit;
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let part = fraction.parse::<u128>().ok()? * nanos_per_unit;
        if part % scale != 0 {
            return None;
        }
        nanos += part / scale;
    }
    if !nanos.is_multiple_of(NANOS_PER_MILLI) {
        return None;
    }
    u64::try_from(nanos / NANOS_PER_MILLI).ok()
}

/// A value as a message repeats it: escaped, and cut after [`ECHOED`] characters.
fn echo(value: &str) -> String {
    let mut shown: String = value.chars().take(ECHOED).collect();
    if shown.len() < value.len() {
        shown.push_str("...");
    }
    format!("`{}`", shown.escape_debug())
}

/// A bound, in the largest unit of [`UNITS`] that gives a whole number.
struct Shown(Duration);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        let (name, per) = UNITS
            .iter()
            .rev()
            .find(|(_, per)| nanos.is_multiple_of(*per) && nanos >= *per)
            .unwrap_or(&UNITS[0]);
        write!(f, "{}{name}", nanos / per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(86_400);

    fn duration(value: &str) -> Result<Duration> {
        Param::new("PostgreSQL", "statement_timeout").duration(value, TIMEOUT)
    }

    #[test]
    fn durations_are_read_exactly_in_whole_milliseconds() {
        for (text, millis) in [
            ("5", 5_000),
            ("5s", 5_000),
            ("1.5", 1_500),
            ("1.1", 1_100),
            ("0.001", 1),
            ("500ms", 500),
            ("1.000ms", 1),
            ("2min", 120_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("0.5min", 30_000),
            ("24h", 86_400_000),
            ("1440min", 86_400_000),
            ("007s", 7_000),
            (".5", 500),
            ("5.", 5_000),
        ] {
            assert_eq!(duration(text).unwrap(), Duration::from_millis(millis), "{text}");
        }
    }

    #[test]
    fn durations_out_of_bounds_finer_than_a_millisecond_or_malformed_are_refused() {
        for text in [
            "0",
            "0ms",
            "0.0001ms",
            "1.5ms",
            "1.0005s",
            "0.0000000000000000000001",
            "86400.001",
            "25h",
            "1e20",
            "100000000000000000000",
            "100000000000000000000s",
            &"9".repeat(400),
            "-5s",
            "+5s",
            " 5s",
            "5 s",
            "5S",
            "5sec",
            "5M",
            "2d",
            "s",
            ".",
            ".s",
            "1.2.3",
            "NaN",
            "inf",
        ] {
            match duration(text) {
                Err(Error::InvalidConfiguration(message)) => {
                    assert!(
                        message.contains("`statement_timeout`") && message.contains("from 1ms to 24h"),
                        "{text}: {message}"
                    )
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn counts_are_bounded_whole_numbers() {
        let param = Param::new("PostgreSQL", "max_connections");
        assert_eq!(param.count("32", 1..=10_000).unwrap(), 32);
        assert_eq!(param.count("10000", 1..=10_000).unwrap(), 10_000);
        for text in [
            "0",
            "10001",
            "4294967295",
            "4294967296",
            "99999999999999999999",
            "+5",
            "-1",
            "5.0",
            "",
            "many",
        ] {
            let message = param.count(text, 1..=10_000).unwrap_err().to_string();
            assert!(
                message.contains("`max_connections`") && message.contains("from 1 to 10000"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn flags_and_words_are_read_as_sqlite_reads_them() {
        let param = Param::new("SQLite", "immutable");
        for (text, flag) in [
            ("1", true),
            ("YES", true),
            ("on", true),
            ("0", false),
            ("False", false),
        ] {
            assert_eq!(param.flag(text).unwrap(), flag, "{text}");
        }
        for text in ["2", "maybe", "", "10"] {
            assert!(param.flag(text).is_err(), "{text}");
        }
        let mode = Param::new("SQLite", "mode");
        assert_eq!(mode.word("ro", &["ro", "rw"]).unwrap(), "ro");
        let message = mode.word("RO", &["ro", "rw"]).unwrap_err().to_string();
        assert!(message.contains("`ro`, `rw`"), "{message}");
    }

    #[test]
    fn refused_values_are_repeated_escaped_and_cut() {
        let message = Param::new("SQLite", "mode")
            .word(&format!("x\n\u{1b}[31m{}", "y".repeat(100)), &["ro"])
            .unwrap_err()
            .to_string();
        assert!(
            !message.contains('\n') && !message.contains('\u{1b}'),
            "{message}"
        );
        assert!(message.len() < 200, "{message}");
        assert_eq!(Shown(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Shown(Duration::from_secs(120)).to_string(), "2min");
    }

    #[test]
    fn query_text_is_percent_decoded_as_urls_mean_it() {
        assert_eq!(decoded("my%2Dapp").as_deref(), Some("my-app"));
        assert_eq!(decoded("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(decoded("%C3%A9t%C3%A9").as_deref(), Some("été"));
        assert_eq!(decoded("plain").as_deref(), Some("plain"));
        for malformed in ["%", "%2", "%zz", "%2g", "%FF", "a%C3"] {
            assert_eq!(decoded(malformed), None, "{malformed}");
        }
    }
}
