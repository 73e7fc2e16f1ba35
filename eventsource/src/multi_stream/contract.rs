//! The store's side of a save over several streams: the ability and its contract, and what
//! it is given, the batches it writes and the streams it only checks, checked against the
//! contract's rules.

use std::collections::HashSet;

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::{Error, Result, StreamConflict};
use crate::event::validate_aggregate_type;
use crate::event_store::{Appended, Batch, EventStore};

/// A condition on a stream that a save over several streams does not write: that it is at
/// `version` when the save commits (0: that it does not exist).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamCheck {
    /// The stream's aggregate type.
    pub aggregate_type: String,
    /// The stream's aggregate id.
    pub aggregate_id: Uuid,
    /// The version it must be at; 0 for a stream that must not exist.
    pub version: u64,
}

impl StreamCheck {
    /// The stream must be at `version`.
    pub fn at(aggregate_type: impl Into<String>, aggregate_id: Uuid, version: u64) -> Self {
        StreamCheck {
            aggregate_type: aggregate_type.into(),
            aggregate_id,
            version,
        }
    }

    /// The stream must not exist (have no event).
    pub fn absent(aggregate_type: impl Into<String>, aggregate_id: Uuid) -> Self {
        Self::at(aggregate_type, aggregate_id, 0)
    }
}

/// The arguments of [`MultiStreamAppend::append_streams`],
/// checked: at least one batch, each well-formed (as [`Batch::checked`] requires), no stream
/// written or checked twice, no event id twice.
#[derive(Clone, Copy, Debug)]
pub struct StreamBatches<'a> {
    writes: &'a [Batch<'a>],
    checks: &'a [StreamCheck],
}

impl<'a> StreamBatches<'a> {
    /// The save of `writes`, conditioned on `checks`, if it keeps the contract's rules:
    /// otherwise [`Error::InvalidInput`], and nothing may be written. Backends call this
    /// first, so every one rejects the same saves with the same error.
    pub fn checked(writes: &'a [Batch<'a>], checks: &'a [StreamCheck]) -> Result<Self> {
        if writes.is_empty() {
            return Err(Error::InvalidInput(
                "a save over several streams writes at least one stream".into(),
            ));
        }
        let mut streams = HashSet::with_capacity(writes.len() + checks.len());
        let mut twice = |aggregate_type: &str, aggregate_id: Uuid| {
            match streams.insert((aggregate_type.to_owned(), aggregate_id)) {
                true => Ok(()),
                false => Err(Error::InvalidInput(format!(
                    "the stream {aggregate_type} {aggregate_id} appears twice in one save: write or check each stream once"
                ))),
            }
        };
        let mut ids = HashSet::new();
        for batch in writes {
            batch.validate()?;
            twice(batch.aggregate_type, batch.aggregate_id)?;
            if let Some(event) = batch.events.iter().find(|e| !ids.insert(e.event_id)) {
                return Err(Error::InvalidInput(format!(
                    "event id {} appears twice in the save",
                    event.event_id
                )));
            }
        }
        for check in checks {
            validate_aggregate_type(&check.aggregate_type)?;
            twice(&check.aggregate_type, check.aggregate_id)?;
        }
        Ok(StreamBatches { writes, checks })
    }

    /// The batches written, in order.
    pub fn writes(&self) -> &'a [Batch<'a>] {
        self.writes
    }

    /// The streams checked and not written.
    pub fn checks(&self) -> &'a [StreamCheck] {
        self.checks
    }

    /// The events of the save, in order: each batch's, batch after batch.
    pub fn event_count(&self) -> usize {
        self.writes.iter().map(|b| b.events.len()).sum()
    }

    /// The conflict of the streams whose version, as `actual` gives it for each written
    /// stream then each checked stream, is not the one expected; `None` if every one is.
    pub fn conflicts(&self, actual: &[u64]) -> Option<Error> {
        let expected = self
            .writes
            .iter()
            .map(|b| (b.aggregate_type, b.aggregate_id, b.expected_version, true))
            .chain(
                self.checks
                    .iter()
                    .map(|c| (c.aggregate_type.as_str(), c.aggregate_id, c.version, false)),
            );
        let streams: Vec<StreamConflict> = expected
            .zip(actual)
            .filter(|((_, _, expected, _), actual)| expected != *actual)
            .map(|((aggregate_type, id, expected, written), actual)| {
                StreamConflict::new(aggregate_type, id, expected, *actual, written)
            })
            .collect();
        (!streams.is_empty()).then_some(Error::Conflicts { streams })
    }

    /// The current version of each written stream, then of each checked stream, in `store`.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the store failed (transient for a lost
    /// connection or a timeout: see [`Error::is_transient`](crate::Error::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn versions(&self, store: &(impl EventStore + ?Sized)) -> Result<Vec<u64>> {
        let mut versions = Vec::with_capacity(self.writes.len() + self.checks.len());
        for batch in self.writes {
            versions.push(
                store
                    .stream_version(batch.aggregate_id, batch.aggregate_type)
                    .await?,
            );
        }
        for check in self.checks {
            versions.push(
                store
                    .stream_version(check.aggregate_id, &check.aggregate_type)
                    .await?,
            );
        }
        Ok(versions)
    }

    /// What a save refused with `refusal` turns into when it is the one already stored in
    /// `store` (made again after a lost answer): `Ok` with each batch's outcome if every batch
    /// is stored under its ids, as [`Batch::acknowledge_stored`] finds one; `refusal`
    /// otherwise.
    ///
    /// # Errors
    ///
    /// `refusal` if the save is not the one stored; a read error of `store` as it gives it.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn acknowledge_stored(
        &self,
        store: &(impl EventStore + ?Sized),
        refusal: Error,
    ) -> Result<Vec<Appended>> {
        let mut appended = Vec::with_capacity(self.writes.len());
        for batch in self.writes {
            match batch.stored(store).await? {
                Some(stored) => appended.push(stored),
                None => return Err(refusal),
            }
        }
        Ok(appended)
    }

    /// The refusal of a save whose stores found it could not go in as it is: the conflict of
    /// every stream not at its expected version, read now from `store`, or, if every one
    /// is, `otherwise` (a reused event id); unless the save is the one already stored.
    ///
    /// # Errors
    ///
    /// The conflict, `otherwise`, or a read error of `store`.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn refused(
        &self,
        store: &(impl EventStore + ?Sized),
        otherwise: Error,
    ) -> Result<Vec<Appended>> {
        let refusal = self.conflicts(&self.versions(store).await?).unwrap_or(otherwise);
        self.acknowledge_stored(store, refusal).await
    }
}

/// Saves over several streams in one transaction: what [`crate::multi_stream`] builds on.
///
/// # Contract
///
/// [`append_streams`](Self::append_streams) appends every batch of the save, each to its
/// stream as [`EventStore::append`](crate::EventStore::append) would, or none:
///
/// - **All or nothing.** It stores the batches only if every written stream is at its
///   expected version and every checked stream at its version (0: absent). Otherwise nothing
///   is stored and the error is [`Error::Conflicts`](crate::Error::Conflicts), naming every
///   stream whose expectation failed, as the store found it.
/// - **Checks hold at the commit.** An append to a checked stream made at the same time
///   commits either before the save (which then fails on it) or after it: never a save that
///   went in on a stream that had already moved on.
/// - **One place in the feed.** The save's events appear in the feed together, in the order
///   of its batches, at the positions the returned [`Appended`]s give (one per batch, in
///   order); a reader never sees some of them without the others.
/// - **A lost answer is acknowledged.** Made again after it committed (its answer lost), it
///   returns `Ok` with the same outcomes, writing nothing, as an append does.
///
/// The conformance suite (the abilities', [`stores_conformance!`](crate::stores_conformance)) checks each point,
/// concurrency included.
#[async_trait]
pub trait MultiStreamAppend: Send + Sync {
    /// Appends every batch of `save`, conditioned on its checks, in one transaction; the
    /// outcome of each batch, in order.
    async fn append_streams(&self, save: StreamBatches<'_>) -> Result<Vec<Appended>>;
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: MultiStreamAppend + ?Sized> MultiStreamAppend for std::sync::Arc<T> {
    async fn append_streams(&self, save: StreamBatches<'_>) -> Result<Vec<Appended>> {
        (**self).append_streams(save).await
    }
}
