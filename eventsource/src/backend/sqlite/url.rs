//! The query parameters of a `sqlite:` URL: the library's own (`prefix`), taken off the URL,
//! and SQLite's URI parameters, left on it for SQLite.

use super::SqliteOptions;
use crate::error::{Error, Result};

/// SQLite's URI parameters (<https://www.sqlite.org/uri.html>), passed on to SQLite.
const SQLITE_KEYS: &[&str] = &["vfs", "mode", "cache", "psow", "nolock", "immutable"];

/// The library's parameters.
const PREFIX: &str = "prefix";

/// The URL without the library's parameters, and the options they give. A parameter that
/// neither SQLite nor the library reads, the library's given twice or without a value, is
/// [`Error::InvalidConfiguration`].
pub(super) fn split(url: &str) -> Result<(String, SqliteOptions)> {
    let mut options = SqliteOptions::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), options));
    };
    let mut prefix = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            PREFIX => prefix = Some(library_value(key, value, prefix.is_some())?),
            _ if SQLITE_KEYS.contains(&key) => kept.push(pair),
            _ => return Err(unknown(key)),
        }
    }
    if let Some(prefix) = prefix {
        options = options.prefix(prefix);
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, options))
}

/// The value of one of the library's parameters, refused if empty or given before.
fn library_value<'a>(key: &str, value: &'a str, seen: bool) -> Result<&'a str> {
    let bad = |why: &str| Error::InvalidConfiguration(format!("the SQLite URL's `{key}` {why}"));
    if seen {
        return Err(bad("parameter is given twice"));
    }
    if value.is_empty() {
        return Err(bad("parameter has no value"));
    }
    Ok(value)
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
    }

    #[test]
    fn unknown_empty_and_repeated_parameters_are_configuration_errors_naming_them() {
        for (url, named) in [
            ("sqlite:app.db?prefx=app_", "prefx"),
            ("sqlite:app.db?max_connections=4", "max_connections"),
            ("sqlite:app.db?prefix=", "prefix"),
            ("sqlite:app.db?prefix", "prefix"),
            ("sqlite:app.db?prefix=a_&prefix=b_", "prefix"),
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
