//! `snapshots rewarm | verify | invalidate`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use super::output::{confirm, rate, thousands, took, Output};
use super::stats::streams;
use super::{registered, AdminError, Outcome, SnapshotsCommand};
use crate::backend::Stores;
use crate::registry::AggregateRegistration;
use crate::repository::AggregateOperations;
use crate::snapshot::MissReason;
use crate::text::escape;

/// Failures shown in full; the others are counted.
const FAILURES_SHOWN: usize = 10;

pub(super) async fn run(
    stores: &Stores,
    command: SnapshotsCommand,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    match command {
        SnapshotsCommand::Rewarm {
            aggregate_type,
            concurrency,
            min_behind,
            limit,
        } => {
            rewarm(
                stores,
                &aggregate_type,
                concurrency as usize,
                min_behind,
                limit,
                out,
            )
            .await
        }
        SnapshotsCommand::Verify {
            aggregate_type,
            sample,
            show,
        } => verify(stores, &aggregate_type, sample, show, out).await,
        SnapshotsCommand::Invalidate {
            aggregate_type,
            below,
            yes,
        } => invalidate(stores, &aggregate_type, below, yes, out).await,
    }
}

fn operations(aggregate: &AggregateRegistration) -> Result<&'static dyn AggregateOperations, AdminError> {
    crate::repository::operations_of(aggregate.name).ok_or_else(|| {
        AdminError::Refused(format!(
            "`{}` is a generic state: its snapshots are written by the program that names its type arguments",
            escape(aggregate.name)
        ))
    })
}

#[derive(Serialize)]
struct Rewarmed {
    aggregate_type: &'static str,
    schema_version: u32,
    /// Streams that needed a snapshot.
    due: u64,
    warmed: u64,
    /// Streams already warm (their current-schema snapshot less than `min_behind` behind).
    skipped: u64,
    /// Streams due but left for a later run by `--limit`.
    left: u64,
    /// Streams whose store kept a newer snapshot than the one replayed: a live save's, or
    /// one beyond the stream's head (which the stream's next load discards).
    kept_newer: u64,
    failed: u64,
    failures: Vec<Failure>,
    /// Events the warmed snapshots save each load of their streams.
    events_saved: u64,
    seconds: f64,
    streams_per_second: f64,
}

#[derive(Serialize)]
struct Failure {
    aggregate_id: Uuid,
    error: String,
}

async fn rewarm(
    stores: &Stores,
    aggregate_type: &str,
    concurrency: usize,
    min_behind: u64,
    limit: Option<u64>,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let aggregate = registered(aggregate_type)?;
    let operations = operations(aggregate)?;
    let (streams, _) = streams(stores, aggregate).await?;
    let total = streams.len() as u64;
    let mut due: Vec<_> = streams.into_iter().filter(|s| s.behind() >= min_behind).collect();
    let skipped = total - due.len() as u64;
    // Busiest first: the streams whose loads replay the most.
    due.sort_by(|a, b| b.behind().cmp(&a.behind()).then(b.version.cmp(&a.version)));
    let all_due = due.len() as u64;
    if let Some(limit) = limit {
        due.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let started = Instant::now();
    let bar = out.progress(due.len() as u64, &format!("warming {}", escape(aggregate.name)));
    let mut report = Rewarmed {
        aggregate_type: aggregate.name,
        schema_version: aggregate.schema_version,
        due: due.len() as u64,
        warmed: 0,
        skipped,
        left: all_due - due.len() as u64,
        kept_newer: 0,
        failed: 0,
        failures: Vec::new(),
        events_saved: 0,
        seconds: 0.0,
        streams_per_second: 0.0,
    };
    let mut warming = futures_util::stream::iter(due.into_iter().map(|stream| {
        let warm = operations.warm_snapshot(
            stores.events.clone(),
            stores.snapshots.clone(),
            stores.keys.clone(),
            stream.id,
        );
        async move { (stream, warm.await) }
    }))
    .buffer_unordered(concurrency);
    while let Some((stream, warmed)) = warming.next().await {
        match warmed {
            Ok(None) => report.kept_newer += 1,
            Ok(Some(version)) => {
                report.warmed += 1;
                report.events_saved += version - stream.current.unwrap_or(0).min(version);
            }
            Err(e) => {
                report.failed += 1;
                if report.failures.len() < FAILURES_SHOWN {
                    report.failures.push(Failure {
                        aggregate_id: stream.id,
                        error: e.to_string(),
                    });
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    report.seconds = elapsed.as_secs_f64();
    report.streams_per_second = rate(report.warmed, elapsed);
    out.report(&report, |r, out| {
        writeln!(
            out,
            "{}: warmed {} of {} streams due in {} ({:.0} streams/s), {} already warm, {} failed",
            escape(r.aggregate_type),
            thousands(r.warmed),
            thousands(r.due),
            took(elapsed),
            r.streams_per_second,
            thousands(r.skipped),
            thousands(r.failed)
        )?;
        writeln!(
            out,
            "  loads of these streams now replay {} fewer events",
            thousands(r.events_saved)
        )?;
        if r.left > 0 {
            writeln!(out, "  {} more due, left by --limit for a later run", thousands(r.left))?;
        }
        if r.kept_newer > 0 {
            writeln!(
                out,
                "  {} kept a newer snapshot (a live save's, or one beyond the stream's head, which its next load discards)",
                thousands(r.kept_newer)
            )?;
        }
        write_failures(&r.failures, r.failed, out)
    })?;
    Ok(if report.failed > 0 {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

fn write_failures(failures: &[Failure], failed: u64, out: &mut dyn Write) -> std::io::Result<()> {
    for f in failures {
        writeln!(out, "  {}: {}", f.aggregate_id, escape(&f.error))?;
    }
    if failed > failures.len() as u64 {
        writeln!(out, "  ... and {} more", failed - failures.len() as u64)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Verified {
    aggregate_type: &'static str,
    /// Aggregates verified.
    verified: u64,
    /// Of them, loaded from a snapshot.
    with_snapshot: u64,
    drifted: u64,
    /// The first drifted aggregates, with where they differ.
    shown: Vec<DriftedAggregate>,
    /// Stored snapshots a load did not use, by reason (`schema_mismatch`: of an older schema
    /// with no migration; `history_mismatch` and `beyond_stream_head`: deleted by the load).
    unusable: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct DriftedAggregate {
    aggregate_id: Uuid,
    version: u64,
    snapshot_version: Option<u64>,
    differences: Vec<String>,
}

async fn verify(
    stores: &Stores,
    aggregate_type: &str,
    sample: usize,
    show: usize,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let aggregate = registered(aggregate_type)?;
    let operations = operations(aggregate)?;
    let (streams, _) = streams(stores, aggregate).await?;
    // Only aggregates with a stored snapshot can drift (or have an unusable one); a random
    // key orders them evenly.
    let mut candidates: Vec<(u128, Uuid)> = streams
        .iter()
        .filter(|s| s.stored)
        .map(|s| (Uuid::new_v4().as_u128(), s.id))
        .collect();
    candidates.sort_unstable();
    let ids: Vec<Uuid> = candidates.into_iter().take(sample).map(|(_, id)| id).collect();
    let bar = out.progress(ids.len() as u64, &format!("verifying {}", escape(aggregate.name)));
    let mut drifted = Vec::new();
    let mut unusable: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut verified, mut with_snapshot) = (0, 0);
    // In chunks, so the bar moves.
    for chunk in ids.chunks(16) {
        let report = operations
            .verify(
                stores.events.clone(),
                stores.snapshots.clone(),
                stores.keys.clone(),
                chunk.to_vec(),
            )
            .await?;
        verified += report.verified;
        with_snapshot += report.with_snapshot;
        drifted.extend(report.drifted);
        for (_, reason) in report.unusable {
            *unusable.entry(reason.as_str()).or_insert(0) += 1;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let report = Verified {
        aggregate_type: aggregate.name,
        verified,
        with_snapshot,
        drifted: drifted.len() as u64,
        shown: drifted
            .iter()
            .take(show)
            .map(|v| DriftedAggregate {
                aggregate_id: v.aggregate_id,
                version: v.version,
                snapshot_version: v.snapshot_version,
                differences: v.drift.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        unusable,
    };
    out.report(&report, |r, out| {
        writeln!(
            out,
            "{}: verified {} aggregates ({} from a snapshot), {} drifted from their history",
            escape(r.aggregate_type),
            thousands(r.verified),
            thousands(r.with_snapshot),
            thousands(r.drifted)
        )?;
        for d in &r.shown {
            let at = d.snapshot_version.map_or("-".to_owned(), |v| v.to_string());
            writeln!(out, "  {} at version {} (snapshot at {at}):", d.aggregate_id, d.version)?;
            for difference in &d.differences {
                writeln!(out, "    {}", escape(difference))?;
            }
        }
        if r.drifted > r.shown.len() as u64 {
            writeln!(out, "  ... and {} more", r.drifted - r.shown.len() as u64)?;
        }
        for (reason, n) in &r.unusable {
            writeln!(out, "  {} snapshots not used: {reason}", thousands(*n))?;
        }
        if r.drifted > 0 {
            writeln!(
                out,
                "  bump the schema version of {} (its old snapshots are then ignored), or invalidate its snapshots",
                escape(r.aggregate_type)
            )?;
        }
        Ok(())
    })?;
    // Snapshots of an older schema are expected after a bump; any other unusable one is a finding.
    let broken = report
        .unusable
        .keys()
        .any(|r| *r != MissReason::SchemaMismatch.as_str());
    Ok(if report.drifted > 0 || broken {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

#[derive(Serialize)]
struct Invalidated {
    aggregate_type: String,
    below: Option<u32>,
    deleted: u64,
}

async fn invalidate(
    stores: &Stores,
    aggregate_type: &str,
    below: Option<u32>,
    yes: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let stored = stores.snapshot_versions(aggregate_type).await?;
    let doomed = stored
        .iter()
        .filter(|s| below.is_none_or(|b| s.schema_version < b))
        .count() as u64;
    let which = match below {
        Some(b) => format!("of a schema version below {b}"),
        None => "of every schema version".to_owned(),
    };
    if doomed > 0 {
        confirm(
            &format!(
                "Delete {} snapshots of {} {which}",
                thousands(doomed),
                escape(aggregate_type)
            ),
            yes,
        )?;
    }
    let deleted = if doomed > 0 {
        crate::snapshot::delete_snapshots_by_type(&*stores.snapshots, aggregate_type, below).await?
    } else {
        0
    };
    let report = Invalidated {
        aggregate_type: aggregate_type.to_owned(),
        below,
        deleted,
    };
    out.report(&report, |r, out| {
        writeln!(
            out,
            "{}: deleted {} snapshots {which}",
            escape(&r.aggregate_type),
            thousands(r.deleted)
        )
    })?;
    Ok(Outcome::Clean)
}
