//! Whether a store keeps what it acknowledged: the database settings that decide if a
//! committed append survives a crash of the server or a loss of power, read from the store's
//! own connections, with what each unsafe value risks.
//!
//! [`Stores::durability`](super::Stores::durability) reads them; [`open`](super::open) (or,
//! for stores put together from a backend's stores, the first
//! [`Stores::migrate`](super::Stores::migrate)) logs a warning for each unsafe one, and a
//! store URL with `durability=strict` refuses to open a store that has one
//! ([`Error::InvalidConfiguration`]). `admin doctor` prints them. The deployment guide says
//! what each setting risks.

use std::fmt;

use crate::error::{Error, Result};

/// The durability settings of a store, as its connections see them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Durability {
    /// The backend: `memory`, `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Each setting read.
    pub settings: Vec<Setting>,
}

/// One durability setting of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Setting {
    /// The setting's name, as the database spells it.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What the value risks, if it acknowledges writes before they are durable.
    pub risk: Option<&'static str>,
}

impl Setting {
    /// A setting whose value risks `risk` unless `safe`.
    pub(crate) fn new(name: &'static str, value: impl Into<String>, safe: bool, risk: &'static str) -> Self {
        Setting {
            name,
            value: value.into(),
            risk: (!safe).then_some(risk),
        }
    }
}

impl Durability {
    /// Whether every setting keeps what the store acknowledged.
    pub fn is_safe(&self) -> bool {
        self.settings.iter().all(|s| s.risk.is_none())
    }

    /// The settings that acknowledge writes before they are durable.
    pub fn risks(&self) -> impl Iterator<Item = &Setting> {
        self.settings.iter().filter(|s| s.risk.is_some())
    }

    /// In-memory stores keep nothing past the process.
    pub(crate) fn memory() -> Self {
        Durability {
            backend: "memory",
            settings: vec![Setting::new(
                "storage",
                "memory",
                false,
                "every event is lost when the process ends",
            )],
        }
    }

    /// Logs a warning for each unsafe setting.
    pub(crate) fn warn(&self) {
        for setting in self.risks() {
            tracing::warn!(backend = self.backend, setting = setting.name, value = %setting.value, risk = setting.risk, "the store acknowledges writes before they are durable");
        }
    }

    /// [`Error::InvalidConfiguration`] naming every unsafe setting, if there is one.
    pub(crate) fn require(&self) -> Result<()> {
        if self.is_safe() {
            return Ok(());
        }
        Err(Error::InvalidConfiguration(format!(
            "the {} store acknowledges writes before they are durable, and its URL asks for \
             durability=strict: {self}",
            self.backend
        )))
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let risks: Vec<String> = self
            .risks()
            .map(|s| format!("{} = {} ({})", s.name, s.value, s.risk.unwrap_or_default()))
            .collect();
        if risks.is_empty() {
            write!(f, "every durability setting is safe")
        } else {
            write!(f, "{}", risks.join("; "))
        }
    }
}

/// What a store URL's `durability` parameter asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Demand {
    /// Warn, at `migrate`, of each unsafe setting: the default.
    #[default]
    Warn,
    /// Refuse to open a store with an unsafe setting.
    Strict,
}

/// The URL without its `durability` parameter, and what it asks; a value other than `warn` or
/// `strict`, or the parameter given twice, is [`Error::InvalidConfiguration`].
pub(crate) fn demand(url: &str) -> Result<(String, Demand)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Demand::Warn));
    };
    let (mut demand, mut kept) = (None, Vec::new());
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("durability", value)) => {
                let asked = match value {
                    "warn" => Demand::Warn,
                    "strict" => Demand::Strict,
                    other => {
                        return Err(Error::InvalidConfiguration(format!(
                            "the store URL's `durability` must be `warn` or `strict`, not `{}`",
                            other.escape_debug()
                        )))
                    }
                };
                if demand.replace(asked).is_some() {
                    return Err(Error::InvalidConfiguration(
                        "the store URL's `durability` parameter is given twice".into(),
                    ));
                }
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.iter().all(|p| p.is_empty()) {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, demand.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durability_parameter_is_taken_off_the_url() {
        assert_eq!(
            demand("sqlite:a.db").unwrap(),
            ("sqlite:a.db".into(), Demand::Warn)
        );
        assert_eq!(
            demand("postgres://h/db?durability=strict&schema=s").unwrap(),
            ("postgres://h/db?schema=s".into(), Demand::Strict)
        );
        assert_eq!(
            demand("sqlite:a.db?durability=warn").unwrap(),
            ("sqlite:a.db".into(), Demand::Warn)
        );
        for bad in [
            "sqlite:a.db?durability=on",
            "sqlite:a.db?durability=strict&durability=strict",
        ] {
            assert!(
                matches!(demand(bad), Err(Error::InvalidConfiguration(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_report_names_each_risk() {
        let report = Durability {
            backend: "postgres",
            settings: vec![
                Setting::new(
                    "fsync",
                    "off",
                    false,
                    "a crash of the server can corrupt the database",
                ),
                Setting::new("full_page_writes", "on", true, "unused"),
            ],
        };
        assert!(!report.is_safe());
        assert_eq!(report.risks().count(), 1);
        let message = report.require().unwrap_err().to_string();
        assert!(
            message.contains("fsync = off") && !message.contains("full_page_writes"),
            "{message}"
        );
    }
}
