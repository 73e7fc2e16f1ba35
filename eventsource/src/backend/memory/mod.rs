//! In-memory event, snapshot and subscription stores: the reference implementations of the
//! contracts.
//!
//! Both are cheap to clone (clones share one store) and safe to use from many tasks. Events
//! are kept serialized, as a database would keep them, so an event that cannot be encoded
//! fails at save time here too.

mod keys;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use keys::not_forgetting;
pub use keys::InMemoryKeyStore;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream;
use uuid::Uuid;

use crate::abilities::{AppendSignal, RequestIndex, SliceFeed, SnapshotListing, StreamListing};
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::{Appended, Batch, EventStore, EventStream, FeedHead};
use crate::lifecycle::StreamLifecycle;
use crate::multi_stream::{MultiStreamAppend, StreamBatches};
use crate::request::{request_of, validate_refusal, Fingerprint, RequestId, RequestOutcome, RequestRecord};
use crate::slice::{SliceCount, SliceParts, SliceRange};
use crate::snapshot::{validate_snapshot, Snapshot, SnapshotStore};
use crate::subscription::{validate_name, validate_stored_name, DeadLetter, SubscriptionStore};

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
    appended: AppendSignal,
}

#[derive(Debug, Default)]
struct EventLog {
    /// Every event in position order; position = index + 1.
    events: Vec<StoredEvent>,
    /// For each aggregate id, its streams by type.
    streams: HashMap<Uuid, Vec<StreamIndex>>,
    /// Every stored event id, which the contract keeps unique.
    event_ids: HashSet<Uuid>,
    /// The request index: what each request id recorded.
    requests: HashMap<RequestId, RequestRecord>,
    /// How many slices the store has.
    slice_count: SliceCount,
    /// For each slice, the log index of each of its events, in order (empty until the first).
    slices: Vec<Vec<usize>>,
    /// Where each event of `events` is held: live, archived or deleted.
    held: Vec<Held>,
    /// The positions of the events the feed no longer holds: archived or deleted.
    hidden: BTreeSet<u64>,
    /// How many events were deleted.
    deleted: usize,
}

/// Where an event is held (see [`crate::lifecycle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// In the feed and in its stream.
    Live,
    /// In its stream only.
    Archived,
    /// Nowhere.
    Deleted,
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
            log.held.push(Held::Live);
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
        if log.slices.is_empty() {
            log.slices = vec![Vec::new(); log.slice_count.get() as usize];
        }
        let slice = log.slice_count.slice_of(aggregate_type, aggregate_id);
        log.slices[slice as usize].extend(first..first + events.len());
        expected_version + events.len() as u64
    }

    /// The next events of the slices of `range` after `after`, at most a chunk of them, in
    /// position order: the slices' indexes merged.
    fn slice_chunk(&self, range: SliceRange, after: u64) -> Vec<StoredEvent> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        if self.slices.is_empty() {
            return Vec::new();
        }
        // Position = log index + 1: the first index of each slice past `after`.
        let mut next: BinaryHeap<Reverse<(usize, usize, usize)>> = (range.first()..=range.last())
            .filter_map(|slice| {
                let indexes = &self.slices[slice as usize];
                let at = indexes.partition_point(|&i| (i as u64) < after);
                indexes.get(at).map(|&i| Reverse((i, slice as usize, at)))
            })
            .collect();
        let mut chunk = Vec::with_capacity(READ_CHUNK.min(next.len() * 4));
        while chunk.len() < READ_CHUNK {
            let Some(Reverse((i, slice, at))) = next.pop() else {
                break;
            };
            if self.held[i] == Held::Live {
                chunk.push(self.events[i].clone());
            }
            if let Some(&following) = self.slices[slice].get(at + 1) {
                next.push(Reverse((following, slice, at + 1)));
            }
        }
        chunk
    }

    /// Moves the events of the stream at log indexes `indexes` from `from` to `to`; returns
    /// how many moved.
    fn move_held(
        &mut self,
        indexes: std::ops::Range<usize>,
        stream: (Uuid, &str),
        from: Held,
        to: Held,
    ) -> u64 {
        let (aggregate_id, aggregate_type) = stream;
        let at: Vec<usize> = self.stream(aggregate_id, aggregate_type)[indexes]
            .iter()
            .copied()
            .filter(|&i| self.held[i] == from)
            .collect();
        for &i in &at {
            self.held[i] = to;
            let position = i as u64 + 1;
            match to {
                Held::Live => self.hidden.remove(&position),
                Held::Archived | Held::Deleted => self.hidden.insert(position),
            };
        }
        if to == Held::Deleted {
            self.deleted += at.len();
        }
        at.len() as u64
    }
}

impl InMemoryEventStore {
    /// Appends the checked batch under the log's lock, recording `request` (its id and
    /// fingerprint) with it if given; a refused batch is acknowledged if it is the one stored
    /// already.
    async fn append_recording(
        &self,
        batch: Batch<'_>,
        request: Option<(RequestId, Option<Fingerprint>)>,
    ) -> Result<Appended> {
        let Batch {
            aggregate_id,
            aggregate_type,
            expected_version,
            events,
        } = batch;
        let refusal = {
            let mut log = write(&self.inner);
            match log.refusal(aggregate_id, aggregate_type, expected_version, events) {
                None if request
                    .as_ref()
                    .is_some_and(|(id, _)| log.requests.contains_key(id)) =>
                {
                    let (id, _) = request.expect("checked above");
                    return Err(Error::RequestRecorded {
                        request_id: id.to_string(),
                    });
                }
                None => {
                    let version = log.push(aggregate_id, aggregate_type, expected_version, events);
                    let position = log.events.len() as u64;
                    if let Some((id, fingerprint)) = request {
                        let record = RequestRecord::executed(
                            id.clone(),
                            aggregate_type,
                            aggregate_id,
                            fingerprint,
                            version,
                            position,
                            crate::request::now(),
                        );
                        log.requests.insert(id, record);
                    }
                    drop(log);
                    self.appended.raise_streams([(aggregate_type, aggregate_id)]);
                    return Ok(Appended { version, position });
                }
                Some(refusal) => refusal,
            }
        };
        batch.acknowledge_stored(self, refusal).await
    }

    /// The signal raised after each append to this store (and its clones).
    pub fn append_signal(&self) -> AppendSignal {
        self.appended.clone()
    }

    /// An empty store, of [`SliceCount::DEFAULT`] slices.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store of `slices` slices (see [`crate::slice`]).
    pub fn with_slices(slices: SliceCount) -> Self {
        let store = Self::default();
        write(&store.inner).slice_count = slices;
        store
    }

    /// The number of events stored, over all streams, archived ones too.
    pub fn len(&self) -> usize {
        let log = read(&self.inner);
        log.events.len() - log.deleted
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every event; the store keeps its number of slices.
    pub fn clear(&self) {
        let mut log = write(&self.inner);
        let slice_count = log.slice_count;
        *log = EventLog {
            slice_count,
            ..EventLog::default()
        };
    }

    /// The events `select` gives, chunk by chunk: from an offset, the events of a chunk and
    /// the offset after it, until it has none left.
    fn chunked(
        &self,
        select: impl Fn(&EventLog, usize) -> Option<(Vec<StoredEvent>, usize)> + Send + 'static,
    ) -> EventStream<'static> {
        let inner = self.inner.clone();
        let chunks = stream::unfold(0usize, move |offset| {
            let chunk = select(&read(&inner), offset);
            async move {
                let (chunk, next) = chunk?;
                Some((stream::iter(chunk.into_iter().map(Ok)), next))
            }
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
    ) -> Result<Appended> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        self.append_recording(batch, None).await
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
            let chunk = indexes[from..to]
                .iter()
                .filter(|&&i| log.held[i] != Held::Deleted)
                .map(|&i| log.events[i].clone())
                .collect();
            (from < to).then_some((chunk, offset + (to - from)))
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
            let chunk = (from..to)
                .filter(|&i| log.held[i] == Held::Live)
                .map(|i| log.events[i].clone())
                .collect();
            (from < to).then_some((chunk, offset + (to - from)))
        })
    }

    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        let log = read(&self.inner);
        let last = log.events.len() as u64;
        let hidden = log.hidden.range(after_position.saturating_add(1)..).count() as u64;
        Ok(FeedHead::new(
            last.max(after_position),
            last.saturating_sub(after_position) - hidden,
        ))
    }
}

#[async_trait]
impl MultiStreamAppend for InMemoryEventStore {
    async fn append_streams(&self, save: StreamBatches<'_>) -> Result<Vec<Appended>> {
        let refusal = {
            let mut log = write(&self.inner);
            let writes = save.writes().iter().map(|b| (b.aggregate_id, b.aggregate_type));
            let checks = save
                .checks()
                .iter()
                .map(|c| (c.aggregate_id, c.aggregate_type.as_str()));
            let actual: Vec<u64> = writes
                .chain(checks)
                .map(|(id, ty)| log.stream(id, ty).len() as u64)
                .collect();
            let reused = save
                .writes()
                .iter()
                .flat_map(|b| b.events)
                .find(|e| log.event_ids.contains(&e.event_id));
            match (save.conflicts(&actual), reused) {
                (Some(conflict), _) => conflict,
                (None, Some(reused)) => {
                    Error::InvalidInput(format!("event id {} is already stored", reused.event_id))
                }
                (None, None) => {
                    let appended = save
                        .writes()
                        .iter()
                        .map(|b| {
                            let version =
                                log.push(b.aggregate_id, b.aggregate_type, b.expected_version, b.events);
                            Appended {
                                version,
                                position: log.events.len() as u64,
                            }
                        })
                        .collect();
                    drop(log);
                    self.appended
                        .raise_streams(save.writes().iter().map(|b| (b.aggregate_type, b.aggregate_id)));
                    return Ok(appended);
                }
            }
        };
        save.acknowledge_stored(self, refusal).await
    }
}

#[async_trait]
impl RequestIndex for InMemoryEventStore {
    async fn find_request(&self, request_id: &RequestId) -> Result<Option<RequestRecord>> {
        Ok(read(&self.inner).requests.get(request_id).cloned())
    }

    async fn append_with_request(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
        fingerprint: Option<Fingerprint>,
    ) -> Result<Appended> {
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, events)?;
        let request_id = request_of(events)?.clone();
        self.append_recording(batch, Some((request_id, fingerprint)))
            .await
    }

    async fn record_refusal(&self, refusal: &RequestRecord) -> Result<RequestRecord> {
        validate_refusal(refusal)?;
        let mut log = write(&self.inner);
        Ok(log
            .requests
            .entry(refusal.request_id.clone())
            .or_insert_with(|| refusal.clone())
            .clone())
    }

    async fn forget_refusals(
        &self,
        request_id: Option<&RequestId>,
        recorded_before: DateTime<Utc>,
    ) -> Result<u64> {
        let mut log = write(&self.inner);
        let before = log.requests.len();
        log.requests.retain(|id, record| {
            let forgotten = matches!(record.outcome, RequestOutcome::Refused { .. })
                && record.recorded_at < recorded_before
                && request_id.is_none_or(|only| only == id);
            !forgotten
        });
        Ok((before - log.requests.len()) as u64)
    }
}

#[async_trait]
impl SliceFeed for InMemoryEventStore {
    async fn slice_count(&self) -> Result<SliceCount> {
        Ok(read(&self.inner).slice_count)
    }

    async fn feed_head(&self, range: SliceRange, after_position: u64) -> Result<FeedHead> {
        self.slice_count().await?.check(range)?;
        self.head(after_position).await
    }

    async fn parts(&self) -> Result<SliceParts> {
        Ok(SliceParts::whole(self.slice_count().await?))
    }

    fn read_slices(&self, range: SliceRange, after_position: u64) -> EventStream<'_> {
        if let Err(e) = read(&self.inner).slice_count.check(range) {
            return Box::pin(stream::iter([Err(e)]));
        }
        let inner = self.inner.clone();
        let chunks = stream::unfold(after_position, move |after| {
            let chunk = read(&inner).slice_chunk(range, after);
            async move {
                let next = chunk.last()?.position;
                Some((stream::iter(chunk.into_iter().map(Ok)), next))
            }
        });
        Box::pin(futures_util::StreamExt::flatten(chunks))
    }
}

#[async_trait]
impl StreamListing for InMemoryEventStore {
    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>> {
        let log = read(&self.inner);
        Ok(log
            .streams
            .iter()
            .flat_map(|(id, streams)| {
                streams
                    .iter()
                    .filter(|(t, versions)| {
                        let deleted = versions
                            .last()
                            .is_some_and(|&i| *log.events[i].event_type == *crate::lifecycle::DELETED);
                        **t == *aggregate_type && !versions.is_empty() && !deleted
                    })
                    .map(|(_, versions)| (*id, versions.len() as u64))
            })
            .collect())
    }
}

#[async_trait]
impl StreamLifecycle for InMemoryEventStore {
    async fn delete_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        tombstone: &EventEnvelope,
    ) -> Result<Appended> {
        let tombstone = std::slice::from_ref(tombstone);
        let batch = Batch::checked(aggregate_id, aggregate_type, expected_version, tombstone)?;
        let refusal = {
            let mut log = write(&self.inner);
            match log.refusal(aggregate_id, aggregate_type, expected_version, tombstone) {
                None => {
                    let stream = (aggregate_id, aggregate_type);
                    let all = 0..expected_version as usize;
                    log.move_held(all.clone(), stream, Held::Live, Held::Deleted);
                    log.move_held(all, stream, Held::Archived, Held::Deleted);
                    log.requests.retain(|_, r| {
                        let executed = matches!(r.outcome, RequestOutcome::Executed { .. });
                        !executed || r.aggregate_id != aggregate_id || r.aggregate_type != aggregate_type
                    });
                    let version = log.push(aggregate_id, aggregate_type, expected_version, tombstone);
                    let position = log.events.len() as u64;
                    drop(log);
                    self.appended.raise_streams([(aggregate_type, aggregate_id)]);
                    return Ok(Appended { version, position });
                }
                Some(refusal) => refusal,
            }
        };
        batch.acknowledge_stored(self, refusal).await
    }

    async fn archive_stream(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        before_version: u64,
    ) -> Result<u64> {
        let mut log = write(&self.inner);
        let version = log.stream(aggregate_id, aggregate_type).len() as u64;
        crate::lifecycle::check_archive_bound(aggregate_id, aggregate_type, before_version, version)?;
        let before = before_version.saturating_sub(1) as usize;
        Ok(log.move_held(
            0..before,
            (aggregate_id, aggregate_type),
            Held::Live,
            Held::Archived,
        ))
    }

    async fn restore_stream(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let mut log = write(&self.inner);
        let all = 0..log.stream(aggregate_id, aggregate_type).len();
        Ok(log.move_held(all, (aggregate_id, aggregate_type), Held::Archived, Held::Live))
    }

    async fn archived(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        let log = read(&self.inner);
        let stream = log.stream(aggregate_id, aggregate_type);
        Ok(stream.iter().filter(|&&i| log.held[i] == Held::Archived).count() as u64)
    }
}

/// A snapshot store in process memory.
#[derive(Clone, Debug, Default)]
pub struct InMemorySnapshotStore {
    inner: Arc<RwLock<BTreeMap<SnapshotKey, Snapshot>>>,
}

/// Aggregate id, aggregate type, schema version: one snapshot each.
type SnapshotKey = (Uuid, String, u32);

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

fn key(aggregate_id: Uuid, aggregate_type: &str, schema_version: u32) -> SnapshotKey {
    (aggregate_id, aggregate_type.to_owned(), schema_version)
}

/// The keys of every schema version of one aggregate's snapshots.
fn every_schema(aggregate_id: Uuid, aggregate_type: &str) -> std::ops::RangeInclusive<SnapshotKey> {
    key(aggregate_id, aggregate_type, 0)..=key(aggregate_id, aggregate_type, u32::MAX)
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn get_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        schema_version: u32,
    ) -> Result<Option<Snapshot>> {
        let usable = key(aggregate_id, aggregate_type, 0)..=key(aggregate_id, aggregate_type, schema_version);
        Ok(read(&self.inner)
            .range(usable)
            .next_back()
            .map(|(_, s)| s.clone()))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        validate_snapshot(snapshot)?;
        let mut snapshots = write(&self.inner);
        let slot = snapshots.entry(key(
            snapshot.aggregate_id,
            &snapshot.aggregate_type,
            snapshot.schema_version,
        ));
        match slot {
            std::collections::btree_map::Entry::Occupied(mut stored) => {
                if stored.get().version > snapshot.version {
                    return Ok(false);
                }
                stored.insert(snapshot.clone());
            }
            std::collections::btree_map::Entry::Vacant(free) => {
                free.insert(snapshot.clone());
            }
        }
        Ok(true)
    }

    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        let mut snapshots = write(&self.inner);
        let keys: Vec<_> = snapshots
            .range(every_schema(aggregate_id, aggregate_type))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            snapshots.remove(key);
        }
        Ok(!keys.is_empty())
    }

    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        Ok(read(&self.inner)
            .range(every_schema(aggregate_id, aggregate_type))
            .next()
            .is_some())
    }

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

#[async_trait]
impl SnapshotListing for InMemorySnapshotStore {
    async fn snapshot_versions(&self, aggregate_type: &str) -> Result<Vec<crate::snapshot::SnapshotVersion>> {
        Ok(read(&self.inner)
            .values()
            .filter(|s| s.aggregate_type == aggregate_type)
            .map(|s| crate::snapshot::SnapshotVersion {
                aggregate_id: s.aggregate_id,
                schema_version: s.schema_version,
                version: s.version,
            })
            .collect())
    }
}

/// A subscription store in process memory: checkpoints, leases and dead letters for the
/// subscriptions of one process (tests, small programs).
#[derive(Clone, Debug, Default)]
pub struct InMemorySubscriptionStore {
    inner: Arc<Mutex<HashMap<String, SubscriptionState>>>,
}

#[derive(Debug, Default)]
struct SubscriptionState {
    checkpoint: Option<u64>,
    lease: Option<(Uuid, Instant)>,
    dead_letters: Vec<DeadLetter>,
}

impl InMemorySubscriptionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&mut SubscriptionState) -> T) -> Result<T> {
        validate_stored_name(name)?;
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(all.entry(name.to_owned()).or_default()))
    }

    /// Forgets the checkpoint of `name`, and those of its consumer group's state
    /// (`NAME#...`), at once.
    pub(crate) fn forget_checkpoint(&self, name: &str) -> Result<()> {
        validate_stored_name(name)?;
        let group = format!("{name}#");
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (held, state) in all.iter_mut() {
            if held == name || held.starts_with(&group) {
                state.checkpoint = None;
            }
        }
        Ok(())
    }

    /// Stores `position` as the checkpoint of `name` if `owner` holds its lease and the stored
    /// checkpoint is `after`; whether it did. At once, for a read model in memory that commits
    /// its state with it.
    pub(crate) fn commit_checkpoint(
        &self,
        name: &str,
        owner: Uuid,
        after: Option<u64>,
        position: u64,
    ) -> Result<bool> {
        let now = Instant::now();
        self.with(name, |s| match s.lease {
            Some((holder, until)) if holder == owner && until > now && s.checkpoint == after => {
                s.checkpoint = Some(position);
                true
            }
            _ => false,
        })
    }
}

#[async_trait]
impl SubscriptionStore for InMemorySubscriptionStore {
    async fn acquire(&self, name: &str, owner: Uuid, ttl: Duration) -> Result<bool> {
        validate_name(name)?;
        let now = Instant::now();
        // A lease too long to represent lasts a year, longer than any consumer.
        let until = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        self.with(name, |s| match s.lease {
            Some((holder, held_until)) if holder != owner && held_until > now => false,
            _ => {
                s.lease = Some((owner, until));
                true
            }
        })
    }

    async fn release(&self, name: &str, owner: Uuid) -> Result<()> {
        self.with(name, |s| {
            if s.lease.is_some_and(|(holder, _)| holder == owner) {
                s.lease = None;
            }
        })
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        self.with(name, |s| s.checkpoint)
    }

    async fn save_checkpoint(&self, name: &str, owner: Uuid, position: u64) -> Result<bool> {
        let now = Instant::now();
        self.with(name, |s| match s.lease {
            Some((holder, until)) if holder == owner && until > now => {
                s.checkpoint = Some(position);
                true
            }
            _ => false,
        })
    }

    async fn reset(&self, name: &str) -> Result<()> {
        self.forget_checkpoint(name)
    }

    async fn dead_letter(&self, name: &str, event: &StoredEvent, error: &str) -> Result<()> {
        validate_name(name)?;
        self.with(name, |s| {
            s.dead_letters.push(DeadLetter {
                subscription: name.to_owned(),
                position: event.position,
                event_id: event.event_id,
                event_type: event.event_type.to_string(),
                error: error.to_owned(),
                failed_at: chrono::Utc::now(),
            })
        })
    }

    async fn dead_letters(&self, name: &str, skip: usize, limit: usize) -> Result<Vec<DeadLetter>> {
        self.with(name, |s| {
            s.dead_letters.iter().skip(skip).take(limit).cloned().collect()
        })
    }

    async fn remove_dead_letters(&self, name: &str, event_ids: &[Uuid]) -> Result<u64> {
        self.with(name, |s| {
            let before = s.dead_letters.len();
            s.dead_letters
                .retain(|letter| !event_ids.contains(&letter.event_id));
            (before - s.dead_letters.len()) as u64
        })
    }

    async fn redact_dead_letter(
        &self,
        name: &str,
        event_id: Uuid,
        error: &str,
        redacted: &str,
    ) -> Result<u64> {
        self.with(name, |s| {
            let mut changed = 0;
            for letter in s
                .dead_letters
                .iter_mut()
                .filter(|l| l.event_id == event_id && l.error == error)
            {
                letter.error = redacted.to_owned();
                changed += 1;
            }
            changed
        })
    }

    async fn subscriptions(&self) -> Result<Vec<crate::subscription::SubscriptionStatus>> {
        let now = Instant::now();
        let all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut listed: Vec<_> = all
            .iter()
            .map(|(name, s)| crate::subscription::SubscriptionStatus {
                name: name.clone(),
                checkpoint: s.checkpoint,
                owner: s.lease.filter(|(_, until)| *until > now).map(|(owner, _)| owner),
                dead_letters: s.dead_letters.len() as u64,
                abandoned: s.lease.is_some_and(|(_, until)| until <= now),
            })
            .collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }
}
