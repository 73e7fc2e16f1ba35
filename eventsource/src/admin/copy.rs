//! `copy --to URL`: the offline resharding step, every event of the store copied into another
//! (see [`crate::backend::sharded::copy`]), then the two compared stream by stream.

use serde::Serialize;

use super::output::{confirm, thousands, Output};
use super::{AdminError, Outcome};
use crate::backend::sharded::{self, StreamDifference};
use crate::backend::Stores;
use crate::text::escape;

#[derive(Serialize)]
struct Report {
    copied: u64,
    present: u64,
    requests: u64,
    subjects: u64,
    streams: u64,
    events: u64,
    differences: Vec<Difference>,
}

#[derive(Serialize)]
struct Difference {
    aggregate_type: String,
    aggregate_id: uuid::Uuid,
    source_events: u64,
    target_events: u64,
}

impl From<&StreamDifference> for Difference {
    fn from(d: &StreamDifference) -> Self {
        Difference {
            aggregate_type: d.aggregate_type.clone(),
            aggregate_id: d.aggregate_id,
            source_events: d.source.0,
            target_events: d.target.0,
        }
    }
}

pub(super) async fn run(
    stores: &Stores,
    to: &str,
    show: usize,
    yes: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    confirm(
        "Copy every event of this store into the store of --to (stop the application first)",
        yes,
    )?;
    let target = crate::backend::open(to).await?;
    target.migrate().await?;
    let total = super::shards::feed_head(stores, 0).await?.events_after;
    let bar = out.progress(total, "copying");
    let copied = sharded::copy(stores, &target, |done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    let comparison = sharded::compare(stores, &target).await?;
    let report = Report {
        copied: copied.events,
        present: copied.present,
        requests: copied.requests,
        subjects: copied.subjects,
        streams: comparison.streams,
        events: comparison.events,
        differences: comparison.differences.iter().map(Difference::from).collect(),
    };
    out.report(&report, |r, out| {
        writeln!(
            out,
            "copied {} events ({} already there, {} batches with their request id) and the keys of {} data subjects; {} streams, {} events compared",
            thousands(r.copied),
            thousands(r.present),
            thousands(r.requests),
            thousands(r.subjects),
            thousands(r.streams),
            thousands(r.events)
        )?;
        if r.differences.is_empty() {
            return writeln!(out, "every stream holds the same events in both stores");
        }
        writeln!(out, "{} streams differ:", thousands(r.differences.len() as u64))?;
        for d in r.differences.iter().take(show) {
            writeln!(
                out,
                "  {} {}: {} events here, {} in the copy",
                escape(&d.aggregate_type),
                d.aggregate_id,
                d.source_events,
                d.target_events
            )?;
        }
        Ok(())
    })?;
    Ok(if report.differences.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}
