//! `streams close|delete|archive|restore`: the lifecycle of one stream (see
//! [`crate::lifecycle`]).

use serde::Serialize;
use uuid::Uuid;

use super::output::{confirm, Output};
use super::{AdminError, Outcome, StreamsCommand};
use crate::backend::Stores;
use crate::error::Error;
use crate::lifecycle::StreamLifecycle;
use crate::text::escape;

/// What a command did to a stream, as reported.
#[derive(Serialize)]
struct Done {
    aggregate_type: String,
    aggregate_id: Uuid,
    /// `closed`, `deleted`, `archived` or `restored`.
    outcome: &'static str,
    /// The stream's version after it (closed, deleted), or the snapshot's version the
    /// archive is behind (archived).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// The events moved (archived, restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    moved: Option<u64>,
}

pub(super) async fn run(
    stores: &Stores,
    command: StreamsCommand,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    let done = match command {
        StreamsCommand::Close {
            id,
            aggregate_type,
            yes,
        } => {
            confirm(
                &format!(
                    "Close {} {id} for good: no event can be saved on it afterwards",
                    escape(&aggregate_type)
                ),
                yes,
            )?;
            let version = crate::lifecycle::close(&*stores.events, id, &aggregate_type).await?;
            Done::new(aggregate_type, id, "closed", Some(version), None)
        }
        StreamsCommand::Delete {
            id,
            aggregate_type,
            yes,
        } => {
            confirm(
                &format!(
                    "Delete {} {id} for good: its events, request ids and snapshots are removed",
                    escape(&aggregate_type)
                ),
                yes,
            )?;
            let lifecycle = lifecycle(stores)?;
            let deleted = crate::lifecycle::delete(
                &*stores.events,
                lifecycle,
                Some(&*stores.snapshots),
                id,
                &aggregate_type,
            )
            .await?;
            Done::new(aggregate_type, id, "deleted", Some(deleted.version), None)
        }
        StreamsCommand::Archive {
            id,
            aggregate_type,
            yes,
        } => {
            confirm(
                &format!(
                    "Archive the events of {} {id} before its snapshot: consumers that have not \
                     read them, and projections rebuilt from the start, will not see them",
                    escape(&aggregate_type)
                ),
                yes,
            )?;
            let lifecycle = lifecycle(stores)?;
            let archived = crate::lifecycle::archive(
                &*stores.events,
                &*stores.snapshots,
                lifecycle,
                id,
                &aggregate_type,
            )
            .await?;
            Done::new(
                aggregate_type,
                id,
                "archived",
                Some(archived.before_version),
                Some(archived.moved),
            )
        }
        StreamsCommand::Restore { id, aggregate_type } => {
            let moved = crate::lifecycle::restore(lifecycle(stores)?, id, &aggregate_type).await?;
            Done::new(aggregate_type, id, "restored", None, Some(moved))
        }
    };
    out.report(&done, |d, w| {
        let stream = format!("{} {}", escape(&d.aggregate_type), d.aggregate_id);
        match (d.outcome, d.version, d.moved) {
            ("archived", Some(before), Some(moved)) => writeln!(
                w,
                "{stream}: {moved} event(s) archived; the events before version {before} are in the archive"
            ),
            (_, _, Some(moved)) => writeln!(w, "{stream}: {moved} event(s) {}", d.outcome),
            (_, Some(version), _) => writeln!(w, "{stream} is {} at version {version}", d.outcome),
            _ => writeln!(w, "{stream} is {}", d.outcome),
        }
    })?;
    Ok(Outcome::Clean)
}

impl Done {
    fn new(
        aggregate_type: String,
        aggregate_id: Uuid,
        outcome: &'static str,
        version: Option<u64>,
        moved: Option<u64>,
    ) -> Self {
        Done {
            aggregate_type,
            aggregate_id,
            outcome,
            version,
            moved,
        }
    }
}

fn lifecycle(stores: &Stores) -> Result<&dyn StreamLifecycle, Error> {
    stores.stream_lifecycle.as_deref().ok_or_else(|| {
        Error::InvalidConfiguration(format!(
            "the {} stores cannot delete or archive streams",
            stores.backend_name()
        ))
    })
}
