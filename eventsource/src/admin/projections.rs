//! `projections list | status | rebuild | reset | rescale` (and `verify`, in its own module).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::deadletters::DeadLetterView;
use super::output::{confirm, thousands, took, Output};
use super::stats::{kind, subscriptions, write_subscriptions, SubscriptionStats};
use super::verify_projection::Streams;
use super::{listing, AdminError, Outcome, ProjectionsCommand};
use crate::backend::Stores;
use crate::group::{self, RangeStatus};
use crate::projection::{Progress, Projection};
use crate::text::escape;

/// Dead letters shown by `status`; the others are counted.
const DEAD_LETTERS_SHOWN: usize = 20;

pub(super) async fn run(
    stores: &Stores,
    projections: &[Arc<Projection>],
    command: ProjectionsCommand,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    match command {
        ProjectionsCommand::List => {
            let listed = subscriptions(stores, projections).await?;
            out.report(&listed, |l, out| write_subscriptions(l, out))?;
            Ok(Outcome::Clean)
        }
        ProjectionsCommand::Status { name } => status(stores, projections, &name, out).await,
        ProjectionsCommand::Rebuild {
            name,
            resume,
            force,
            yes,
        } => rebuild(stores, projections, &name, resume, force, yes, out).await,
        ProjectionsCommand::Reset { name, force, yes } => {
            reset(stores, projections, &name, force, yes, out).await
        }
        ProjectionsCommand::Rescale { name, ranges } => rescale(stores, &name, ranges, out).await,
        ProjectionsCommand::Verify {
            name,
            sample,
            after,
            until,
            show,
        } => {
            let Some(projection) = named(projections, &name) else {
                find(stores, projections, &name).await?;
                return Err(AdminError::Refused(format!(
                    "`{}` is not a projection this program names (Admin::projection), so its code is not here to verify it",
                    escape(&name)
                )));
            };
            let streams = match (after, until) {
                (Some(after), Some(until)) => Streams::Between(after, until),
                _ => Streams::Sample(sample),
            };
            super::verify_projection::run(stores, projection, streams, show, out).await
        }
    }
}

#[derive(Serialize)]
struct Rescaled {
    name: String,
    layout: u32,
    ranges: u32,
}

/// Records a new layout of `ranges` ranges for the consumer group `name` (its first, for a
/// subscription that ran as a single consumer, which must be stopped).
async fn rescale(
    stores: &Stores,
    name: &str,
    ranges: u32,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let template = stores.subscription(name)?;
    let layout = group::rescale(&template, ranges).await?;
    let report = Rescaled {
        name: name.to_owned(),
        layout,
        ranges,
    };
    out.report(&report, |r, out| {
        writeln!(
            out,
            "{}: layout {} of {} ranges recorded; running workers move to it within a third of their lease",
            escape(&r.name),
            r.layout,
            r.ranges
        )
    })?;
    Ok(Outcome::Clean)
}

/// The subscription or projection `name`, as listed, or a refusal naming the known ones.
async fn find(
    stores: &Stores,
    projections: &[Arc<Projection>],
    name: &str,
) -> Result<SubscriptionStats, AdminError> {
    let listed = subscriptions(stores, projections).await?;
    let known = listing(listed.iter().map(|s| s.name.as_str()));
    listed.into_iter().find(|s| s.name == name).ok_or_else(|| {
        AdminError::Refused(format!(
            "no subscription or projection `{}` (known: {known})",
            escape(name)
        ))
    })
}

/// Refuses while a consumer other than this command holds the lease (of any range, for a
/// consumer group), unless forced.
fn idle_or_forced(found: &SubscriptionStats, force: bool) -> Result<(), AdminError> {
    if force {
        return Ok(());
    }
    match (found.owner, &found.group) {
        (Some(owner), _) => Err(AdminError::Refused(format!(
            "`{}` is active (consumer {owner} holds its lease): stop its consumers first, or pass --force",
            escape(&found.name)
        ))),
        (None, Some(_)) if found.state == "active" => Err(AdminError::Refused(format!(
            "`{}` is active (workers of its consumer group hold ranges): stop them first, or pass --force",
            escape(&found.name)
        ))),
        _ => Ok(()),
    }
}

fn named<'p>(projections: &'p [Arc<Projection>], name: &str) -> Option<&'p Arc<Projection>> {
    projections.iter().find(|p| p.name() == name)
}

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    subscription: SubscriptionStats,
    /// The ranges of its consumer group's current layout, if it runs as one.
    ranges: Vec<RangeView>,
    /// The first dead letters.
    dead_letter_events: Vec<DeadLetterView>,
}

#[derive(Serialize)]
struct RangeView {
    first_slice: u32,
    last_slice: u32,
    name: String,
    owner: Option<uuid::Uuid>,
    checkpoint: Option<u64>,
    lag: u64,
    /// Whether the worker that held it last died without letting it go.
    abandoned: bool,
}

impl From<RangeStatus> for RangeView {
    fn from(r: RangeStatus) -> Self {
        RangeView {
            first_slice: r.range.first(),
            last_slice: r.range.last(),
            name: r.name,
            owner: r.owner,
            checkpoint: r.checkpoint,
            lag: r.lag,
            abandoned: r.abandoned,
        }
    }
}

async fn status(
    stores: &Stores,
    projections: &[Arc<Projection>],
    name: &str,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let subscription = find(stores, projections, name).await?;
    let letters = super::deadletters::letters(stores, Some(name)).await?;
    let mut ranges = Vec::new();
    if subscription.group.is_some() {
        if let Some(group) = group::status(
            &*stores.events,
            stores.slice_feed.as_deref(),
            &*stores.subscriptions,
            &stores.slice_parts().await?,
            name,
        )
        .await?
        {
            ranges = group.ranges.into_iter().map(RangeView::from).collect();
        }
    }
    let status = Status {
        subscription,
        ranges,
        dead_letter_events: letters
            .into_iter()
            .take(DEAD_LETTERS_SHOWN)
            .map(Into::into)
            .collect(),
    };
    out.report(&status, |s, out| {
        let sub = &s.subscription;
        writeln!(out, "{} ({})", escape(&sub.name), kind(sub))?;
        writeln!(
            out,
            "  checkpoint    {}",
            sub.checkpoint.map_or("none".to_owned(), |c| c.to_string())
        )?;
        writeln!(out, "  lag           {} events", thousands(sub.lag))?;
        match sub.owner {
            Some(owner) => writeln!(out, "  state         active, consumer {owner}")?,
            None => writeln!(out, "  state         {}", sub.state)?,
        }
        if let Some(group) = &sub.group {
            writeln!(out, "  layout        {}", group.layout)?;
            writeln!(
                out,
                "  {:<11}  {:>12}  {:>10}  OWNER",
                "SLICES", "CHECKPOINT", "LAG"
            )?;
            for r in &s.ranges {
                writeln!(
                    out,
                    "  {:<11}  {:>12}  {:>10}  {}",
                    format!("{}-{}", r.first_slice, r.last_slice),
                    r.checkpoint.map_or("-".to_owned(), |c| c.to_string()),
                    thousands(r.lag),
                    match (r.owner, r.abandoned) {
                        (Some(owner), _) => owner.to_string(),
                        (None, true) => "- (abandoned)".to_owned(),
                        (None, false) => "-".to_owned(),
                    }
                )?;
            }
        }
        writeln!(out, "  dead letters  {}", thousands(sub.dead_letters))?;
        for d in &s.dead_letter_events {
            writeln!(out, "    {}", d.in_full())?;
        }
        if sub.dead_letters > s.dead_letter_events.len() as u64 {
            writeln!(
                out,
                "    ... and {} more",
                sub.dead_letters - s.dead_letter_events.len() as u64
            )?;
        }
        Ok(())
    })?;
    Ok(Outcome::Clean)
}

#[derive(Serialize)]
struct Rebuilt {
    name: String,
    /// Whether it went on from the checkpoint instead of starting from an empty read model.
    resumed: bool,
    events: u64,
    seconds: f64,
    events_per_second: f64,
    checkpoint: Option<u64>,
}

async fn rebuild(
    stores: &Stores,
    projections: &[Arc<Projection>],
    name: &str,
    resume: bool,
    force: bool,
    yes: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let found = find(stores, projections, name).await?;
    let shown = escape(name);
    let Some(projection) = named(projections, name) else {
        return Err(AdminError::Refused(format!(
            "`{shown}` is not a projection this program names (Admin::projection), so its handlers are not here to rebuild it"
        )));
    };
    idle_or_forced(&found, force)?;
    if !resume {
        confirm(
            &format!("Empty the read model of {shown} and replay the whole feed into it"),
            yes,
        )?;
    }
    let bar = out.progress(0, &format!("rebuilding {shown}"));
    let show = |p: Progress| {
        bar.set_length(p.done + p.remaining);
        bar.set_position(p.done);
    };
    let report = if resume {
        projection.catch_up(show).await?
    } else {
        projection.rebuild(show).await?
    };
    bar.finish_and_clear();
    let rebuilt = Rebuilt {
        name: name.to_owned(),
        resumed: resume,
        events: report.done,
        seconds: report.elapsed.as_secs_f64(),
        events_per_second: report.rate(),
        checkpoint: projection.checkpoint().await?,
    };
    out.report(&rebuilt, |r, out| {
        writeln!(
            out,
            "{}: {} {} events in {} ({:.0} events/s), checkpoint {}",
            escape(&r.name),
            if r.resumed { "caught up on" } else { "rebuilt from" },
            thousands(r.events),
            took(Duration::from_secs_f64(r.seconds)),
            r.events_per_second,
            r.checkpoint.map_or("none".to_owned(), |c| c.to_string())
        )
    })?;
    Ok(Outcome::Clean)
}

#[derive(Serialize)]
struct Reset {
    name: String,
    /// Whether the read model was emptied too (a projection this program names).
    read_model_emptied: bool,
}

async fn reset(
    stores: &Stores,
    projections: &[Arc<Projection>],
    name: &str,
    force: bool,
    yes: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let found = find(stores, projections, name).await?;
    idle_or_forced(&found, force)?;
    let projection = named(projections, name);
    let shown = escape(name);
    let question = match projection {
        Some(_) => format!("Empty the read model of {shown} and forget its checkpoint"),
        None => format!("Forget the checkpoint of {shown} (it then starts from the beginning of the feed)"),
    };
    confirm(&question, yes)?;
    match projection {
        Some(projection) => projection.reset().await?,
        None => stores.subscriptions.reset(name).await?,
    }
    let report = Reset {
        name: name.to_owned(),
        read_model_emptied: projection.is_some(),
    };
    out.report(&report, |r, out| {
        let name = escape(&r.name);
        if r.read_model_emptied {
            writeln!(out, "{name}: read model emptied, checkpoint forgotten")
        } else {
            writeln!(out, "{name}: checkpoint forgotten")
        }
    })?;
    Ok(Outcome::Clean)
}
