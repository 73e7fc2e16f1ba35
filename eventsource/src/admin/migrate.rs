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

pub(super) async fn run(
    stores: &Stores,
    print_sql: bool,
    apply: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    // A sharded store: each shard is a database of its own, with a plan of its own.
    if let Some(shards) = stores.shards() {
        for (index, shard) in shards.iter().enumerate() {
            if !out.is_json() {
                out.raw(&format!("shard {index}\n"))?;
            }
            Box::pin(run(shard, print_sql, apply, out)).await?;
        }
        if apply {
            // Each shard checked against the map, now that its tables are there.
            stores.migrate().await?;
        }
        return Ok(Outcome::Clean);
    }
    let plan = stores.migration_plan().await?;
    let backend = stores.backend_name();
    let Some(plan) = plan else {
        let report = Report {
            backend,
            plan: None,
            applied: Vec::new(),
        };
        out.report(&report, |r, out| match r.backend {
            "memory" => writeln!(out, "in-memory stores have no tables to migrate"),
            _ => writeln!(
                out,
                "a {} store is brought up to date whenever it is opened: nothing is pending",
                r.backend
            ),
        })?;
        return Ok(Outcome::Clean);
    };
    // With `--json` the report holds the script anyway.
    if print_sql && !out.is_json() {
        out.raw(&plan.sql())?;
        return Ok(Outcome::Clean);
    }
    let mut applied = Vec::new();
    if apply && !plan.is_current() {
        stores.migrate().await?;
        applied = plan.pending.iter().map(|step| step.version).collect();
    }
    let report = Report {
        backend,
        plan: Some(plan),
        applied,
    };
    out.report(&report, |r, out| {
        let plan = r.plan.as_ref().expect("a plan");
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
    })?;
    Ok(Outcome::Clean)
}
