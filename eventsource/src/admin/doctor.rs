//! `doctor`: what an operator runs first. It checks that the store keeps every write it
//! acknowledges, that its tables have the layout this program writes, how fresh the snapshots
//! of each aggregate type are and how the consumers fare, and prints each finding with what
//! to do; it exits 1 when one is serious.

use serde::Serialize;

use super::output::{thousands, Output};
use super::stats::{streams, subscriptions};
use super::{every_registered, AdminError, Outcome};
use crate::backend::Stores;
use crate::text::escape;

#[derive(Serialize)]
struct Report {
    backend: &'static str,
    /// Whether every durability setting keeps what the store acknowledged.
    durable: bool,
    settings: Vec<SettingView>,
    /// The layout of the tables and the one this program writes, where the store says.
    layout: Option<(i64, i64)>,
    findings: Vec<Finding>,
}

#[derive(Serialize)]
struct SettingView {
    name: &'static str,
    value: String,
    /// What the value risks, if it is unsafe.
    risk: Option<&'static str>,
}

/// Where a warning starts.
pub(super) struct Limits {
    /// Events a load replays after its snapshot, at the 99th percentile of a type's streams.
    pub(super) max_replay: u64,
    /// Events a running consumer is behind the feed.
    pub(super) max_lag: u64,
}

#[derive(Serialize)]
struct Finding {
    /// `durability`, `layout`, `snapshots` or `consumers`.
    area: &'static str,
    /// Whether it risks data or keeps the program from working: the command then exits 1.
    serious: bool,
    what: String,
    todo: String,
}

pub(super) async fn run(
    stores: &Stores,
    limits: Limits,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let durability = stores.durability().await?;
    let mut findings: Vec<Finding> = durability
        .risks()
        .map(|s| Finding {
            area: "durability",
            serious: true,
            what: format!("{} = {}: {}", s.name, s.value, s.risk.unwrap_or_default()),
            todo: "set it as the deployment guide says, or accept the risk knowingly".into(),
        })
        .collect();
    let layout = stores.layout_version().await?;
    match layout {
        Some((applied, latest)) if applied < latest => findings.push(Finding {
            area: "layout",
            serious: true,
            what: format!("the tables have layout {applied}; this program reads and writes layout {latest}"),
            todo: "run the migrations: `admin --migrate ...`, or `Stores::migrate` at start-up".into(),
        }),
        Some((applied, latest)) if applied > latest => findings.push(Finding {
            area: "layout",
            serious: true,
            what: format!("the tables have layout {applied}, newer than this program's {latest}"),
            todo: "run a version of the program that writes that layout".into(),
        }),
        _ => {}
    }
    // The snapshots and the consumers, unless the tables are not there to list them yet.
    if layout.is_none_or(|(applied, latest)| applied == latest) {
        findings.extend(snapshot_findings(stores, &limits).await?);
        for s in subscriptions(stores, &[]).await? {
            if s.state == "active" && s.lag > limits.max_lag {
                findings.push(Finding {
                    area: "consumers",
                    serious: false,
                    what: format!(
                        "{} runs {} event(s) behind the feed (more than {})",
                        escape(&s.name),
                        thousands(s.lag),
                        thousands(limits.max_lag)
                    ),
                    todo: "look again in a minute: if the lag does not shrink, the consumer is too \
                        slow or stuck (see `admin projections status`); run it as a consumer group \
                        with more workers"
                        .into(),
                });
            }
            if s.dead_letters > 0 {
                findings.push(Finding {
                    area: "consumers",
                    serious: false,
                    what: format!(
                        "{} gave up on {} event(s)",
                        escape(&s.name),
                        thousands(s.dead_letters)
                    ),
                    todo: format!(
                        "look at them with `admin deadletters list {0}`; once the code that failed \
                         is fixed, `admin deadletters replay {0} --dry-run`, then without --dry-run",
                        escape(&s.name)
                    ),
                });
            }
            if s.state == "abandoned" {
                findings.push(Finding {
                    area: "consumers",
                    serious: false,
                    what: format!(
                        "{}'s last consumer stopped without letting its lease go (a crash, a kill, \
                         a lost connection), and none runs it now{}",
                        escape(&s.name),
                        match s.lag {
                            0 => String::new(),
                            lag => format!("; {} event(s) behind", thousands(lag)),
                        }
                    ),
                    todo: "start its consumers again, and look at why the last one died (its logs)".into(),
                });
            } else if s.state != "active" && s.lag > 0 && s.checkpoint.is_some() {
                findings.push(Finding {
                    area: "consumers",
                    serious: false,
                    what: format!(
                        "{} is {} event(s) behind and no consumer holds its lease",
                        escape(&s.name),
                        thousands(s.lag)
                    ),
                    todo: "start its consumers, or reset it if it is no longer used".into(),
                });
            }
            if s.held_back > 0 {
                findings.push(Finding {
                    area: "consumers",
                    serious: false,
                    what: format!(
                        "the feed holds back {} stored event(s) from {} while {} runs",
                        thousands(s.held_back),
                        escape(&s.name),
                        s.held_by.as_deref().unwrap_or("a transaction")
                    ),
                    todo: "end the transaction that appends and stays open".into(),
                });
            }
        }
    }
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
        layout,
        findings,
    };
    out.report(&report, |r, out| {
        writeln!(out, "durability of the {} store", r.backend)?;
        for s in &r.settings {
            match s.risk {
                None => writeln!(out, "  ok    {} = {}", s.name, s.value)?,
                Some(risk) => writeln!(out, "  RISK  {} = {}: {risk}", s.name, s.value)?,
            }
        }
        if let Some((applied, latest)) = r.layout {
            writeln!(out, "layout {applied} (this program writes {latest})")?;
        }
        if r.findings.is_empty() {
            return writeln!(out, "no findings");
        }
        writeln!(out, "findings")?;
        for f in &r.findings {
            let level = if f.serious { "SERIOUS" } else { "warning" };
            writeln!(out, "  {level} {}: {}\n    {}", f.area, f.what, f.todo)?;
        }
        Ok(())
    })?;
    Ok(if report.findings.iter().any(|f| f.serious) {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

/// For each registered aggregate type with streams: loads that replay more than the limit
/// after their snapshot, streams whose snapshots this program cannot use, and snapshots of a
/// schema newer than the program's.
async fn snapshot_findings(stores: &Stores, limits: &Limits) -> Result<Vec<Finding>, AdminError> {
    let mut findings = Vec::new();
    for aggregate in every_registered() {
        let (states, snapshots) = streams(stores, aggregate).await?;
        if states.is_empty() {
            continue;
        }
        let name = escape(aggregate.name);
        let rewarm = format!("`admin snapshots rewarm --type {name}`");
        let mut replays: Vec<u64> = states.iter().map(|s| s.staleness()).collect();
        replays.sort_unstable();
        let p99 = replays[((replays.len() - 1) as f64 * 0.99).round() as usize];
        if p99 > limits.max_replay {
            let covered = states.iter().filter(|s| s.usable.is_some()).count();
            findings.push(Finding {
                area: "snapshots",
                serious: false,
                what: format!(
                    "loads of {name} replay up to {} event(s) after their snapshot (99th \
                     percentile {}, more than {}); {} of {} stream(s) start from a snapshot",
                    thousands(replays[replays.len() - 1]),
                    thousands(p99),
                    thousands(limits.max_replay),
                    thousands(covered as u64),
                    thousands(states.len() as u64)
                ),
                todo: format!("{rewarm}, and snapshot more often (the repository's SnapshotPolicy)"),
            });
        }
        let unusable = states.iter().filter(|s| s.stored && s.usable.is_none()).count();
        if unusable > 0 {
            findings.push(Finding {
                area: "snapshots",
                serious: false,
                what: format!(
                    "{} stream(s) of {name} have only snapshots this program cannot use (of a \
                     schema it does not migrate, or past the stream's head): their loads replay \
                     in full",
                    thousands(unusable as u64)
                ),
                todo: rewarm.clone(),
            });
        }
        if let Some(newer) = snapshots
            .iter()
            .map(|s| s.schema_version)
            .filter(|v| *v > aggregate.schema_version)
            .max()
        {
            findings.push(Finding {
                area: "snapshots",
                serious: false,
                what: format!(
                    "{name} has snapshots of schema {newer}, newer than this program's {}",
                    aggregate.schema_version
                ),
                todo: "expected while two releases run side by side; otherwise this program is \
                    older than the one that writes the store"
                    .into(),
            });
        }
    }
    Ok(findings)
}
