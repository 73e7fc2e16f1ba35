//! An instance's record: its state, what it decided, what it has still to send, kept as the
//! last event of a stream of its own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::{Appended, EventStore};

/// The event type of a record.
const RECORDED: &str = "ProcessRecorded";

/// How many of its last causes an instance remembers: an event handed over again (one of the
/// batches after the checkpoint, after a crash) is among them as long as the instance decided
/// on fewer causes since (its events, and the replies to its commands) than this.
const CAUSES_KEPT: usize = 1_024;

/// The aggregate type of the records of process manager `name`: `process.NAME`.
pub fn instance_type(name: &str) -> String {
    format!("process.{name}")
}

/// A command decided and not sent yet, with what it is sent with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Pending<C> {
    pub(crate) request_id: String,
    pub(crate) cause: Uuid,
    pub(crate) correlation: Uuid,
    pub(crate) command: C,
}

/// A timeout scheduled: when it comes due, and the cause whose decision scheduled it (which
/// names its firing: see [`timeout_cause`](super::timeout_cause)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Scheduled {
    pub(crate) due: DateTime<Utc>,
    pub(crate) by: Uuid,
}

/// An instance as its record keeps it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, C: Serialize",
    deserialize = "S: Deserialize<'de>, C: Deserialize<'de>"
))]
pub(crate) struct Record<S, C> {
    pub(crate) state: S,
    /// The commands decided and not sent yet, in order.
    pub(crate) pending: VecDeque<Pending<C>>,
    /// The timeouts scheduled, and when each comes due.
    pub(crate) timeouts: BTreeMap<String, Scheduled>,
    /// The last causes decided on, oldest first.
    pub(crate) causes: VecDeque<Uuid>,
    /// The correlation of the instance's first cause, given to commands decided on timeouts.
    pub(crate) correlation: Option<Uuid>,
    /// Whether the instance ended.
    pub(crate) done: bool,
}

impl<S: Default, C> Default for Record<S, C> {
    fn default() -> Self {
        Record {
            state: S::default(),
            pending: VecDeque::new(),
            timeouts: BTreeMap::new(),
            causes: VecDeque::new(),
            correlation: None,
            done: false,
        }
    }
}

impl<S, C> Record<S, C> {
    /// Whether `cause` was decided on.
    pub(crate) fn decided(&self, cause: Uuid) -> bool {
        self.causes.contains(&cause)
    }

    /// Remembers `cause` as decided on.
    pub(crate) fn remember(&mut self, cause: Uuid) {
        self.causes.push_back(cause);
        while self.causes.len() > CAUSES_KEPT {
            self.causes.pop_front();
        }
    }
}

/// A record as loaded, with the version of its stream.
pub(crate) struct Loaded<S, C> {
    pub(crate) record: Record<S, C>,
    pub(crate) version: u64,
}

/// The record of `instance` in the stream type `ty`; a new one if it has none.
pub(crate) async fn load<S, C>(events: &dyn EventStore, ty: &str, instance: Uuid) -> Result<Loaded<S, C>>
where
    S: Default + for<'de> Deserialize<'de>,
    C: for<'de> Deserialize<'de>,
{
    let version = events.stream_version(instance, ty).await?;
    if version == 0 {
        return Ok(Loaded {
            record: Record::default(),
            version,
        });
    }
    let last: Vec<_> = events
        .read_stream(instance, ty, version - 1)
        .try_collect()
        .await?;
    let Some(last) = last.last() else {
        return Err(Error::corrupt(
            format!("the record of {ty} {instance}"),
            format!("version {version} has no event"),
        ));
    };
    let record = serde_json::from_str(&last.payload).map_err(|e| {
        Error::corrupt(
            format!("the record of {ty} {instance} at version {version}"),
            format!("{e} (a state or command of another shape than this program's?)"),
        )
    })?;
    Ok(Loaded {
        record,
        version: last.aggregate_version,
    })
}

/// Stores `record` as the next version of `instance`'s stream, after `version`: a
/// [`Error::Conflict`] if another runner stored one first.
pub(crate) async fn store<S: Serialize, C: Serialize>(
    events: &dyn EventStore,
    ty: &str,
    instance: Uuid,
    version: u64,
    record: &Record<S, C>,
    cause: Uuid,
) -> Result<Appended> {
    let payload = serde_json::to_string(record).map_err(|e| Error::Serialization {
        action: "serialize",
        what: format!("the record of {ty} {instance}"),
        reason: e.to_string(),
    })?;
    let envelope = EventEnvelope {
        event_id: Uuid::new_v4(),
        event_type: Arc::from(RECORDED),
        event_version: 1,
        aggregate_id: instance,
        aggregate_type: Arc::from(ty),
        aggregate_version: version + 1,
        occurred_at: Utc::now(),
        correlation_id: record.correlation,
        causation_id: Some(cause),
        request_id: None,
        metadata: None,
        payload: Arc::from(payload),
    };
    events
        .append(instance, ty, version, std::slice::from_ref(&envelope))
        .await
}
