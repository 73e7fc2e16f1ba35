//! `forget SUBJECT`: forgets a data subject in every copy of its personal values and prints
//! what reading each place again found.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::output::{confirm, Output};
use super::{AdminError, Outcome};
use crate::backend::Stores;
use crate::erasure::{Erasure, ErasureReport, PersonalDataHolder};
use crate::text::escape;

/// The reports of one run: one subject's, or every unfinished forgetting's.
#[derive(Serialize)]
struct Forgotten {
    subjects: Vec<ErasureReport>,
}

pub(super) async fn run(
    stores: &Stores,
    holders: Vec<Arc<dyn PersonalDataHolder>>,
    subject: Option<String>,
    settle: Duration,
    yes: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let mut erasure = Erasure::new(stores)?.settle(settle);
    for holder in holders {
        erasure = erasure.holder(holder);
    }
    let subjects = match subject {
        Some(subject) => {
            confirm(
                &format!(
                    "Forget data subject {}: its personal values become unreadable for good",
                    escape(&subject)
                ),
                yes,
            )?;
            vec![subject]
        }
        None => erasure.unfinished().await?,
    };
    let mut reports = Vec::with_capacity(subjects.len());
    for subject in &subjects {
        if !settle.is_zero() && !out.is_json() {
            eprintln!(
                "forgetting {}: waiting up to {}s for other processes' cached keys",
                escape(subject),
                settle.as_secs()
            );
        }
        reports.push(erasure.forget(subject).await?);
    }
    let clean = reports.iter().all(ErasureReport::is_clean);
    out.report(&Forgotten { subjects: reports }, human)?;
    Ok(if clean { Outcome::Clean } else { Outcome::Findings })
}

fn human(forgotten: &Forgotten, out: &mut dyn Write) -> std::io::Result<()> {
    if forgotten.subjects.is_empty() {
        return writeln!(out, "no forgetting is unfinished");
    }
    for report in &forgotten.subjects {
        writeln!(out, "subject {}", escape(&report.subject))?;
        writeln!(out, "  streams holding its values  {}", report.streams)?;
        match report.values_known {
            true => writeln!(out, "  values looked for           {}", report.values_sought)?,
            false => writeln!(
                out,
                "  values looked for           none: the key was deleted by an earlier run"
            )?,
        }
        writeln!(out, "  streams marked              {}", report.streams_marked)?;
        writeln!(
            out,
            "  snapshots                   {} deleted, {} written again",
            report.snapshots_deleted, report.snapshots_rewritten
        )?;
        writeln!(out, "  dead letters redacted       {}", report.letters_redacted)?;
        let holders: Vec<String> = report.holders.iter().map(|h| escape(h).into_owned()).collect();
        writeln!(
            out,
            "  holders told                {}",
            if holders.is_empty() {
                "none".to_owned()
            } else {
                holders.join(", ")
            }
        )?;
        for finding in &report.findings {
            writeln!(out, "  STILL HELD: {}", escape(finding))?;
        }
        match (report.is_clean(), report.key_deleted) {
            (true, true) => writeln!(out, "  erased everywhere; the key is deleted")?,
            _ => writeln!(
                out,
                "  the subject reads as forgotten, but copies remain and the key is kept: fix them and run again"
            )?,
        }
    }
    Ok(())
}
