//! The event store contract.

use std::sync::Arc;

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use uuid::Uuid;

use crate::error::{Error, Result};
pub use crate::event::validate_aggregate_type;
use crate::event::{EventEnvelope, StoredEvent};

/// A stream of stored events, read lazily from the store.
pub type EventStream<'a> = BoxStream<'a, Result<StoredEvent>>;

/// Durable, ordered storage of events, one stream per aggregate.
///
/// A stream is identified by `(aggregate_id, aggregate_type)`. Its version is the number of
/// events in it; the first event has aggregate version 1.
///
/// # Contract
///
/// Every backend guarantees, and the conformance suite in `eventsourcing_kit::testing` checks:
///
/// - **Atomic, checked appends.** [`append`](Self::append) writes the whole batch or nothing.
///   It succeeds only if the stream is at `expected_version` when the batch is written; a
///   writer that lost a race gets [`Error::Conflict`] with the expected and actual versions,
///   and nothing of its batch is stored. Two writers can never both store a given version.
/// - **Well-formed batches.** Every event of a batch names the stream appended to, and their
///   aggregate versions run `expected_version + 1, +2, ...` without a gap; type names are
///   not empty and hold no NUL character; an event id is never stored twice. A batch that
///   breaks this is [`Error::InvalidInput`] (a reused event id may also surface as
///   [`Error::Conflict`] where the database reports it so) and nothing is written.
/// - **Idempotent appends.** An append whose whole batch is already stored in the stream, each
///   event under its id at its version (the same append made again, after an answer that
///   was lost to a cancellation, a timeout or a dropped connection), succeeds with the
///   version after the batch and writes nothing. Backends check this whenever the append is
///   refused for a conflict or a reused event id, with [`Batch::acknowledge_stored`].
/// - **Ordered reads.** [`read_stream`](Self::read_stream) yields a stream's events with
///   aggregate version greater than `after_version`, in version order, exactly as appended.
///   Backends that can stream do so instead of collecting the whole stream in memory.
/// - **Request ids.** Every event reads back with the request id it was appended with.
/// - **A global feed that never skips.** Every stored event has a position, unique in the
///   store, increasing within a batch and from one append to the next;
///   [`read_all`](Self::read_all) yields the events after a position in position order. A
///   reader that asks again and again for the events after the last position it saw sees every
///   committed event exactly once: no event ever appears later below a position already
///   returned, whatever appends are running meanwhile. A backend whose positions are taken
///   before commit (PostgreSQL) returns an event only once every event that could still
///   commit below it has; positions may have gaps. (Events a
///   [restore](crate::lifecycle::StreamLifecycle::restore_stream) moves back from the
///   archive come back at their own positions, below readers already past them: those do not
///   see them again.)
/// - **Typed failures.** Backend failures are [`Error::Store`]; a row that the backend cannot
///   decode is [`Error::Corrupt`]. No backend panics on bad data.
///
/// - **A cheap head.** [`head`](Self::head) counts where the events are kept; it never
///   reads them.
///
/// # Abilities
///
/// What only some backends can do is not on this trait: each is a value the backend hands
/// out, and [`backend::Stores`](crate::backend::Stores) carries the ones a backend has: the
/// append wake-up signal ([`AppendSignal`](crate::abilities::AppendSignal)), stream listings
/// for operators ([`StreamListing`](crate::abilities::StreamListing),
/// [`SnapshotListing`](crate::abilities::SnapshotListing)), the index of request ids
/// ([`RequestIndex`](crate::abilities::RequestIndex)), the feed read by slices
/// ([`SliceFeed`](crate::abilities::SliceFeed)), and reads and writes of events with a
/// snapshot in one statement ([`JointSnapshots`](crate::snapshot::JointSnapshots)). A
/// repository, subscription or projection built from `Stores` is given each one; built from
/// an event store alone, it does without (it polls, finds request ids in the aggregate's own
/// stream, and makes two round trips where one would do).
///
/// # Wrappers
///
/// A store that wraps another (a router, a store that counts or fails calls) forwards every
/// method, the provided ones too: [`load_stream`](Self::load_stream) and
/// [`position_of`](Self::position_of) are the wrapped store's fast paths, and a wrapper that
/// leaves them to their defaults gives the same results, slower. Put
/// `#[deny(clippy::missing_trait_methods)]` on the impl, as this crate's own forwarding impls
/// have. `testing::RequiredOnly` (feature `testing`) is a wrapper that forwards only what is
/// required; the conformance suite passes through it on every backend. Abilities are not
/// methods, so a wrapper cannot lose them: whoever builds the wrapper decides which to hand
/// out with it.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to the stream if it is at `expected_version`; returns the stream's new
    /// version and the feed position of the batch's last event.
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended>;

    /// The stream's events with aggregate version greater than `after_version`, in order.
    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a>;

    /// The stream's current version: the number of events in it, 0 if there are none.
    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64>;

    /// Every event with a position greater than `after_position`, in position order; see the
    /// contract for why a reader that resumes after the last position it saw misses nothing.
    fn read_all(&self, after_position: u64) -> EventStream<'_>;

    /// The feed's head as [`read_all`](Self::read_all) would show it now: the last position
    /// and how many events follow `after_position`, counted where the events are (an index,
    /// a counter), never by reading them.
    async fn head(&self, after_position: u64) -> Result<FeedHead>;

    /// The stream's events after `after_version` as a load replays them: in version order,
    /// with the aggregate version, event id, event type and version, and payload exactly as
    /// appended. A store may leave out what a replay does not use, for speed: the feed
    /// position (then 0), the time (then the Unix epoch), the metadata and the correlation,
    /// causation and request ids (then `None`). The default is
    /// [`read_stream`](Self::read_stream); PostgreSQL reads only those columns, in one
    /// statement.
    fn load_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        self.read_stream(aggregate_id, aggregate_type, after_version)
    }

    /// The feed position of the stream's event at `version`, `None` if the stream has no
    /// event at that version. The default reads the one event through
    /// [`read_stream`](Self::read_stream); PostgreSQL looks the one row up.
    async fn position_of(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        version: u64,
    ) -> Result<Option<u64>> {
        use futures_util::StreamExt;

        if version == 0 {
            return Ok(None);
        }
        let mut stream = self.read_stream(aggregate_id, aggregate_type, version - 1);
        match stream.next().await.transpose()? {
            Some(event) if event.aggregate_version == version => Ok(Some(event.position)),
            _ => Ok(None),
        }
    }
}

/// What an append stored: see [`EventStore::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// The stream's version after the append.
    pub version: u64,
    /// The feed position of the batch's last event.
    pub position: u64,
}

impl Appended {
    /// The stream at `version` after the append, its last event at feed `position`.
    pub fn new(version: u64, position: u64) -> Self {
        Appended { version, position }
    }
}

/// The feed's head: see [`EventStore::head`].
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct FeedHead {
    /// The position of the last event the feed shows, or the position asked about if none
    /// follows it.
    pub position: u64,
    /// How many events the feed shows after the position asked about.
    pub events_after: u64,
    /// How many events are stored after the position asked about but not shown by the feed
    /// yet, because a transaction that may still store events below them runs (PostgreSQL);
    /// 0 where the feed shows every stored event at once.
    pub held_back: u64,
    /// What holds the feed back, where the store can tell.
    pub held_by: Option<FeedHolder>,
}

impl FeedHead {
    /// A head at `position` with `events_after` events after the position asked about, none
    /// held back.
    pub fn new(position: u64, events_after: u64) -> Self {
        FeedHead {
            position,
            events_after,
            ..FeedHead::default()
        }
    }

    /// The same head, with `events` stored events that the feed does not show yet, held back
    /// by `holder` where it is known.
    #[must_use]
    pub fn with_held_back(mut self, events: u64, holder: Option<FeedHolder>) -> Self {
        self.held_back = events;
        self.held_by = holder;
        self
    }

    /// How far a consumer at the position asked about is behind: the events the feed shows
    /// after it and those stored but held back.
    pub fn lag(&self) -> u64 {
        self.events_after.saturating_add(self.held_back)
    }
}

/// The transaction that holds a feed back, as far as the database tells.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct FeedHolder {
    /// The server process running it.
    pub pid: Option<u32>,
    /// The database it runs in.
    pub database: Option<String>,
    /// How long it has been running.
    pub age: Option<std::time::Duration>,
}

impl FeedHolder {
    /// A holder known by the process, database and age the server tells.
    pub fn new(pid: Option<u32>, database: Option<String>, age: Option<std::time::Duration>) -> Self {
        FeedHolder { pid, database, age }
    }
}

impl std::fmt::Display for FeedHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a transaction")?;
        if let Some(pid) = self.pid {
            write!(f, " of server process {pid}")?;
        }
        if let Some(database) = &self.database {
            write!(f, " in database {database:?}")?;
        }
        if let Some(age) = self.age {
            write!(f, ", running for {:.1} s", age.as_secs_f64())?;
        }
        Ok(())
    }
}

#[async_trait]
// Forwards every method, provided ones too: a wrapper that does not loses its fast paths.
#[deny(clippy::missing_trait_methods)]
impl<S: EventStore + ?Sized> EventStore for Arc<S> {
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        (**self)
            .append(aggregate_id, aggregate_type, expected_version, events)
            .await
    }

    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        (**self).read_stream(aggregate_id, aggregate_type, after_version)
    }

    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        (**self).stream_version(aggregate_id, aggregate_type).await
    }

    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        (**self).read_all(after_position)
    }

    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        (**self).head(after_position).await
    }

    fn load_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        (**self).load_stream(aggregate_id, aggregate_type, after_version)
    }

    async fn position_of(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        version: u64,
    ) -> Result<Option<u64>> {
        (**self).position_of(aggregate_id, aggregate_type, version).await
    }
}

/// One append's arguments, checked against the contract's rules: what a backend validates
/// before it writes, and recognises afterwards when the append turns out to be stored already.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The stream appended to.
    pub aggregate_id: Uuid,
    /// The stream's aggregate type.
    pub aggregate_type: &'a str,
    /// The version the stream must be at.
    pub expected_version: u64,
    /// The events, at least one, versions running on from `expected_version`.
    pub events: &'a [EventEnvelope],
}

impl<'a> Batch<'a> {
    /// The batch of an [`EventStore::append`] call, if it keeps the contract's rules
    /// (well-formed batches): otherwise [`Error::InvalidInput`], and nothing may be written.
    ///
    /// Backends call this first, so every one rejects the same batches with the same error.
    pub fn checked(
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        expected_version: u64,
        events: &'a [EventEnvelope],
    ) -> Result<Self> {
        let batch = Batch {
            aggregate_id,
            aggregate_type,
            expected_version,
            events,
        };
        batch.validate()?;
        Ok(batch)
    }

    /// The stream's version once the batch is stored.
    pub fn version_after(&self) -> u64 {
        self.expected_version + self.events.len() as u64
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let Batch {
            aggregate_id,
            aggregate_type,
            expected_version,
            events,
        } = *self;
        if events.is_empty() {
            return Err(Error::InvalidInput("an append needs at least one event".into()));
        }
        validate_aggregate_type(aggregate_type)?;
        if expected_version.checked_add(events.len() as u64).is_none() {
            return Err(Error::InvalidInput(format!(
                "a batch of {} event(s) after version {expected_version} overflows the version counter",
                events.len()
            )));
        }
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let want = expected_version + 1 + i as u64;
            if event.aggregate_id != aggregate_id || *event.aggregate_type != *aggregate_type {
                return Err(Error::InvalidInput(format!(
                    "event {} belongs to {} {}, not to the stream {aggregate_type} {aggregate_id}",
                    event.event_id, event.aggregate_type, event.aggregate_id
                )));
            }
            if event.aggregate_version != want {
                return Err(Error::InvalidInput(format!(
                    "event {} has aggregate version {}, expected {want}",
                    event.event_id, event.aggregate_version
                )));
            }
            if event.event_type.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "event {} has an empty type name",
                    event.event_id
                )));
            }
            if event.event_type.contains('\0') {
                return Err(Error::InvalidInput(format!(
                    "the type name of event {} holds a NUL character, which not every store can keep",
                    event.event_id
                )));
            }
            if !ids.insert(event.event_id) {
                return Err(Error::InvalidInput(format!(
                    "event id {} appears twice in the batch",
                    event.event_id
                )));
            }
        }
        Ok(())
    }

    /// What an append refused with `refusal` (a conflict or a reused event id) turns into
    /// when this batch is the one already stored in `store`: `Ok` with the version after the
    /// batch and the position of its last event as stored, if the stream holds every event
    /// of the batch under its id at its version; `refusal` otherwise.
    ///
    /// This is how an append made again after a lost answer is recognised (see the contract
    /// of [`EventStore`]): the first try committed, so the second finds the stream past its
    /// expected version, or a unique event id taken, by its own events. Backends call it on
    /// those refusals only, so an append that succeeds pays nothing for it.
    ///
    /// # Errors
    ///
    /// `refusal` if the batch is not the one stored; a read error of `store` as it gives it.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future loses nothing, and nothing is left half done.
    pub async fn acknowledge_stored(
        &self,
        store: &(impl EventStore + ?Sized),
        refusal: Error,
    ) -> Result<Appended> {
        self.stored(store).await?.ok_or(refusal)
    }

    /// The outcome of this batch if `store` holds every event of it under its id at its
    /// version, `None` if it does not.
    pub(crate) async fn stored(&self, store: &(impl EventStore + ?Sized)) -> Result<Option<Appended>> {
        use futures_util::StreamExt;

        let mut stored = store
            .read_stream(self.aggregate_id, self.aggregate_type, self.expected_version)
            .take(self.events.len());
        let mut position = 0;
        for event in self.events {
            match stored.next().await {
                Some(Ok(found))
                    if found.event_id == event.event_id
                        && found.aggregate_version == event.aggregate_version =>
                {
                    position = found.position;
                }
                // Whether the batch is stored is unknown: a refusal now could make the caller
                // decide its command again on top of its own events.
                Some(Err(e)) => return Err(e),
                _ => return Ok(None),
            }
        }
        Ok(Some(Appended {
            version: self.version_after(),
            position,
        }))
    }
}
