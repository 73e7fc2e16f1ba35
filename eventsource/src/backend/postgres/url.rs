//! The parameters of a `postgres://` URL that this library reads itself, before sqlx reads
//! the rest: where the tables are and how the pool is sized and bounded.

use std::time::Duration;

use crate::error::{Error, Result};

/// What a URL says beyond sqlx's own parameters.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Settings {
    /// `schema=NAME`: the PostgreSQL schema of the stores' tables.
    pub schema: Option<String>,
    /// `max_connections=N`: the pool's size (sqlx's default, 10, otherwise).
    pub max_connections: Option<u32>,
    /// `min_connections=N`: connections kept open when idle.
    pub min_connections: Option<u32>,
    /// `acquire_timeout=5s`: how long a call waits for a connection of the pool.
    pub acquire_timeout: Option<Duration>,
    /// `statement_timeout=5s`: the server's bound on each statement, as PostgreSQL reads it.
    pub statement_timeout: Option<String>,
}

const KEYS: &[&str] = &[
    "schema",
    "max_connections",
    "min_connections",
    "acquire_timeout",
    "statement_timeout",
];

/// The URL without this library's parameters, and what they say. A value that is not what
/// its parameter takes, or a parameter given twice, is [`Error::InvalidConfiguration`].
pub(super) fn split(url: &str) -> Result<(String, Settings)> {
    let mut settings = Settings::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), settings));
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !KEYS.contains(&key) {
            kept.push(pair);
            continue;
        }
        let bad = |why: &str| Error::InvalidConfiguration(format!("the PostgreSQL URL's `{key}` {why}"));
        if seen.contains(&key) {
            return Err(bad("parameter is given twice"));
        }
        seen.push(key);
        if value.is_empty() {
            return Err(bad("parameter has no value"));
        }
        let count = || value.parse::<u32>().map_err(|_| bad("must be a whole number"));
        match key {
            "schema" => settings.schema = Some(value.to_owned()),
            "max_connections" => match count()? {
                0 => return Err(bad("must be at least 1")),
                n => settings.max_connections = Some(n),
            },
            "min_connections" => settings.min_connections = Some(count()?),
            "acquire_timeout" => {
                settings.acquire_timeout =
                    Some(duration(value).ok_or_else(|| bad("must be a duration such as 5s or 500ms"))?)
            }
            _ => {
                duration(value).ok_or_else(|| bad("must be a duration such as 5s or 500ms"))?;
                settings.statement_timeout = Some(value.to_owned());
            }
        }
    }
    if let (Some(min), Some(max)) = (settings.min_connections, settings.max_connections) {
        if min > max {
            return Err(Error::InvalidConfiguration(format!(
                "the PostgreSQL URL's min_connections ({min}) is above its max_connections ({max})"
            )));
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, settings))
}

/// `5s`, `500ms`, `2min` or a number of seconds.
fn duration(value: &str) -> Option<Duration> {
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "min" => number * 60.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_librarys_parameters_are_taken_off_the_url() {
        let plain = "postgres://u@h/db";
        assert_eq!(split(plain).unwrap(), (plain.to_owned(), Settings::default()));
        let (url, settings) = split(
            "postgres://u@h/db?sslmode=require&schema=app&max_connections=32&min_connections=2\
             &acquire_timeout=500ms&statement_timeout=5s&application_name=x",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=require&application_name=x");
        assert_eq!(
            settings,
            Settings {
                schema: Some("app".into()),
                max_connections: Some(32),
                min_connections: Some(2),
                acquire_timeout: Some(Duration::from_millis(500)),
                statement_timeout: Some("5s".into()),
            }
        );
        assert_eq!(
            split("postgres://u@h/db?schema=app").unwrap().0,
            "postgres://u@h/db"
        );
        assert_eq!(
            split("postgres://h/db?acquire_timeout=2")
                .unwrap()
                .1
                .acquire_timeout,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn bad_values_are_configuration_errors_naming_the_parameter() {
        for (bad, names) in [
            ("postgres://h/db?schema=", "schema"),
            ("postgres://h/db?schema", "schema"),
            ("postgres://h/db?schema=a&schema=b", "schema"),
            ("postgres://h/db?max_connections=0", "max_connections"),
            ("postgres://h/db?max_connections=many", "max_connections"),
            ("postgres://h/db?acquire_timeout=soon", "acquire_timeout"),
            ("postgres://h/db?statement_timeout=5 hours", "statement_timeout"),
            (
                "postgres://h/db?min_connections=5&max_connections=2",
                "min_connections",
            ),
        ] {
            match split(bad) {
                Err(Error::InvalidConfiguration(message)) => {
                    assert!(message.contains(names), "{bad}: {message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
