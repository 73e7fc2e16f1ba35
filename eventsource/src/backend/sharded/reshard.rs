//! Resharding offline: every event of one store copied into another (new databases under a
//! new shard map, or a sharded store's shards into one database), batch by batch with their
//! request ids, then the two compared stream by stream. See the sharding guide for the
//! procedure around it.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::TryStreamExt;
use uuid::Uuid;

use crate::backend::Stores;
use crate::error::{Error, Result};
use crate::event::{EventEnvelope, StoredEvent};
use crate::event_store::EventStore;
use crate::request::{Fingerprint, RequestOutcome};

/// What [`copy`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Copied {
    /// Events appended to the target.
    pub events: u64,
    /// Events the target held already (a copy run again after an interruption).
    pub present: u64,
    /// Batches appended with their request id recorded in the target's index.
    pub requests: u64,
    /// Data subjects whose keys (see [`crate::personal`]) were copied into the target's key
    /// store.
    pub subjects: u64,
}

/// What [`compare`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Comparison {
    /// Streams of the source.
    pub streams: u64,
    /// Events of the source.
    pub events: u64,
    /// Each stream whose event count or last event id differs between the two stores.
    pub differences: Vec<StreamDifference>,
}

/// A stream that [`compare`] found different: its event count and last event id in each
/// store (`(0, None)` where a store does not have it).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamDifference {
    /// The stream's aggregate type.
    pub aggregate_type: String,
    /// The stream's aggregate id.
    pub aggregate_id: Uuid,
    /// Its events and last event id in the source.
    pub source: (u64, Option<Uuid>),
    /// Its events and last event id in the target.
    pub target: (u64, Option<Uuid>),
}

/// The feeds of `stores`: each shard's own, or the store's.
fn feeds(stores: &Stores) -> Vec<Arc<dyn EventStore>> {
    match stores.shards() {
        Some(shards) => shards.iter().map(|shard| shard.events.clone()).collect(),
        None => vec![stores.events.clone()],
    }
}

/// Copies every event of `source` into `target`, which places each stream where its own map
/// says: each feed of the source is read in order, and each batch (consecutive events of one
/// stream with one request id, as they were appended) appended to the target at its version,
/// with its request id recorded in the target's index where both stores keep one (with the
/// fingerprint the source recorded). `progress` is called with the events done so far.
///
/// The keys of data subjects (see [`crate::personal`]) are copied first, with the streams
/// each holds values in and the state of their forgetting, from the source's key store into
/// the target's.
///
/// Run it with the application stopped: events appended to the source meanwhile may be
/// missed. Run again after an interruption, it goes on: batches the target holds already are
/// counted as present. Refusals recorded in the source's index and snapshots are not copied
/// (warm the target's snapshots with `admin snapshots rewarm`).
///
/// Streams archived (see [`crate::lifecycle`]) must be restored before the copy, since the
/// feed does not hold their archived events; a store that holds a deleted stream cannot be
/// copied yet. Both are refused with the stream named.
///
/// # Errors
///
/// A store error of either store; [`Error::Conflict`] if the target holds other events of a
/// stream at the versions being copied (it is not a copy of this source);
/// [`Error::InvalidInput`] for an archived or a deleted stream.
///
/// # Cancel safety
///
/// Dropped, the batches appended so far stay; running it again goes on.
pub async fn copy(source: &Stores, target: &Stores, mut progress: impl FnMut(u64) + Send) -> Result<Copied> {
    let mut copied = Copied {
        subjects: copy_keys(source, target).await?,
        ..Copied::default()
    };
    for feed in feeds(source) {
        let mut read = feed.read_all(0);
        let mut batch: Vec<StoredEvent> = Vec::new();
        while let Some(event) = read.try_next().await? {
            if batch.first().is_some_and(|first| !same_batch(first, &event)) {
                copy_batch(source, target, &std::mem::take(&mut batch), &mut copied).await?;
                progress(copied.events + copied.present);
            }
            batch.push(event);
        }
        if !batch.is_empty() {
            copy_batch(source, target, &batch, &mut copied).await?;
            progress(copied.events + copied.present);
        }
    }
    Ok(copied)
}

/// Subjects read from the key store at a time.
const SUBJECTS_PAGE: usize = 500;

/// Copies every data subject's key and streams from the source's key store into the
/// target's, where both keep one; how many it copied.
async fn copy_keys(source: &Stores, target: &Stores) -> Result<u64> {
    let (Some(from), Some(to)) = (&source.keys, &target.keys) else {
        return Ok(0);
    };
    let (from, to) = (from.store(), to.store());
    let (mut copied, mut after) = (0, None::<String>);
    loop {
        let page = from.export(after.as_deref(), SUBJECTS_PAGE).await?;
        for record in &page {
            to.import(record).await?;
            copied += 1;
        }
        match page.last() {
            Some(last) if page.len() == SUBJECTS_PAGE => after = Some(last.subject.clone()),
            _ => return Ok(copied),
        }
    }
}

/// Whether `event` follows `first` in one appended batch: the same stream, the next version,
/// the same request id.
fn same_batch(first: &StoredEvent, event: &StoredEvent) -> bool {
    first.aggregate_id == event.aggregate_id
        && first.aggregate_type == event.aggregate_type
        && first.request_id == event.request_id
}

async fn copy_batch(
    source: &Stores,
    target: &Stores,
    batch: &[StoredEvent],
    copied: &mut Copied,
) -> Result<()> {
    let first = &batch[0];
    let (id, ty) = (first.aggregate_id, &*first.aggregate_type);
    let expected = first.aggregate_version - 1;
    let last = batch[batch.len() - 1].aggregate_version;
    let held = target.events.stream_version(id, ty).await?;
    if held >= last {
        // Copied before this run: the comparison checks that it is the same.
        copied.present += batch.len() as u64;
        return Ok(());
    }
    if expected > held {
        // The feed starts the stream past the target's version: its earlier events are not
        // in the feed (see `crate::lifecycle`).
        let why = match *first.event_type == *crate::lifecycle::DELETED {
            true => "was deleted: its tombstone cannot be copied on its own",
            false => "has archived events, which the feed does not hold: restore it first",
        };
        return Err(Error::InvalidInput(format!("cannot copy {ty} {id}: it {why}")));
    }
    let envelopes: Vec<EventEnvelope> = batch.iter().map(|event| event.envelope.clone()).collect();
    match (&first.request_id, &target.request_index) {
        (Some(request), Some(index)) => {
            let fingerprint = fingerprint_of(source, request, id).await?;
            index
                .append_with_request(id, ty, expected, &envelopes, fingerprint)
                .await?;
            copied.requests += 1;
        }
        _ => {
            target.events.append(id, ty, expected, &envelopes).await?;
        }
    }
    copied.events += batch.len() as u64;
    Ok(())
}

/// The fingerprint the source recorded with `request` for the aggregate `id`, if it did.
async fn fingerprint_of(
    source: &Stores,
    request: &crate::request::RequestId,
    id: Uuid,
) -> Result<Option<Fingerprint>> {
    let Some(index) = &source.request_index else {
        return Ok(None);
    };
    Ok(index
        .find_request(request)
        .await?
        .filter(|record| {
            record.aggregate_id == id && matches!(record.outcome, RequestOutcome::Executed { .. })
        })
        .and_then(|record| record.fingerprint))
}

/// Each stream's event count and last event id over the feeds of `stores`.
async fn summary(stores: &Stores) -> Result<HashMap<(String, Uuid), (u64, Option<Uuid>)>> {
    let mut streams: HashMap<(String, Uuid), (u64, Option<Uuid>)> = HashMap::new();
    for feed in feeds(stores) {
        let mut read = feed.read_all(0);
        while let Some(event) = read.try_next().await? {
            let entry = streams
                .entry((event.aggregate_type.to_string(), event.aggregate_id))
                .or_insert((0, None));
            entry.0 += 1;
            entry.1 = Some(event.event_id);
        }
    }
    Ok(streams)
}

/// Compares `source` and `target` stream by stream: the event count and the last event id of
/// every stream either holds, read from their feeds. An empty list of differences means the
/// target holds every stream of the source as the source holds it, and nothing else.
///
/// # Errors
///
/// A store error of either store.
///
/// # Cancel safety
///
/// A read: dropping the future loses nothing.
pub async fn compare(source: &Stores, target: &Stores) -> Result<Comparison> {
    let (before, after) = (summary(source).await?, summary(target).await?);
    let mut comparison = Comparison {
        streams: before.len() as u64,
        events: before.values().map(|(count, _)| count).sum(),
        differences: Vec::new(),
    };
    let keys: std::collections::BTreeSet<&(String, Uuid)> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (source_side, target_side) = (
            before.get(key).copied().unwrap_or((0, None)),
            after.get(key).copied().unwrap_or((0, None)),
        );
        if source_side != target_side {
            comparison.differences.push(StreamDifference {
                aggregate_type: key.0.clone(),
                aggregate_id: key.1,
                source: source_side,
                target: target_side,
            });
        }
    }
    Ok(comparison)
}

impl Comparison {
    /// [`Error::Corrupt`] naming the first differences unless there are none.
    ///
    /// # Errors
    ///
    /// As said.
    pub fn require_same(&self) -> Result<()> {
        match self.differences.as_slice() {
            [] => Ok(()),
            differences => Err(Error::corrupt(
                "the copy of the store",
                format!(
                    "{} of {} streams differ, first {} {}: {:?} events and last event in the source, {:?} in the copy",
                    differences.len(),
                    self.streams,
                    differences[0].aggregate_type,
                    differences[0].aggregate_id,
                    differences[0].source,
                    differences[0].target
                ),
            )),
        }
    }
}
