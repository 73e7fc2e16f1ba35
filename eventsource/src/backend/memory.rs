//! In-memory event and snapshot stores: the reference implementations of the contracts.
//!
//! Both are cheap to clone (clones share one store) and safe to use from many tasks. Events
//! are kept serialized, as a database would keep them, so an event that cannot be encoded
//! fails at save time here too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use futures_util::stream;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::{acknowledge_stored_batch, validate_batch, EventStore, EventStream};
use crate::snapshot::{validate_snapshot, Snapshot, SnapshotStore};

/// How many events a read copies per lock, so a long read never holds the lock for long.
const READ_CHUNK: usize = 512;

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-written batch (appends validate
    // before they touch the data), so the data behind a poisoned lock is still whole.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// An event store in process memory.
#[derive(Clone, Debug, Default)]
pub struct InMemoryEventStore {
    inner: Arc<RwLock<EventLog>>,
}

#[derive(Debug, Default)]
struct EventLog {
    /// Every event in position order; position = index + 1.
    events: Vec<StoredEvent>,
    /// For each aggregate id, its streams by type.
    streams: HashMap<Uuid, Vec<StreamIndex>>,
    /// Every stored event id, which the contract keeps unique.
    event_ids: HashSet<Uuid>,
}

/// One stream: its aggregate type and the log index of each of its versions.
type StreamIndex = (Arc<str>, Vec<usize>);

impl EventLog {
    fn stream(&self, aggregate_id: Uuid, aggregate_type: &str) -> &[usize] {
        self.streams
            .get(&aggregate_id)
            .and_then(|types| types.iter().find(|(t, _)| **t == *aggregate_type))
            .map_or(&[], |(_, indexes)| indexes.as_slice())
    }

    /// Why the batch cannot be appended as it is (a conflict or a reused event id), if so.
    fn refusal(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Option<Error> {
        let actual = self.stream(aggregate_id, aggregate_type).len() as u64;
        if actual != expected_version {
            return Some(Error::Conflict {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id,
                expected: expected_version,
                actual,
            });
        }
        let reused = events.iter().find(|e| self.event_ids.contains(&e.event_id))?;
        Some(Error::InvalidInput(format!(
            "event id {} is already stored",
            reused.event_id
        )))
    }

    /// Appends a batch that [`refusal`](Self::refusal) accepted; returns the new version.
    fn push(
        &mut self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> u64 {
        let log = self;
        log.event_ids.extend(events.iter().map(|e| e.event_id));
        let first = log.events.len();
        for (i, event) in events.iter().enumerate() {
            log.events.push(StoredEvent {
                position: (first + i + 1) as u64,
                envelope: event.clone(),
            });
        }
        let types = log.streams.entry(aggregate_id).or_default();
        let indexes = match types.iter().position(|(t, _)| **t == *aggregate_type) {
            Some(at) => &mut types[at].1,
            None => {
                types.push((Arc::from(aggregate_type), Vec::new()));
                &mut types.last_mut().expect("just pushed").1
            }
        };
        indexes.extend(first..first + events.len());
        expected_version + events.len() as u64
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of events stored, over all streams.
    pub fn len(&self) -> usize {
        read(&self.inner).events.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every event.
    pub fn clear(&self) {
        *write(&self.inner) = EventLog::default();
    }

    fn chunked(
        &self,
        select: impl Fn(&EventLog, usize) -> Vec<StoredEvent> + Send + 'static,
    ) -> EventStream<'static> {
        let inner = self.inner.clone();
        let chunks = stream::unfold(0usize, move |offset| {
            let chunk = select(&read(&inner), offset);
            let next = offset + chunk.len();
            async move { (!chunk.is_empty()).then(|| (stream::iter(chunk.into_iter().map(Ok)), next)) }
        });
        Box::pin(futures_util::StreamExt::flatten(chunks))
    }
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<u64> {
        validate_batch(aggregate_id, aggregate_type, expected_version, events)?;
        let refusal = {
            let mut log = write(&self.inner);
            match log.refusal(aggregate_id, aggregate_type, expected_version, events) {
                None => return Ok(log.push(aggregate_id, aggregate_type, expected_version, events)),
                Some(refusal) => refusal,
            }
        };
        acknowledge_stored_batch(
            self,
            aggregate_id,
            aggregate_type,
            expected_version,
            events,
            refusal,
        )
        .await
    }

    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        let aggregate_type: Arc<str> = Arc::from(aggregate_type);
        let start = usize::try_from(after_version).unwrap_or(usize::MAX);
        self.chunked(move |log, offset| {
            let indexes = log.stream(aggregate_id, &aggregate_type);
            let from = start.saturating_add(offset).min(indexes.len());
            let to = (from + READ_CHUNK).min(indexes.len());
            indexes[from..to].iter().map(|&i| log.events[i].clone()).collect()
        })
    }

    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        Ok(read(&self.inner).stream(aggregate_id, aggregate_type).len() as u64)
    }

    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        let start = usize::try_from(after_position).unwrap_or(usize::MAX);
        self.chunked(move |log, offset| {
            let from = start.saturating_add(offset).min(log.events.len());
            let to = (from + READ_CHUNK).min(log.events.len());
            log.events[from..to].to_vec()
        })
    }
}

/// A snapshot store in process memory.
#[derive(Clone, Debug, Default)]
pub struct InMemorySnapshotStore {
    inner: Arc<RwLock<HashMap<(Uuid, String), Snapshot>>>,
}

impl InMemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of snapshots stored.
    pub fn count(&self) -> usize {
        read(&self.inner).len()
    }

    /// Removes every snapshot.
    pub fn clear(&self) {
        write(&self.inner).clear();
    }
}

fn key(aggregate_id: Uuid, aggregate_type: &str) -> (Uuid, String) {
    (aggregate_id, aggregate_type.to_owned())
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn get_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<Option<Snapshot>> {
        Ok(read(&self.inner).get(&key(aggregate_id, aggregate_type)).cloned())
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        validate_snapshot(snapshot)?;
        let mut snapshots = write(&self.inner);
        let slot = snapshots.entry(key(snapshot.aggregate_id, &snapshot.aggregate_type));
        match slot {
            std::collections::hash_map::Entry::Occupied(mut stored) => {
                if stored.get().version > snapshot.version {
                    return Ok(false);
                }
                stored.insert(snapshot.clone());
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(snapshot.clone());
            }
        }
        Ok(true)
    }

    #[tracing::instrument(name = "eventsource.snapshot.delete", level = "debug", skip_all,
        fields(aggregate.id = %aggregate_id, aggregate.type = aggregate_type))]
    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        Ok(write(&self.inner)
            .remove(&key(aggregate_id, aggregate_type))
            .is_some())
    }

    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        Ok(read(&self.inner).contains_key(&key(aggregate_id, aggregate_type)))
    }

    #[tracing::instrument(name = "eventsource.snapshot.delete_by_type", level = "debug", skip_all,
        fields(aggregate.type = aggregate_type, schema_version_below = ?schema_version_below))]
    async fn delete_snapshots_by_type(
        &self,
        aggregate_type: &str,
        schema_version_below: Option<u32>,
    ) -> Result<u64> {
        let mut snapshots = write(&self.inner);
        let before = snapshots.len();
        snapshots.retain(|_, s| {
            s.aggregate_type != aggregate_type
                || schema_version_below.is_some_and(|below| s.schema_version >= below)
        });
        Ok((before - snapshots.len()) as u64)
    }
}
