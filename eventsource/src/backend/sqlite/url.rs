//! The query parameters of a `sqlite:` URL: the library's own (`prefix`, `slices`), taken off the URL,
//! and SQLite's URI parameters, checked and left on it for SQLite.

use super::SqliteOptions;
use crate::backend::param::{decoded, Param};
use crate::error::{Error, Result};

/// SQLite's URI parameters (<https://www.sqlite.org/uri.html>), passed on to SQLite.
const SQLITE_KEYS: &[&str] = &["vfs", "mode", "cache", "psow", "nolock", "immutable"];

/// The library's parameters.
const PREFIX: &str = "prefix";
const SLICES: &str = "slices";

const BACKEND: &str = "SQLite";

/// The URL without the library's parameters, and the options they give. A parameter that
/// neither SQLite nor the library reads, one given twice or without a value, and a value
/// SQLite would not take or would read otherwise than it seems to say (`mode=rwx`,
/// `immutable=maybe`, which SQLite reads as no) is [`Error::InvalidConfiguration`], before
/// anything is opened. SQLite's flags go on to SQLite as `1` or `0`.
pub(super) fn split(url: &str) -> Result<(String, SqliteOptions)> {
    let mut options = SqliteOptions::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), options));
    };
    let mut seen = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        // Read percent-decoded, as SQLite reads its URIs.
        let known = [PREFIX, SLICES].into_iter().chain(SQLITE_KEYS.iter().copied());
        let Some(key) = decoded(raw_key).and_then(|key| known.into_iter().find(|k| *k == key)) else {
            return Err(unknown(raw_key));
        };
        let param = Param::new(BACKEND, key);
        let value = decoded(raw_value).ok_or_else(|| {
            param.refuse_value(
                "holds a `%` not followed by two hexadecimal digits of UTF-8",
                raw_value,
            )
        })?;
        let value = param.value(&value, &mut seen)?;
        let value = match key {
            PREFIX => {
                options = options.prefix(value);
                continue;
            }
            SLICES => {
                options = options.slices(param.slice_count(value)?);
                continue;
            }
            "mode" => param.word(value, &["ro", "rw", "rwc", "memory"])?,
            "cache" => param.word(value, &["shared", "private"])?,
            // Passed on as written: SQLite decodes it.
            "vfs" => raw_value,
            _ if param.flag(value)? => "1",
            _ => "0",
        };
        kept.push(format!("{key}={value}"));
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, options))
}

fn unknown(key: &str) -> Error {
    Error::InvalidConfiguration(format!(
        "the SQLite URL's parameter `{key}` is not one this library or SQLite reads \
         (`{PREFIX}`, or SQLite's {})",
        SQLITE_KEYS
            .iter()
            .map(|key| format!("`{key}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_percent_decoded_as_sqlite_reads_them() {
        assert_eq!(
            split("sqlite:app.db?pre%66ix=app%5F&mode=r%6F&vfs=unix%2Dnone").unwrap(),
            (
                "sqlite:app.db?mode=ro&vfs=unix%2Dnone".into(),
                SqliteOptions::default().prefix("app_")
            )
        );
        match split("sqlite:app.db?prefix=a%2") {
            Err(Error::InvalidConfiguration(message)) => assert!(message.contains("`prefix`"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_prefix_is_taken_off_the_url_and_sqlites_parameters_are_kept() {
        assert_eq!(
            split("sqlite:app.db").unwrap(),
            ("sqlite:app.db".into(), SqliteOptions::default())
        );
        assert_eq!(
            split("sqlite:app.db?prefix=app_").unwrap(),
            ("sqlite:app.db".into(), SqliteOptions::default().prefix("app_"))
        );
        assert_eq!(
            split("sqlite://data/app.db?mode=ro&prefix=p_&cache=shared").unwrap(),
            (
                "sqlite://data/app.db?mode=ro&cache=shared".into(),
                SqliteOptions::default().prefix("p_")
            )
        );
        assert_eq!(split("sqlite::memory:?prefix=a_").unwrap().0, "sqlite::memory:");
        assert_eq!(
            split("sqlite:app.db?slices=64&prefix=p_").unwrap(),
            (
                "sqlite:app.db".into(),
                SqliteOptions::default()
                    .prefix("p_")
                    .slices(crate::slice::SliceCount::new(64).unwrap())
            )
        );
        assert_eq!(
            split("sqlite:app.db?immutable=yes&psow=off&nolock=TRUE&vfs=unix-none")
                .unwrap()
                .0,
            "sqlite:app.db?immutable=1&psow=0&nolock=1&vfs=unix-none"
        );
    }

    #[test]
    fn unknown_empty_and_repeated_parameters_are_configuration_errors_naming_them() {
        for (url, named) in [
            ("sqlite:app.db?prefx=app_", "prefx"),
            ("sqlite:app.db?max_connections=4", "max_connections"),
            ("sqlite:app.db?prefix=", "prefix"),
            ("sqlite:app.db?prefix", "prefix"),
            ("sqlite:app.db?prefix=a_&prefix=b_", "prefix"),
            ("sqlite:app.db?mode=rwx", "mode"),
            ("sqlite:app.db?mode=ro&mode=rw", "mode"),
            ("sqlite:app.db?cache=public", "cache"),
            ("sqlite:app.db?immutable=maybe", "immutable"),
            ("sqlite:app.db?immutable", "immutable"),
            ("sqlite:app.db?psow=2", "psow"),
            ("sqlite:app.db?nolock=4294967296", "nolock"),
            ("sqlite:app.db?vfs=", "vfs"),
            ("sqlite:app.db?slices=1000", "slices"),
            ("sqlite:app.db?slices=0", "slices"),
            ("sqlite:app.db?slices=131072", "slices"),
            ("sqlite:app.db?slices=64&slices=64", "slices"),
        ] {
            match split(url) {
                Err(Error::InvalidConfiguration(message)) => {
                    assert!(message.contains(&format!("`{named}`")), "{url}: {message}")
                }
                other => panic!("{url}: expected InvalidConfiguration, got {other:?}"),
            }
        }
    }
}
