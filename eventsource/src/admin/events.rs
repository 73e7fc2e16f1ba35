//! `events tail | show`.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use super::output::Output;
use super::{every_registered, listing, AdminError, EventsCommand, Outcome};
use crate::backend::Stores;
use crate::event::StoredEvent;
use crate::text::escape;

/// How often `events tail` looks for new events when the store gives no signal.
const POLL: Duration = Duration::from_millis(200);

pub(super) async fn run(
    stores: &Stores,
    command: EventsCommand,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    match command {
        EventsCommand::Tail {
            aggregate_type,
            event_type,
            from_start,
            after,
            count,
            no_follow,
            shard,
        } => {
            let stores = feed_stores(stores, shard)?;
            let filter = Filter {
                aggregate_type,
                event_type,
            };
            let after = match (from_start, after) {
                (true, _) => 0,
                (false, Some(after)) => after,
                (false, None) => stores.events.head(0).await?.position,
            };
            tail(stores, &filter, after, count, !no_follow, out).await
        }
        EventsCommand::Show { id, aggregate_type } => show(stores, id, aggregate_type, out).await,
    }
}

/// The stores whose feed `events tail` prints: those given, or on a sharded store the shard
/// asked for.
fn feed_stores(stores: &Stores, shard: Option<usize>) -> Result<&Stores, AdminError> {
    match (stores.shards(), shard) {
        (None, None) => Ok(stores),
        (None, Some(_)) => Err(AdminError::Refused(format!(
            "--shard names a shard of a sharded store; these {} stores are one database",
            stores.backend_name()
        ))),
        (Some(shards), Some(shard)) => shards.get(shard).ok_or_else(|| {
            AdminError::Refused(format!(
                "the store has shards 0 to {}, not {shard}",
                shards.len() - 1
            ))
        }),
        (Some(shards), None) => Err(AdminError::Refused(format!(
            "a sharded store has a feed per shard, with positions of its own: name one with \
             --shard (0 to {})",
            shards.len() - 1
        ))),
    }
}

struct Filter {
    aggregate_type: Option<String>,
    event_type: Option<String>,
}

impl Filter {
    fn takes(&self, event: &StoredEvent) -> bool {
        self.aggregate_type
            .as_deref()
            .is_none_or(|t| *event.aggregate_type == *t)
            && self.event_type.as_deref().is_none_or(|t| *event.event_type == *t)
    }
}

async fn tail(
    stores: &Stores,
    filter: &Filter,
    mut after: u64,
    count: Option<u64>,
    follow: bool,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    if count == Some(0) {
        return Ok(Outcome::Clean);
    }
    let mut printed = 0;
    let mut signal = stores.append_signal.as_ref().map(|s| s.waiter());
    loop {
        let mut feed = stores.events.read_all(after);
        while let Some(event) = feed.next().await {
            let event = event?;
            after = event.position;
            if !filter.takes(&event) {
                continue;
            }
            out.item(&EventView::of(&event), EventView::line)?;
            printed += 1;
            if count.is_some_and(|n| printed >= n) {
                return Ok(Outcome::Clean);
            }
        }
        if !follow {
            return Ok(Outcome::Clean);
        }
        match &mut signal {
            Some(waiter) => {
                // A signal, or the poll: appends of other processes raise no signal on SQLite.
                let raised = Box::pin(waiter.raised());
                futures_util::future::select(raised, Box::pin(tokio::time::sleep(POLL))).await;
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

async fn show(
    stores: &Stores,
    id: Uuid,
    aggregate_type: Option<String>,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let types: Vec<String> = match aggregate_type {
        Some(t) => vec![t],
        None => every_registered().iter().map(|a| a.name.to_owned()).collect(),
    };
    let mut events = Vec::new();
    for ty in &types {
        let mut stream = stores.events.read_stream(id, ty, 0);
        while let Some(event) = stream.next().await {
            events.push(EventView::of(&event?));
        }
    }
    if events.is_empty() {
        return Err(AdminError::Refused(format!(
            "no events of aggregate {id} (looked at: {})",
            listing(types.iter().map(String::as_str))
        )));
    }
    out.report(&events, |events, out| {
        for event in events {
            writeln!(out, "{}", event.line())?;
        }
        Ok(())
    })?;
    Ok(Outcome::Clean)
}

/// An event as the admin command line prints it.
#[derive(Serialize)]
struct EventView {
    position: u64,
    event_id: Uuid,
    event_type: String,
    event_version: u32,
    aggregate_type: String,
    aggregate_id: Uuid,
    aggregate_version: u64,
    occurred_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<crate::request::RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<serde_json::Value>,
    /// The payload as stored; text that is not JSON stays text.
    payload: serde_json::Value,
}

impl EventView {
    fn of(event: &StoredEvent) -> Self {
        EventView {
            position: event.position,
            event_id: event.event_id,
            event_type: event.event_type.to_string(),
            event_version: event.event_version,
            aggregate_type: event.aggregate_type.to_string(),
            aggregate_id: event.aggregate_id,
            aggregate_version: event.aggregate_version,
            occurred_at: event.occurred_at,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            request_id: event.request_id.clone(),
            metadata: event.metadata.clone(),
            payload: serde_json::from_str(&event.payload)
                .unwrap_or_else(|_| serde_json::Value::String(event.payload.to_string())),
        }
    }

    fn line(&self) -> String {
        format!(
            "#{} {} {} {} v{} {} (v{}) {}",
            self.position,
            self.occurred_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            escape(&self.aggregate_type),
            self.aggregate_id,
            self.aggregate_version,
            escape(&self.event_type),
            self.event_version,
            // JSON escapes the C0 controls of its strings, not DEL, C1 or the overrides.
            escape(&self.payload.to_string())
        )
    }
}
