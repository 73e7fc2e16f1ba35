//! `stats`: per aggregate type, streams, events, snapshots and how fresh they are; per
//! subscription and projection, where it is.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use super::output::{thousands, Output};
use super::shards::{feed_head, shard_stats, write_shards, ShardStats};
use super::{every_registered, registered, AdminError, Outcome};
use crate::backend::Stores;
use crate::group::{self, GroupStatus};
use crate::projection::Projection;
use crate::registry::AggregateRegistration;
use crate::snapshot::SnapshotVersion;
use crate::subscription::names::{self, group_of_layout, Entry};
use crate::subscription::SubscriptionStatus;
use crate::text::escape;

/// One stream and the snapshots a load of it would find.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamState {
    pub(super) id: Uuid,
    pub(super) version: u64,
    /// The version of the snapshot a load uses (of the current schema, or of an older one it
    /// migrates), if any.
    pub(super) usable: Option<u64>,
    /// The version of the current schema's snapshot, if any.
    pub(super) current: Option<u64>,
    /// Whether a load reads a snapshot of this stream at all (usable or not).
    pub(super) stored: bool,
}

impl StreamState {
    /// Events a load replays after its snapshot.
    pub(super) fn staleness(&self) -> u64 {
        self.version - self.usable.unwrap_or(0)
    }

    /// Events past the current schema's snapshot: what a warm-up would save.
    pub(super) fn behind(&self) -> u64 {
        self.version - self.current.unwrap_or(0)
    }
}

/// Every stream of the type, with its snapshots, and every snapshot of the type.
pub(super) async fn streams(
    stores: &Stores,
    aggregate: &AggregateRegistration,
) -> Result<(Vec<StreamState>, Vec<SnapshotVersion>), AdminError> {
    let versions = stores.stream_versions(aggregate.name).await?;
    let snapshots = stores.snapshot_versions(aggregate.name).await?;
    // The snapshot a load reads: the highest schema not above the program's.
    let mut read: HashMap<Uuid, SnapshotVersion> = HashMap::new();
    let mut current: HashMap<Uuid, u64> = HashMap::new();
    for snapshot in snapshots
        .iter()
        .filter(|s| s.schema_version <= aggregate.schema_version)
    {
        if snapshot.schema_version == aggregate.schema_version {
            current.insert(snapshot.aggregate_id, snapshot.version);
        }
        let best = read.entry(snapshot.aggregate_id).or_insert(*snapshot);
        if snapshot.schema_version > best.schema_version {
            *best = *snapshot;
        }
    }
    let states = versions
        .into_iter()
        .map(|(id, version)| {
            // Beyond the head, or of a schema that does not migrate: the load replays in full.
            let fits = |v: u64| (v <= version).then_some(v);
            StreamState {
                id,
                version,
                usable: read
                    .get(&id)
                    .filter(|s| s.schema_version >= aggregate.migrates_from)
                    .and_then(|s| fits(s.version)),
                current: current.get(&id).copied().and_then(fits),
                stored: read.contains_key(&id),
            }
        })
        .collect();
    Ok((states, snapshots))
}

#[derive(Serialize)]
struct Stats {
    /// Each shard of a sharded store; none for one database.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shards: Vec<ShardStats>,
    aggregates: Vec<AggregateStats>,
    subscriptions: Vec<SubscriptionStats>,
}

#[derive(Serialize)]
struct AggregateStats {
    aggregate_type: &'static str,
    schema_version: u32,
    streams: u64,
    events: u64,
    /// Stored snapshots by schema version.
    snapshots: BTreeMap<u32, u64>,
    /// Streams whose load starts from a snapshot.
    covered: u64,
    /// `covered / streams`, 1 for a type with no stream.
    coverage: f64,
    /// Events a load replays after its snapshot (all of them without one).
    staleness: Distribution,
}

#[derive(Serialize, Default)]
struct Distribution {
    mean: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

impl Distribution {
    fn of(mut values: Vec<u64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Distribution {
            mean: values.iter().sum::<u64>() as f64 / values.len() as f64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

#[derive(Serialize)]
pub(super) struct SubscriptionStats {
    pub(super) name: String,
    pub(super) checkpoint: Option<u64>,
    /// Events after the checkpoint, shown by the feed or held back.
    pub(super) lag: u64,
    /// Of those, the events stored but not shown by the feed yet.
    pub(super) held_back: u64,
    /// What holds the feed back, where the store tells.
    pub(super) held_by: Option<String>,
    /// `active` (a consumer holds the lease), `abandoned` (the last one's lease ran out
    /// without being let go: it crashed or was killed, and none runs it now), `idle`, or
    /// `never run`.
    pub(super) state: &'static str,
    pub(super) owner: Option<Uuid>,
    pub(super) dead_letters: u64,
    /// Whether this program names it as a projection (it can rebuild it).
    pub(super) projection: bool,
    /// Its consumer group, if it runs as one: then the checkpoint is its lowest range's, the
    /// lag its highest, the dead letters those of every range.
    pub(super) group: Option<GroupStats>,
}

/// A consumer group in one row: see [`SubscriptionStats::group`].
#[derive(Serialize)]
pub(super) struct GroupStats {
    pub(super) layout: u32,
    pub(super) ranges: usize,
    pub(super) workers: usize,
}

pub(super) async fn run(
    stores: &Stores,
    only: Option<&str>,
    projections: &[Arc<Projection>],
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let aggregates = match only {
        Some(name) => vec![registered(name)?],
        None => every_registered(),
    };
    let mut stats = Stats {
        shards: shard_stats(stores).await,
        aggregates: Vec::new(),
        subscriptions: subscriptions(stores, projections).await?,
    };
    for aggregate in aggregates {
        stats.aggregates.push(aggregate_stats(stores, aggregate).await?);
    }
    out.report(&stats, write_stats)?;
    Ok(Outcome::Clean)
}

async fn aggregate_stats(
    stores: &Stores,
    aggregate: &'static AggregateRegistration,
) -> Result<AggregateStats, AdminError> {
    let (streams, snapshots) = streams(stores, aggregate).await?;
    let mut by_schema = BTreeMap::new();
    for snapshot in &snapshots {
        *by_schema.entry(snapshot.schema_version).or_insert(0) += 1;
    }
    let covered = streams.iter().filter(|s| s.usable.is_some()).count() as u64;
    Ok(AggregateStats {
        aggregate_type: aggregate.name,
        schema_version: aggregate.schema_version,
        streams: streams.len() as u64,
        events: streams.iter().map(|s| s.version).sum(),
        snapshots: by_schema,
        covered,
        coverage: if streams.is_empty() {
            1.0
        } else {
            covered as f64 / streams.len() as f64
        },
        staleness: Distribution::of(streams.iter().map(StreamState::staleness).collect()),
    })
}

/// Every subscription of the store, and every projection the program names that never ran.
pub(super) async fn subscriptions(
    stores: &Stores,
    projections: &[Arc<Projection>],
) -> Result<Vec<SubscriptionStats>, AdminError> {
    let mut listed = stores.subscriptions.subscriptions().await?;
    let groups = grouped(stores, &mut listed).await?;
    for projection in projections {
        let grouped = groups.iter().any(|(g, _)| g.name == projection.name());
        if !grouped && !listed.iter().any(|s| s.name == projection.name()) {
            listed.push(SubscriptionStatus {
                name: projection.name().to_owned(),
                checkpoint: None,
                owner: None,
                dead_letters: 0,
                abandoned: false,
            });
        }
    }
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let mut stats = Vec::with_capacity(listed.len());
    for status in listed {
        let head = feed_head(stores, status.checkpoint.unwrap_or(0)).await?;
        stats.push(SubscriptionStats {
            projection: projections.iter().any(|p| p.name() == status.name),
            state: match (status.owner, status.checkpoint) {
                (Some(_), _) => "active",
                (None, _) if status.abandoned => "abandoned",
                (None, Some(_)) => "idle",
                (None, None) => "never run",
            },
            name: status.name,
            checkpoint: status.checkpoint,
            lag: head.lag(),
            held_back: head.held_back,
            held_by: head.held_by.as_ref().map(ToString::to_string),
            owner: status.owner,
            dead_letters: status.dead_letters,
            group: None,
        });
    }
    for (group, dead_letters) in groups {
        let lag = group.ranges.iter().map(|r| r.lag).max().unwrap_or(0);
        let checkpoints: Option<Vec<u64>> = group.ranges.iter().map(|r| r.checkpoint).collect();
        let checkpoint = checkpoints.and_then(|c| c.into_iter().min());
        // What holds the feed back, counted from the lowest range, not from the beginning.
        let head = feed_head(stores, checkpoint.unwrap_or(0)).await?;
        stats.push(SubscriptionStats {
            projection: projections.iter().any(|p| p.name() == group.name),
            state: if group.ranges.iter().any(|r| r.owner.is_some()) {
                "active"
            } else if group.ranges.iter().any(|r| r.abandoned) {
                "abandoned"
            } else {
                "idle"
            },
            checkpoint,
            lag,
            held_back: head.held_back,
            held_by: head.held_by.as_ref().map(ToString::to_string),
            owner: None,
            dead_letters,
            group: Some(GroupStats {
                layout: group.layout,
                ranges: group.ranges.len(),
                workers: group.workers,
            }),
            name: group.name,
        });
    }
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(stats)
}

/// The consumer groups among `listed`, each with the dead letters of all its names, which are
/// taken off the list.
async fn grouped(
    stores: &Stores,
    listed: &mut Vec<SubscriptionStatus>,
) -> Result<Vec<(GroupStatus, u64)>, AdminError> {
    let names: std::collections::BTreeSet<String> = listed
        .iter()
        .filter_map(|s| group_of_layout(&s.name).map(str::to_owned))
        .collect();
    let mut groups = Vec::new();
    for name in names {
        let dead_letters = listed
            .iter()
            .filter(|s| names::parse(&name, &s.name).is_some())
            .map(|s| s.dead_letters)
            .sum();
        match group::status(
            &*stores.events,
            stores.slice_feed.as_deref(),
            &*stores.subscriptions,
            &stores.slice_parts().await?,
            &name,
        )
        .await?
        {
            Some(status) => {
                listed.retain(|s| names::parse(&name, &s.name).is_none());
                groups.push((status, dead_letters));
            }
            // A group that was reset: its name as one that never ran, without the rows of
            // its old ranges.
            None => {
                let single = listed.iter().any(|s| s.name == name);
                listed.retain(|s| !matches!(names::parse(&name, &s.name), Some(e) if e != Entry::Single));
                if !single {
                    listed.push(SubscriptionStatus {
                        name,
                        checkpoint: None,
                        owner: None,
                        dead_letters,
                        abandoned: false,
                    });
                }
            }
        }
    }
    Ok(groups)
}

fn write_stats(stats: &Stats, out: &mut dyn Write) -> std::io::Result<()> {
    write_shards(&stats.shards, out)?;
    for a in &stats.aggregates {
        writeln!(
            out,
            "{} (schema version {})",
            escape(a.aggregate_type),
            a.schema_version
        )?;
        if a.streams == 0 {
            writeln!(out, "  no streams\n")?;
            continue;
        }
        writeln!(out, "  streams    {}", thousands(a.streams))?;
        writeln!(out, "  events     {}", thousands(a.events))?;
        let snapshots: Vec<String> = a
            .snapshots
            .iter()
            .map(|(schema, n)| format!("{} of schema {schema}", thousands(*n)))
            .collect();
        writeln!(
            out,
            "  snapshots  {}",
            if snapshots.is_empty() {
                "none".to_owned()
            } else {
                snapshots.join(", ")
            }
        )?;
        writeln!(
            out,
            "  coverage   {:.1}% ({} of {} streams load from a snapshot)",
            a.coverage * 100.0,
            thousands(a.covered),
            thousands(a.streams)
        )?;
        let s = &a.staleness;
        writeln!(
            out,
            "  staleness  events replayed after the snapshot: mean {:.1}, p50 {}, p90 {}, p99 {}, max {}",
            s.mean, s.p50, s.p90, s.p99, s.max
        )?;
        writeln!(out)?;
    }
    write_subscriptions(&stats.subscriptions, out)
}

/// What a subscription is, as the listings show it.
pub(super) fn kind(s: &SubscriptionStats) -> String {
    let kind = if s.projection {
        "projection"
    } else {
        "subscription"
    };
    match &s.group {
        Some(g) => format!("{kind}, group of {} ranges, {} workers", g.ranges, g.workers),
        None => kind.to_owned(),
    }
}

pub(super) fn write_subscriptions(
    subscriptions: &[SubscriptionStats],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if subscriptions.is_empty() {
        return writeln!(out, "no subscriptions or projections");
    }
    // One row per name, whatever it holds: a newline or an escape is shown, not obeyed.
    let names: Vec<_> = subscriptions.iter().map(|s| escape(&s.name)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(4);
    writeln!(
        out,
        "{:width$}  {:>12}  {:>10}  {:<10}  {:>12}  KIND",
        "NAME", "CHECKPOINT", "LAG", "STATE", "DEAD LETTERS"
    )?;
    for (s, name) in subscriptions.iter().zip(&names) {
        writeln!(
            out,
            "{:width$}  {:>12}  {:>10}  {:<10}  {:>12}  {}",
            name,
            s.checkpoint.map_or("-".to_owned(), |c| c.to_string()),
            thousands(s.lag),
            s.state,
            thousands(s.dead_letters),
            kind(s)
        )?;
    }
    // The feed's holder is the same for every consumer: said once, by the one furthest back.
    if let Some(held) = subscriptions
        .iter()
        .filter(|s| s.held_back > 0)
        .max_by_key(|s| s.held_back)
    {
        writeln!(
            out,
            "the feed holds back {} stored event(s) while {} runs",
            thousands(held.held_back),
            held.held_by
                .as_deref()
                .map_or(Cow::Borrowed("a transaction that may append below them"), escape)
        )?;
    }
    Ok(())
}
