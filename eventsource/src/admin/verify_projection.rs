//! `projections verify NAME [--sample N | --after P --until Q]`: a projection's rows checked
//! against what today's code makes of their streams (see [`crate::projection::verify`]).

use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use super::output::{thousands, Output};
use super::{every_registered, AdminError, Outcome};
use crate::backend::Stores;
use crate::projection::verify::{Drift, StreamKey};
use crate::projection::Projection;
use crate::text::escape;

/// Streams verified at a time, so the progress bar moves.
const CHUNK: usize = 16;

/// Which streams to verify.
#[derive(Clone, Copy, Debug)]
pub(super) enum Streams {
    /// This many, chosen evenly at random among the streams of the types the projection takes.
    Sample(usize),
    /// Those with events the projection takes in the feed after a position up to another.
    Between(u64, u64),
}

#[derive(Serialize)]
struct Verified {
    name: String,
    verified: usize,
    rows: usize,
    drifted: usize,
    /// Streams the projection kept applying events of while they were read: not compared.
    moving: Vec<StreamKey>,
    /// The first drifted streams, in full.
    shown: Vec<Drift>,
}

pub(super) async fn run(
    stores: &Stores,
    projection: &Arc<Projection>,
    streams: Streams,
    show: usize,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let streams = match streams {
        Streams::Sample(n) => sample(stores, projection, n).await?,
        Streams::Between(after, until) => {
            if until <= after {
                return Err(AdminError::Refused(format!(
                    "--until ({until}) must be after --after ({after})"
                )));
            }
            projection.streams_between(after, until).await?
        }
    };
    let name = projection.name().to_owned();
    let bar = out.progress(streams.len() as u64, &format!("verifying {}", escape(&name)));
    let mut report = Verified {
        name,
        verified: 0,
        rows: 0,
        drifted: 0,
        moving: Vec::new(),
        shown: Vec::new(),
    };
    for chunk in streams.chunks(CHUNK) {
        let found = projection.verify(chunk).await?;
        report.verified += found.verified;
        report.rows += found.rows;
        report.drifted += found.drifted.len();
        report.moving.extend(found.moving);
        let room = show.saturating_sub(report.shown.len());
        report.shown.extend(found.drifted.into_iter().take(room));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    out.report(&report, |r, out| {
        writeln!(
            out,
            "{}: verified {} streams ({} rows), {} differ from a rebuild with today's code",
            escape(&r.name),
            thousands(r.verified as u64),
            thousands(r.rows as u64),
            thousands(r.drifted as u64)
        )?;
        for d in &r.shown {
            writeln!(
                out,
                "  {} ({} events, up to position {}):",
                escape(&d.stream.to_string()),
                d.events,
                d.applied_up_to
            )?;
            if let Some(failed) = &d.failed {
                writeln!(out, "    the projection fails on its events: {}", escape(failed))?;
            }
            for row in &d.live_only {
                writeln!(out, "    - live     {} {}", escape(&row.table), escape(&row.values.to_string()))?;
            }
            for row in &d.rebuilt_only {
                writeln!(out, "    + rebuilt  {} {}", escape(&row.table), escape(&row.values.to_string()))?;
            }
        }
        if r.drifted > r.shown.len() {
            writeln!(out, "  ... and {} more", r.drifted - r.shown.len())?;
        }
        if !r.moving.is_empty() {
            writeln!(
                out,
                "  {} streams not compared: the projection kept applying their events while they were read",
                r.moving.len()
            )?;
        }
        if r.drifted > 0 {
            writeln!(
                out,
                "  rebuild {} (projections rebuild, or a new name built beside it) to apply today's code to every event",
                escape(&r.name)
            )?;
        }
        Ok(())
    })?;
    Ok(match report.drifted {
        0 => Outcome::Clean,
        _ => Outcome::Findings,
    })
}

/// Up to `n` streams of the aggregate types `projection` takes (every registered type, if
/// it takes all), chosen evenly at random.
async fn sample(stores: &Stores, projection: &Projection, n: usize) -> Result<Vec<StreamKey>, AdminError> {
    let types: Vec<String> = match &projection.subscription().options().aggregate_types {
        types if types.is_empty() => every_registered().iter().map(|a| a.name.to_owned()).collect(),
        types => types.clone(),
    };
    // A random key orders every stream evenly.
    let mut candidates: Vec<(u128, StreamKey)> = Vec::new();
    for aggregate_type in types {
        for (id, _) in stores.stream_versions(&aggregate_type).await? {
            candidates.push((Uuid::new_v4().as_u128(), StreamKey::new(&*aggregate_type, id)));
        }
    }
    candidates.sort_unstable();
    Ok(candidates.into_iter().take(n).map(|(_, s)| s).collect())
}
