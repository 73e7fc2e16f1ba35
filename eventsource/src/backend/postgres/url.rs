//! The parameters of a `postgres://` URL that this library reads itself, before sqlx reads
//! the rest: where the tables are and how the pool is sized and bounded. Each value is
//! checked here, against the bounds below, before anything is allocated or connected.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::backend::param::{decoded, Param};
use crate::error::Result;
use crate::slice::SliceCount;

/// What a URL says beyond sqlx's own parameters.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Settings {
    /// `schema=NAME`: the PostgreSQL schema of the stores' tables, a name
    /// [`Layout::in_schema`](super::Layout::in_schema) takes.
    pub schema: Option<String>,
    /// `max_connections=N`: the pool's size (sqlx's default, 10, otherwise).
    pub max_connections: Option<u32>,
    /// `min_connections=N`: connections kept open when idle.
    pub min_connections: Option<u32>,
    /// `acquire_timeout=5s`: how long a call waits for a connection of the pool.
    pub acquire_timeout: Option<Duration>,
    /// `statement_timeout=5s`: the server's bound on each statement.
    pub statement_timeout: Option<Duration>,
    /// `slices=N`: the number of slices of a store created now.
    pub slices: Option<SliceCount>,
}

/// The sizes `max_connections` takes. Each slot of a pool costs memory before any
/// connection is made, and no server takes this many clients from one pool.
const MAX_CONNECTIONS: RangeInclusive<u32> = 1..=10_000;

/// The pool's size when the URL does not give one: sqlx's default.
const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// The durations `acquire_timeout` and `statement_timeout` take: at least a millisecond (the
/// server's resolution; zero would turn the statement bound off, or fail every acquire), at
/// most a day.
const TIMEOUTS: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(24 * 60 * 60);

const BACKEND: &str = "PostgreSQL";

const KEYS: &[&str] = &[
    "schema",
    "max_connections",
    "min_connections",
    "acquire_timeout",
    "statement_timeout",
    "slices",
];

/// The URL without this library's parameters, and what they say. A value that is not what
/// its parameter takes, or a parameter given twice, is [`Error::InvalidConfiguration`]
/// naming the parameter and what it takes.
pub(super) fn split(url: &str) -> Result<(String, Settings)> {
    let mut settings = Settings::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), settings));
    };
    let mut seen = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Read as the driver reads the rest of the URL: percent-decoded.
        let Some(key) = decoded(key).and_then(|key| KEYS.iter().copied().find(|k| *k == key)) else {
            kept.push(pair);
            continue;
        };
        let param = Param::new(BACKEND, key);
        let value = decoded(value).ok_or_else(|| {
            param.refuse_value(
                "holds a `%` not followed by two hexadecimal digits of UTF-8",
                value,
            )
        })?;
        let value = param.value(&value, &mut seen)?;
        match key {
            "schema" => match super::schema_refusal(value) {
                None => settings.schema = Some(value.to_owned()),
                Some(rule) => return Err(param.refuse_value(rule, value)),
            },
            "max_connections" => settings.max_connections = Some(param.count(value, MAX_CONNECTIONS)?),
            "min_connections" => settings.min_connections = Some(param.count(value, MAX_CONNECTIONS)?),
            "acquire_timeout" => settings.acquire_timeout = Some(param.duration(value, TIMEOUTS)?),
            "slices" => settings.slices = Some(param.slice_count(value)?),
            _ => settings.statement_timeout = Some(param.duration(value, TIMEOUTS)?),
        }
    }
    if let Some(min) = settings.min_connections {
        let (max, default) = match settings.max_connections {
            Some(max) => (max, ""),
            None => (DEFAULT_MAX_CONNECTIONS, ", the default"),
        };
        if min > max {
            return Err(Param::new(BACKEND, "min_connections").refuse(format_args!(
                "({min}) must be at most the pool's max_connections ({max}{default})"
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

/// A statement timeout as the server's `statement_timeout` setting, in an explicit unit
/// (a number alone would be read as milliseconds).
pub(super) fn statement_timeout(timeout: Duration) -> String {
    format!("{}ms", timeout.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn the_librarys_parameters_are_percent_decoded_as_the_rest_of_the_url() {
        let (url, settings) =
            split("postgres://u%40x@h/db?sche%6Da=my%5Fapp&statement_timeout=2m&application_name=a%20b")
                .unwrap();
        assert_eq!(
            url, "postgres://u%40x@h/db?application_name=a%20b",
            "the driver's own, as written"
        );
        assert_eq!(settings.schema.as_deref(), Some("my_app"));
        assert_eq!(settings.statement_timeout, Some(Duration::from_secs(120)));
        match split("postgres://h/db?schema=a%zz") {
            Err(Error::InvalidConfiguration(message)) => assert!(message.contains("`schema`"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_librarys_parameters_are_taken_off_the_url() {
        let plain = "postgres://u@h/db";
        assert_eq!(split(plain).unwrap(), (plain.to_owned(), Settings::default()));
        let (url, settings) = split(
            "postgres://u@h/db?sslmode=require&schema=app&max_connections=32&min_connections=2\
             &acquire_timeout=500ms&statement_timeout=5s&slices=256&application_name=x",
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
                statement_timeout: Some(Duration::from_secs(5)),
                slices: Some(SliceCount::new(256).unwrap()),
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
            ("postgres://h/db?slices=100", "slices"),
            ("postgres://h/db?slices=0", "slices"),
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
            ("postgres://h/db?min_connections=11", "min_connections"),
            ("postgres://h/db?max_connections=4294967295", "max_connections"),
            ("postgres://h/db?max_connections=100000000", "max_connections"),
            ("postgres://h/db?max_connections=10001", "max_connections"),
            (
                "postgres://h/db?min_connections=10001&max_connections=10000",
                "min_connections",
            ),
            ("postgres://h/db?acquire_timeout=1e20", "acquire_timeout"),
            (
                "postgres://h/db?acquire_timeout=100000000000000000000",
                "acquire_timeout",
            ),
            ("postgres://h/db?acquire_timeout=0", "acquire_timeout"),
            (
                "postgres://h/db?statement_timeout=100000000000000000000",
                "statement_timeout",
            ),
            ("postgres://h/db?statement_timeout=0.0001ms", "statement_timeout"),
            ("postgres://h/db?statement_timeout=0", "statement_timeout"),
            ("postgres://h/db?statement_timeout=25h", "statement_timeout"),
            ("postgres://h/db?schema=information_schema", "schema"),
            ("postgres://h/db?schema=pg_catalog", "schema"),
            ("postgres://h/db?schema=pg_toast", "schema"),
            ("postgres://h/db?schema=PG_mine", "schema"),
            ("postgres://h/db?schema=9lives", "schema"),
            ("postgres://h/db?schema=a.b", "schema"),
        ] {
            match split(bad) {
                Err(Error::InvalidConfiguration(message)) => {
                    assert!(message.contains(&format!("`{names}`")), "{bad}: {message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn durations_without_a_unit_are_seconds_and_reach_the_server_in_milliseconds() {
        for (value, sent) in [
            ("5", "5000ms"),
            ("1.5", "1500ms"),
            ("200ms", "200ms"),
            ("2min", "120000ms"),
        ] {
            let (_, settings) = split(&format!("postgres://h/db?statement_timeout={value}")).unwrap();
            assert_eq!(
                statement_timeout(settings.statement_timeout.unwrap()),
                sent,
                "{value}"
            );
        }
    }

    #[test]
    fn the_default_pool_size_is_sqlxs() {
        assert_eq!(
            super::super::pool_options().get_max_connections(),
            DEFAULT_MAX_CONNECTIONS
        );
        assert!(split("postgres://h/db?min_connections=10").is_ok());
    }
}
