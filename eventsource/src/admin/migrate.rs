//! `migrate`: the layout of the tables, the steps pending, their SQL for a review, and
//! applying them; on a sharded store, for each shard in turn.

use serde::Serialize;

use super::output::Output;
use super::{AdminError, Outcome};
use crate::backend::migration::MigrationPlan;
use crate::backend::Stores;

#[derive(Serialize)]
struct Report {
    backend: &'static str,
    /// The plan before this command, `None` where the stores migrate when opened.
    plan: Option<MigrationPlan>,
    /// The steps this command applied.
    applied: Vec<i64>,
}

/// The shards' reports, as one document.
#[derive(Serialize)]
struct Shards {
    shards: Vec<Report>,
}

pub(super) async fn run(
    stores: &Stores,
    print_sql: bool,
    apply: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    // Text with `--print-sql` is the script alone; with `--json` the report holds it anyway.
    let script_only = print_sql && !out.is_json();
    let apply = apply && !script_only;
    // A sharded store: each shard is a database of its own, with a plan of its own.
    if let Some(shards) = stores.shards() {
        let mut reports = Vec::with_capacity(shards.len());
        for shard in shards {
            reports.push(migrate(shard, apply).await?);
        }
        if apply {
            // Each shard checked against the map, now that its tables are there.
            stores.migrate().await?;
        }
        if out.is_json() {
            out.report(&Shards { shards: reports }, |_, _| Ok(()))?;
        } else {
            for (index, report) in reports.iter().enumerate() {
                // A comment, where the output is a script.
                let marker = if script_only { "-- " } else { "" };
                out.raw(&format!("{marker}shard {index}\n"))?;
                show(report, script_only, out)?;
            }
        }
        return Ok(Outcome::Clean);
    }
    let report = migrate(stores, apply).await?;
    show(&report, script_only, out)?;
    Ok(Outcome::Clean)
}

/// The layout and plan of `stores`, and the steps applied if `apply`.
async fn migrate(stores: &Stores, apply: bool) -> Result<Report, AdminError> {
    let backend = stores.backend_name();
    let Some(plan) = stores.migration_plan().await? else {
        return Ok(Report {
            backend,
            plan: None,
            applied: Vec::new(),
        });
    };
    let mut applied = Vec::new();
    if apply && !plan.is_current() {
        stores.migrate().await?;
        applied = plan.pending.iter().map(|step| step.version).collect();
    }
    Ok(Report {
        backend,
        plan: Some(plan),
        applied,
    })
}

/// Writes `report`: the script alone if `script_only`, else the layout and the steps.
fn show(report: &Report, script_only: bool, out: &mut Output<'_>) -> Result<(), AdminError> {
    match &report.plan {
        Some(plan) if script_only => return out.raw(&plan.sql()),
        _ => {}
    }
    out.report(report, |r, out| {
        let Some(plan) = r.plan.as_ref() else {
            return match r.backend {
                "memory" => writeln!(out, "in-memory stores have no tables to migrate"),
                _ => writeln!(
                    out,
                    "a {} store is brought up to date whenever it is opened: nothing is pending",
                    r.backend
                ),
            };
        };
        writeln!(
            out,
            "the tables have layout {}; this program reads and writes layout {}",
            plan.applied, plan.latest
        )?;
        if plan.is_current() {
            return writeln!(out, "nothing is pending");
        }
        let verb = if r.applied.is_empty() {
            "pending"
        } else {
            "applied"
        };
        for step in &plan.pending {
            writeln!(out, "  {verb}  {:>3}  {}", step.version, step.description)?;
        }
        if r.applied.is_empty() {
            writeln!(
                out,
                "`migrate --print-sql` prints them as SQL; `migrate --apply` applies them"
            )?;
        }
        Ok(())
    })
}
