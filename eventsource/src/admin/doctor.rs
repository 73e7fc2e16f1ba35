//! `doctor`: what an operator runs first. It reads the store's durability settings and says,
//! for each that acknowledges writes before they are durable, what it risks.

use serde::Serialize;

use super::output::Output;
use super::{AdminError, Outcome};
use crate::backend::Stores;

#[derive(Serialize)]
struct Report {
    backend: &'static str,
    /// Whether every durability setting keeps what the store acknowledged.
    durable: bool,
    settings: Vec<SettingView>,
}

#[derive(Serialize)]
struct SettingView {
    name: &'static str,
    value: String,
    /// What the value risks, if it is unsafe.
    risk: Option<&'static str>,
}

pub(super) async fn run(stores: &Stores, out: &mut Output<'_>) -> Result<Outcome, AdminError> {
    let durability = stores.durability().await?;
    let report = Report {
        backend: durability.backend,
        durable: durability.is_safe(),
        settings: durability
            .settings
            .iter()
            .map(|s| SettingView {
                name: s.name,
                value: s.value.clone(),
                risk: s.risk,
            })
            .collect(),
    };
    out.report(&report, |r, out| {
        writeln!(out, "durability of the {} store", r.backend)?;
        for s in &r.settings {
            match s.risk {
                None => writeln!(out, "  ok    {} = {}", s.name, s.value)?,
                Some(risk) => writeln!(out, "  RISK  {} = {}: {risk}", s.name, s.value)?,
            }
        }
        if !r.durable {
            writeln!(
                out,
                "the store acknowledges writes before they are durable: see the deployment guide"
            )?;
        }
        Ok(())
    })?;
    Ok(if report.durable {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}
