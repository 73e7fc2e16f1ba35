//! The event store contract.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use uuid::Uuid;

use crate::error::{Error, Result};
pub use crate::event::validate_aggregate_type;
use crate::event::{EventEnvelope, StoredEvent};
use crate::snapshot::{JointSnapshotRead, JointSnapshotWrite};

/// A stream of stored events, read lazily from the store.
pub type EventStream<'a> = BoxStream<'a, Result<StoredEvent>>;

/// Durable, ordered storage of events, one stream per aggregate.
///
/// A stream is identified by `(aggregate_id, aggregate_type)`. Its version is the number of
/// events in it; the first event has aggregate version 1.
///
/// # Contract
///
/// Every backend guarantees, and the conformance suite in `eventsource::testing` checks:
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
///   refused for a conflict or a reused event id, with [`acknowledge_stored_batch`].
/// - **Ordered reads.** [`read_stream`](Self::read_stream) yields a stream's events with
///   aggregate version greater than `after_version`, in version order, exactly as appended.
///   Backends that can stream do so instead of collecting the whole stream in memory.
/// - **Request ids.** Every event reads back with the request id it was appended with, and
///   [`request_version`](Self::request_version) finds the last version stored under one.
/// - **A global feed that never skips.** Every stored event has a position, unique in the
///   store, increasing within a batch and from one append to the next;
///   [`read_all`](Self::read_all) yields the events after a position in position order. A
///   reader that asks again and again for the events after the last position it saw sees every
///   committed event exactly once: no event ever appears later below a position already
///   returned, whatever appends are running meanwhile. A backend whose positions are taken
///   before commit (PostgreSQL) returns an event only once every event that could still
///   commit below it has; positions may have gaps.
/// - **Typed failures.** Backend failures are [`Error::Store`]; a row that the backend cannot
///   decode is [`Error::Corrupt`]. No backend panics on bad data.
///
/// # Wrappers
///
/// A store that wraps another (a router, a store that counts or fails calls) forwards every
/// method, the provided ones too: they are the wrapped store's fast paths (`head`,
/// `load_stream`, `position_of`, `request_version`, `stream_versions`) and abilities
/// (`append_signal`, the joint snapshot statements), and a wrapper that leaves them to their
/// defaults gives the same results, slower, without wake-ups or joint statements. Put
/// `#[deny(clippy::missing_trait_methods)]` on the impl, as this crate's own forwarding impls
/// have; `testing::RequiredOnly` (feature `testing`) is a wrapper that forwards
/// only what is required, and the conformance suite passes through it on every backend.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to the stream if it is at `expected_version`; returns the new version.
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<u64>;

    /// Appends as [`append`](Self::append) does, and tells where the batch's last event is in
    /// the feed, when the store knows it without another read (`None` otherwise; then
    /// [`position_of`](Self::position_of) finds it). The default calls `append`; the stores of
    /// this crate know the position from the append itself.
    async fn append_with_position(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        let version = self
            .append(aggregate_id, aggregate_type, expected_version, events)
            .await?;
        Ok(Appended {
            version,
            position: None,
        })
    }

    /// The feed position of the stream's event at `version`, `None` if the stream has no
    /// event at that version. The default reads the stream from there (one indexed page on
    /// SQLite); PostgreSQL looks the one row up.
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

    /// The stream's events with aggregate version greater than `after_version`, in order.
    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a>;

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

    /// The stream's current version: the number of events in it, 0 if there are none.
    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64>;

    /// Every event with a position greater than `after_position`, in position order; see the
    /// contract for why a reader that resumes after the last position it saw misses nothing.
    fn read_all(&self, after_position: u64) -> EventStream<'_>;

    /// A reader of `snapshots`' snapshots together with this store's events, if this store
    /// can read that snapshot store's data itself (the two share a database), so that a load
    /// with a snapshot is one round trip instead of two.
    ///
    /// `snapshots` is a snapshot store's [`as_any`](crate::SnapshotStore::as_any). A
    /// repository asks once, when it is given its snapshot store. `None`, the default, makes
    /// it read the snapshot and the events one after the other.
    fn joint_snapshot_reader(&self, snapshots: &dyn Any) -> Option<Arc<dyn JointSnapshotRead>> {
        let _ = snapshots;
        None
    }

    /// A writer of events together with a snapshot into `snapshots` (a snapshot store's
    /// [`as_any`](crate::SnapshotStore::as_any)), if this store can write that store's data
    /// in the same transaction (the two share a database), so that a save with a due
    /// snapshot is one round trip instead of two. `None`, the default, makes the repository
    /// append, then write the snapshot.
    fn joint_snapshot_writer(&self, snapshots: &dyn Any) -> Option<Arc<dyn JointSnapshotWrite>> {
        let _ = snapshots;
        None
    }

    /// The feed's head as [`read_all`](Self::read_all) would show it now: the last position
    /// and how many events follow `after_position`. The default reads the whole feed after
    /// `after_position`; database backends count in the database.
    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        use futures_util::StreamExt;

        let mut head = FeedHead::new(after_position, 0);
        let mut feed = self.read_all(after_position);
        while let Some(event) = feed.next().await {
            head.position = event?.position;
            head.events_after += 1;
        }
        Ok(head)
    }

    /// The version of the last event of the stream stored with this request id (the
    /// idempotency key of the command that recorded it), `None` if the stream holds none.
    /// The default reads the whole stream; database backends look it up in an index.
    async fn request_version(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        request_id: Uuid,
    ) -> Result<Option<u64>> {
        use futures_util::StreamExt;

        let mut found = None;
        let mut stream = self.read_stream(aggregate_id, aggregate_type, 0);
        while let Some(event) = stream.next().await {
            let event = event?;
            if event.request_id == Some(request_id) {
                found = Some(event.aggregate_version);
            }
        }
        Ok(found)
    }

    /// A signal raised after each append this store makes (and, on PostgreSQL, after appends
    /// of other processes), so that a consumer of the feed waits for it instead of polling.
    /// `None`, the default, makes consumers poll. A wrapper store must forward it.
    fn append_signal(&self) -> Option<AppendSignal> {
        None
    }

    /// Every stream of one aggregate type with its version, in no particular order: what
    /// operators' statistics and snapshot warming start from. The default reads the whole
    /// feed; the stores of this crate ask their index.
    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>> {
        use futures_util::StreamExt;

        let mut versions = std::collections::HashMap::new();
        let mut feed = self.read_all(0);
        while let Some(event) = feed.next().await {
            let event = event?;
            if *event.aggregate_type == *aggregate_type {
                let version = versions.entry(event.aggregate_id).or_insert(0);
                *version = event.aggregate_version.max(*version);
            }
        }
        Ok(versions.into_iter().collect())
    }
}

/// What an append stored: see [`EventStore::append_with_position`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: u64,
    /// The feed position of the batch's last event, if the store told it.
    pub position: Option<u64>,
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

/// Tells the consumers of a feed that events were appended. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct AppendSignal(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for AppendSignal {
    fn default() -> Self {
        AppendSignal(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl AppendSignal {
    /// A new signal, not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal: every waiter wakes.
    pub fn raise(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A waiter that wakes at each raise from now on.
    pub fn waiter(&self) -> AppendWaiter {
        let mut receiver = self.0.subscribe();
        receiver.mark_unchanged();
        AppendWaiter(receiver)
    }
}

/// Waits for an [`AppendSignal`].
#[derive(Debug)]
pub struct AppendWaiter(tokio::sync::watch::Receiver<u64>);

impl AppendWaiter {
    /// Returns once the signal was raised since the last call (at once if it was meanwhile).
    pub async fn raised(&mut self) {
        if self.0.changed().await.is_err() {
            // The store is gone: nothing will ever be appended through it again.
            std::future::pending::<()>().await;
        }
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
    ) -> Result<u64> {
        (**self)
            .append(aggregate_id, aggregate_type, expected_version, events)
            .await
    }

    async fn append_with_position(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        (**self)
            .append_with_position(aggregate_id, aggregate_type, expected_version, events)
            .await
    }

    async fn position_of(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        version: u64,
    ) -> Result<Option<u64>> {
        (**self).position_of(aggregate_id, aggregate_type, version).await
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

    fn load_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        (**self).load_stream(aggregate_id, aggregate_type, after_version)
    }

    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        (**self).read_all(after_position)
    }

    fn joint_snapshot_reader(&self, snapshots: &dyn Any) -> Option<Arc<dyn JointSnapshotRead>> {
        (**self).joint_snapshot_reader(snapshots)
    }

    fn joint_snapshot_writer(&self, snapshots: &dyn Any) -> Option<Arc<dyn JointSnapshotWrite>> {
        (**self).joint_snapshot_writer(snapshots)
    }

    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        (**self).head(after_position).await
    }

    async fn request_version(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        request_id: Uuid,
    ) -> Result<Option<u64>> {
        (**self)
            .request_version(aggregate_id, aggregate_type, request_id)
            .await
    }

    fn append_signal(&self) -> Option<AppendSignal> {
        (**self).append_signal()
    }

    async fn stream_versions(&self, aggregate_type: &str) -> Result<Vec<(Uuid, u64)>> {
        (**self).stream_versions(aggregate_type).await
    }
}

/// Checks a batch against the contract's rules before a backend writes it.
///
/// Backends call this first, so every one rejects the same batches with the same error.
pub fn validate_batch(
    aggregate_id: Uuid,
    aggregate_type: &str,
    expected_version: u64,
    events: &[EventEnvelope],
) -> Result<()> {
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

/// What an append refused with `refusal` (a conflict or a reused event id) turns into when
/// its batch is the one already stored: `Ok` with the version after the batch if the stream
/// holds every event of the batch under its id at its version, `refusal` otherwise.
///
/// This is how an append made again after a lost answer is recognised (see the contract of
/// [`EventStore`]): the first try committed, so the second finds the stream past its
/// expected version, or a unique event id taken, by its own events. Backends call it on
/// those refusals only, so an append that succeeds pays nothing for it.
pub async fn acknowledge_stored_batch(
    store: &(impl EventStore + ?Sized),
    aggregate_id: Uuid,
    aggregate_type: &str,
    expected_version: u64,
    events: &[EventEnvelope],
    refusal: Error,
) -> Result<u64> {
    acknowledge_stored_append(
        store,
        aggregate_id,
        aggregate_type,
        expected_version,
        events,
        refusal,
    )
    .await
    .map(|appended| appended.version)
}

/// [`acknowledge_stored_batch`], telling also the feed position of the batch's last event as
/// stored, for [`EventStore::append_with_position`].
pub async fn acknowledge_stored_append(
    store: &(impl EventStore + ?Sized),
    aggregate_id: Uuid,
    aggregate_type: &str,
    expected_version: u64,
    events: &[EventEnvelope],
    refusal: Error,
) -> Result<Appended> {
    use futures_util::StreamExt;

    let mut stored = store
        .read_stream(aggregate_id, aggregate_type, expected_version)
        .take(events.len());
    let mut position = None;
    for event in events {
        match stored.next().await {
            Some(Ok(found))
                if found.event_id == event.event_id && found.aggregate_version == event.aggregate_version =>
            {
                position = Some(found.position);
            }
            // Whether the batch is stored is unknown: a refusal now could make the caller
            // decide its command again on top of its own events.
            Some(Err(e)) => return Err(e),
            _ => return Err(refusal),
        }
    }
    Ok(Appended {
        version: expected_version + events.len() as u64,
        position,
    })
}
