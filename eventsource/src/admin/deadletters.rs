//! `deadletters list | show | replay`: the events subscriptions and projections gave up on,
//! and their replay through today's code.

use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use super::output::{thousands, Output};
use super::{AdminError, DeadLettersCommand, Outcome};
use crate::backend::Stores;
use crate::event::StoredEvent;
use crate::projection::Projection;
use crate::subscription::replay::{letters_by_name, names_with_letters};
use crate::subscription::{DeadLetter, ReplayOptions, ReplayOutcome, ReplayReport};
use crate::text::escape;

/// How much of an error a listing shows on its line.
const ERROR_SHOWN: usize = 80;

pub(super) async fn run(
    stores: &Stores,
    projections: &[Arc<Projection>],
    command: DeadLettersCommand,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    match command {
        DeadLettersCommand::List { name } => list(stores, name.as_deref(), out).await,
        DeadLettersCommand::Show { name, event_id } => show(stores, &name, event_id, out).await,
        DeadLettersCommand::Replay { name, dry_run, limit } => {
            let Some(projection) = projections.iter().find(|p| p.name() == name) else {
                return Err(AdminError::Refused(format!(
                    "`{}` is not a projection this program names: the command line can replay \
                     only those (their code is in the program); a plain subscription's letters \
                     are replayed by the program, with `Subscription::replay_dead_letters`",
                    escape(&name)
                )));
            };
            let mut options = ReplayOptions::new().dry_run(dry_run);
            if let Some(limit) = limit {
                options = options.limit(limit);
            }
            replay(projection, options, out).await
        }
    }
}

/// A dead letter as the commands show it.
#[derive(Serialize)]
pub(super) struct DeadLetterView {
    /// The name it was recorded under (a subscription's, or a range's of its group).
    name: String,
    position: u64,
    event_id: Uuid,
    event_type: String,
    error: String,
    failed_at: chrono::DateTime<chrono::Utc>,
}

impl DeadLetterView {
    /// The event and the whole error, escaped: what `projections status` shows of each.
    pub(super) fn in_full(&self) -> String {
        format!(
            "#{} {} {}: {}",
            self.position,
            escape(&self.event_type),
            self.event_id,
            escape(&self.error)
        )
    }
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView {
            name: d.subscription,
            position: d.position,
            event_id: d.event_id,
            event_type: d.event_type,
            error: d.error,
            failed_at: d.failed_at,
        }
    }
}

impl DeadLetterView {
    /// One line: where, what, when, and the start of the error's first line.
    pub(super) fn line(&self) -> String {
        let first = self.error.lines().next().unwrap_or_default();
        let shown: String = first.chars().take(ERROR_SHOWN).collect();
        let cut = if shown.len() < self.error.len() { "..." } else { "" };
        format!(
            "{}  {}  {}  {}  {}  {}{cut}",
            escape(&self.name),
            self.position,
            self.event_id,
            escape(&self.event_type),
            self.failed_at.format("%Y-%m-%d %H:%M:%S"),
            escape(&shown)
        )
    }
}

/// The letters of `name` and of its consumer group's ranges, or of every name.
pub(super) async fn letters(stores: &Stores, name: Option<&str>) -> Result<Vec<DeadLetter>, AdminError> {
    let store = &*stores.subscriptions;
    let names = match name {
        Some(name) => names_with_letters(store, name).await?,
        None => store
            .subscriptions()
            .await?
            .into_iter()
            .filter(|status| status.dead_letters > 0)
            .map(|status| status.name)
            .collect(),
    };
    let mut letters = Vec::new();
    for name in names {
        letters.extend(store.dead_letters(&name, 0, usize::MAX).await?);
    }
    Ok(letters)
}

async fn list(stores: &Stores, name: Option<&str>, out: &mut Output<'_>) -> Result<Outcome, AdminError> {
    let listed: Vec<DeadLetterView> = letters(stores, name).await?.into_iter().map(Into::into).collect();
    out.report(&listed, |listed, out| {
        if listed.is_empty() {
            return writeln!(out, "no dead letters");
        }
        writeln!(out, "NAME  POSITION  EVENT  TYPE  FAILED AT  ERROR")?;
        for letter in listed {
            writeln!(out, "{}", letter.line())?;
        }
        writeln!(out, "{} dead letter(s)", thousands(listed.len() as u64))
    })?;
    Ok(Outcome::Clean)
}

#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    letter: DeadLetterView,
    /// The event as the feed holds it, `None` if it holds no such event at the position.
    event: Option<EventView>,
}

#[derive(Serialize)]
struct EventView {
    aggregate_type: String,
    aggregate_id: Uuid,
    aggregate_version: u64,
    event_version: u32,
    occurred_at: chrono::DateTime<chrono::Utc>,
    /// The payload as stored: JSON.
    payload: serde_json::Value,
    metadata: Option<serde_json::Value>,
}

impl EventView {
    fn of(event: &StoredEvent) -> Self {
        let json = |text: &str| {
            serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
        };
        EventView {
            aggregate_type: event.aggregate_type.to_string(),
            aggregate_id: event.aggregate_id,
            aggregate_version: event.aggregate_version,
            event_version: event.event_version,
            occurred_at: event.occurred_at,
            payload: json(&event.payload),
            metadata: event.metadata.clone(),
        }
    }
}

async fn show(
    stores: &Stores,
    name: &str,
    event_id: Uuid,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let letter = letters(stores, Some(name))
        .await?
        .into_iter()
        .find(|l| l.event_id == event_id)
        .ok_or_else(|| {
            AdminError::Refused(format!(
                "{} has no dead letter of event {event_id} (see `admin deadletters list {}`)",
                escape(name),
                escape(name)
            ))
        })?;
    let feed = stores.slice_feed.as_deref();
    let event = crate::subscription::replay::letter_event(&*stores.events, feed, &letter)
        .await?
        .map(|event| EventView::of(&event));
    let shown = Shown {
        letter: letter.into(),
        event,
    };
    out.report(&shown, |s, out| {
        let l = &s.letter;
        writeln!(out, "dead letter of {}", escape(&l.name))?;
        writeln!(
            out,
            "  event      {} ({}) at position {}",
            l.event_id,
            escape(&l.event_type),
            l.position
        )?;
        writeln!(
            out,
            "  failed at  {}",
            l.failed_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        )?;
        writeln!(out, "  error      {}", escape(&l.error))?;
        match &s.event {
            None => writeln!(out, "  the feed holds no such event at that position"),
            Some(e) => {
                writeln!(
                    out,
                    "  aggregate  {} {} version {}",
                    escape(&e.aggregate_type),
                    e.aggregate_id,
                    e.aggregate_version
                )?;
                writeln!(out, "  version    {} of the event type", e.event_version)?;
                let payload = serde_json::to_string_pretty(&e.payload).unwrap_or_default();
                writeln!(
                    out,
                    "  payload    {}",
                    escape(&payload).replace("\\n", "\n             ")
                )?;
                if let Some(metadata) = &e.metadata {
                    writeln!(out, "  metadata   {}", escape(&metadata.to_string()))?;
                }
                Ok(())
            }
        }
    })?;
    Ok(Outcome::Clean)
}

#[derive(Serialize)]
struct Replay {
    name: String,
    dry_run: bool,
    #[serde(flatten)]
    report: ReplayReport,
}

async fn replay(
    projection: &Projection,
    options: ReplayOptions,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let waiting: u64 = letters_by_name(&*projection.model().subscriptions(), projection.name())
        .await?
        .iter()
        .map(|(_, letters)| letters)
        .sum();
    let bar = out.progress(
        options.limit.map_or(waiting, |limit| waiting.min(limit as u64)),
        "replaying dead letters",
    );
    let report = projection
        .replay_dead_letters_with_progress(options, &mut |_| bar.inc(1))
        .await;
    bar.finish_and_clear();
    let report = report?;
    let failed = report.count(false);
    let replay = Replay {
        name: projection.name().to_owned(),
        dry_run: options.dry_run,
        report,
    };
    out.report(&replay, |r, out| {
        for l in &r.report.letters {
            let (outcome, error) = match &l.outcome {
                ReplayOutcome::Handled => ("handled", None),
                ReplayOutcome::WouldSucceed => ("would succeed", None),
                ReplayOutcome::Failed(e) => ("FAILS", Some(e)),
            };
            write!(
                out,
                "{outcome:<13} {}  {}  {}  {}",
                escape(&l.name),
                l.position,
                l.event_id,
                escape(&l.event_type)
            )?;
            match error {
                Some(e) => writeln!(out, "  {}", escape(e))?,
                None => writeln!(out)?,
            }
        }
        let succeeded = r.report.count(true);
        let replayed = succeeded + r.report.count(false);
        if replayed > r.report.letters.len() {
            writeln!(
                out,
                "... and {} more",
                thousands((replayed - r.report.letters.len()) as u64)
            )?;
        }
        let verb = if r.dry_run {
            "would succeed (rolled back)"
        } else {
            "handled and removed"
        };
        writeln!(
            out,
            "{} letter(s): {} {verb}, {} still failing{}",
            thousands(replayed as u64),
            thousands(succeeded as u64),
            thousands(r.report.count(false) as u64),
            match r.report.not_replayed {
                0 => String::new(),
                n => format!(", {} left by --limit", thousands(n as u64)),
            }
        )
    })?;
    Ok(if failed > 0 {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}
