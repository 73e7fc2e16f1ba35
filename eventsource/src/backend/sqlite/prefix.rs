//! The prefix of the stores' table and index names, and the statements named with it.
//!
//! Statements are written as templates in which `{p}` stands before each table and index
//! name; a store replaces it once, when it opens, and keeps the statements it gets.

use std::sync::Arc;

use crate::error::{Error, Result};

/// What a template puts before each table and index name.
const MARK: &str = "{p}";

/// SQLite keeps names that start with this (in any case) for itself.
const RESERVED: &str = "sqlite_";

/// The prefix of a store's table and index names: empty (the names of a database made
/// without one), or ASCII letters, digits and `_`, not starting with a digit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Prefix(Arc<str>);

impl Prefix {
    /// The prefix, or [`Error::InvalidConfiguration`] saying why it is refused.
    pub(super) fn new(prefix: &str) -> Result<Self> {
        match refusal(prefix) {
            None => Ok(Self(Arc::from(prefix))),
            Some(reason) => Err(Error::InvalidConfiguration(format!(
                "SQLite table prefix {prefix:?} {reason}"
            ))),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// The statement `template` names, each `{p}` replaced by the prefix.
    pub(super) fn sql(&self, template: &str) -> String {
        template.replace(MARK, &self.0)
    }
}

/// Why a prefix cannot start table names, if it cannot.
fn refusal(prefix: &str) -> Option<&'static str> {
    if prefix.starts_with(|c: char| c.is_ascii_digit()) {
        return Some("starts with a digit");
    }
    if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some("holds a character other than ASCII letters, digits and `_`");
    }
    let reserved = prefix
        .get(..RESERVED.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(RESERVED));
    reserved.then_some("starts with `sqlite_`, which SQLite keeps for its own tables")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_goes_before_every_name_of_a_template() {
        let prefix = Prefix::new("app_").unwrap();
        assert_eq!(
            prefix.sql("SELECT 1 FROM {p}events JOIN {p}snapshots"),
            "SELECT 1 FROM app_events JOIN app_snapshots"
        );
        assert_eq!(
            Prefix::default().sql("DROP INDEX {p}events_stream"),
            "DROP INDEX events_stream"
        );
        for good in ["", "a", "_", "App_2_", "x9"] {
            assert_eq!(Prefix::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn a_prefix_that_is_not_a_plain_name_is_a_configuration_error() {
        for bad in [
            "1app_",
            "app-",
            "app ",
            "a.b",
            "é_",
            "a\"; DROP TABLE events; --",
            "sqlite_",
            "SQLite_x",
        ] {
            let err = Prefix::new(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidConfiguration(_)), "{bad:?}: {err}");
        }
    }
}
