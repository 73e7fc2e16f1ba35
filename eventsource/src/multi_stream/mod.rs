//! Saves over several streams at once: all or nothing, each stream at its expected version,
//! and conditions on streams the save does not write.
//!
//! A rule that spans aggregates (a username claimed once, stock reserved for an order, a
//! transfer between two accounts) is kept by saving the aggregates it touches together. A
//! [`MultiStreamSave`] takes the [`AggregateRoot`]s a decision changed, of any aggregate
//! types, and conditions on streams it read but does not write ("still at the version I
//! read", "does not exist yet"), and saves them in one transaction of the store. If any
//! stream moved on meanwhile, nothing is written and the error is
//! [`Error::Conflicts`], naming every stream whose expectation failed; the roots keep their
//! events. [`retry`] runs a decision again on such a conflict, from fresh loads, as a
//! repository's command loop does for one aggregate.
//!
//! Every backend of this crate saves over several streams (the ability is
//! [`MultiStreamAppend`], in [`Stores::multi_stream`](crate::backend::Stores::multi_stream));
//! a store spread over several databases cannot, across them.
//!
//! What a multi-stream save leaves out, next to [`Repository::save`](crate::Repository::save):
//! it takes no snapshot (the next save of the aggregate, or `admin snapshots rewarm`,
//! does), it records no request id (a lost answer is still recognised by the events' ids),
//! and it is not grouped with other saves into one commit.
//!
//! ```
//! use eventsourcing_kit::prelude::*;
//! use eventsourcing_kit::multi_stream::{self, MultiStreamSave};
//!
//! #[event(aggregate = "Username")]
//! pub struct Claimed { pub user: Uuid }
//!
//! /// A username, its id derived from the name: one stream per name.
//! #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
//! #[aggregate(name = "Username", events(Claimed))]
//! pub struct Username { pub user: Option<Uuid> }
//! impl Apply<Claimed> for Username { fn apply(&mut self, e: &Claimed) { self.user = Some(e.user) } }
//!
//! #[event(aggregate = "User")]
//! pub struct Registered { pub name: String }
//!
//! #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
//! #[aggregate(name = "User", events(Registered))]
//! pub struct User { pub name: String }
//! impl Apply<Registered> for User { fn apply(&mut self, e: &Registered) { self.name = e.name.clone() } }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
//! let stores = eventsourcing_kit::backend::open("memory:").await?;
//! let (users, names) = (stores.repository::<User>(), stores.repository::<Username>());
//! let store = stores.multi_stream()?;
//!
//! let register = |name: &'static str| {
//!     let (users, names, store) = (users.clone(), names.clone(), store.clone());
//!     async move {
//!         let user = Uuid::new_v4();
//!         let name_id = multi_stream::name_id(Uuid::NAMESPACE_OID, name.as_bytes());
//!         let (users, names, store) = (&users, &names, &store);
//!         multi_stream::retry(5, || async move {
//!             let mut claim = names.load_or_create(name_id).await?;
//!             if claim.state().user.is_some() {
//!                 return Ok(false);
//!             }
//!             claim.record(Claimed { user });
//!             let mut account = users.create_new(user);
//!             account.record(Registered { name: name.to_owned() });
//!             MultiStreamSave::new().write(&mut claim).write(&mut account).save(store).await?;
//!             Ok::<_, Error>(true)
//!         })
//!         .await
//!     }
//! };
//! assert!(register("ada").await?);
//! assert!(!register("ada").await?, "a name is claimed once");
//! # Ok(()) }
//! ```
//!
//! The username guide section (`docs/guides/multi-stream.md`) runs 64 callers at once.

mod contract;

pub use contract::{MultiStreamAppend, StreamBatches, StreamCheck};

use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::event_store::{Appended, Batch};
use crate::personal::seal::Unsealed;
use crate::personal::Keyring;
use crate::registry;
use crate::root::AggregateRoot;

/// An aggregate root whose unsaved events a [`MultiStreamSave`] writes, whatever its type.
trait Written: Send + Sync {
    fn aggregate_type(&self) -> &'static str;
    fn id(&self) -> Uuid;
    fn saved_version(&self) -> u64;
    fn envelopes(&self) -> Result<Unsealed>;
    fn mark_saved(&mut self, position: u64);
}

impl<A: Aggregate> Written for AggregateRoot<A> {
    fn aggregate_type(&self) -> &'static str {
        A::TYPE_NAME
    }

    fn id(&self) -> Uuid {
        AggregateRoot::id(self)
    }

    fn saved_version(&self) -> u64 {
        AggregateRoot::saved_version(self)
    }

    fn envelopes(&self) -> Result<Unsealed> {
        self.pending_envelopes()
    }

    fn mark_saved(&mut self, position: u64) {
        AggregateRoot::mark_saved(self, position)
    }
}

/// A save of several aggregates' unsaved events in one transaction, conditioned on streams
/// it does not write: see the [module docs](self).
#[must_use = "a save does nothing until `save` is awaited"]
pub struct MultiStreamSave<'r> {
    written: Vec<&'r mut dyn Written>,
    checks: Vec<StreamCheck>,
    keys: Option<Keyring>,
}

impl std::fmt::Debug for MultiStreamSave<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let written: Vec<String> = self
            .written
            .iter()
            .map(|w| format!("{} {}", w.aggregate_type(), w.id()))
            .collect();
        f.debug_struct("MultiStreamSave")
            .field("written", &written)
            .field("checks", &self.checks)
            .finish()
    }
}

impl Default for MultiStreamSave<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'r> MultiStreamSave<'r> {
    /// A save of nothing yet.
    pub fn new() -> Self {
        MultiStreamSave {
            written: Vec::new(),
            checks: Vec::new(),
            keys: None,
        }
    }

    /// Seals the personal fields of the events written with `keys` (see
    /// [`crate::personal`]; [`Stores::keys`](crate::backend::Stores::keys) is the backend's).
    /// Without it, a save of events with personal fields is [`Error::InvalidConfiguration`].
    pub fn sealed_with(mut self, keys: &Keyring) -> Self {
        self.keys = Some(keys.clone());
        self
    }

    /// Writes the unsaved events of `root`, expecting its stream at the version it was
    /// loaded at. A root without unsaved events is checked instead: its stream must still
    /// be at that version.
    pub fn write<A: Aggregate>(mut self, root: &'r mut AggregateRoot<A>) -> Self {
        self.written.push(root);
        self
    }

    /// Requires the stream of `A` with id `id` to be at `version` when the save commits.
    pub fn expect_version<A: Aggregate>(mut self, id: Uuid, version: u64) -> Self {
        self.checks.push(StreamCheck::at(A::TYPE_NAME, id, version));
        self
    }

    /// Requires the stream of `A` with id `id` not to exist when the save commits.
    pub fn expect_absent<A: Aggregate>(self, id: Uuid) -> Self {
        self.expect_version::<A>(id, 0)
    }

    /// Requires the stream of `root`, read and not written, to be still at the version it
    /// was loaded at when the save commits.
    pub fn expect_unchanged<A: Aggregate>(self, root: &AggregateRoot<A>) -> Self {
        self.expect_version::<A>(root.id(), root.saved_version())
    }

    /// Requires a stream named by its aggregate type's name to be at `check`'s version when
    /// the save commits; the type must be registered in this program.
    pub fn expect(mut self, check: StreamCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Saves it in `store` (such as [`Stores::multi_stream`](crate::backend::Stores::multi_stream)):
    /// every root's events, or none. The outcome of each root written, in the order given
    /// (a root without unsaved events, checked only, is left out).
    ///
    /// # Errors
    ///
    /// - [`Error::Conflicts`] if a stream was not at the version expected (another writer
    ///   came first): nothing was written, and the roots keep their events; load them again
    ///   and decide again ([`retry`]).
    /// - [`Error::InvalidInput`] for a save that writes nothing, a stream written or checked
    ///   twice, an aggregate type the program did not register, or events carrying a request
    ///   id (a save over several streams records none); [`Error::Serialization`]
    ///   for an event that cannot be stored. Nothing was written.
    /// - [`Error::Store`] if the store failed: the save may or may not have committed, and
    ///   saving the same roots again is safe (the store recognises their events by id).
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, the save may or may not have committed, as after a store
    /// error, and the roots keep their events.
    pub async fn save(self, store: &(impl MultiStreamAppend + ?Sized)) -> Result<Vec<Appended>> {
        registry::check()?;
        let MultiStreamSave {
            mut written,
            mut checks,
            keys,
        } = self;
        for check in &checks {
            if registry::aggregate(&check.aggregate_type).is_none() {
                return Err(Error::InvalidInput(format!(
                    "a save checks stream {} {} of aggregate type `{}`, which is not registered in this program",
                    check.aggregate_type, check.aggregate_id, check.aggregate_type
                )));
            }
        }
        for (i, root) in written.iter().enumerate() {
            if registry::aggregate(root.aggregate_type()).is_none() {
                return Err(Error::InvalidInput(format!(
                    "aggregate type `{}` is not registered in this program",
                    root.aggregate_type()
                )));
            }
            let (id, ty) = (root.id(), root.aggregate_type());
            if written[..i]
                .iter()
                .any(|r| r.id() == id && r.aggregate_type() == ty)
            {
                return Err(Error::InvalidInput(format!(
                    "the stream {ty} {id} appears twice in one save: write or check each stream once"
                )));
            }
        }
        let mut envelopes = Vec::with_capacity(written.len());
        for root in &written {
            let events = root.envelopes()?.seal(keys.as_ref()).await?;
            // The request index records one request per batch: a request id here would be
            // stored with the events and answer nothing.
            if let Some(request) = events.iter().find_map(|e| e.request_id.as_ref()) {
                return Err(Error::InvalidInput(format!(
                    "{} {} carries request id {request}: a save over several streams records no request id; \
                     run the command through the repository, or make the decision idempotent",
                    root.aggregate_type(),
                    root.id()
                )));
            }
            envelopes.push(events);
        }
        // Roots without events are checks of their stream.
        let mut writing = Vec::with_capacity(written.len());
        for (root, events) in written.drain(..).zip(&envelopes) {
            match events.is_empty() {
                true => checks.push(StreamCheck::at(
                    root.aggregate_type(),
                    root.id(),
                    root.saved_version(),
                )),
                false => writing.push((root, events)),
            }
        }
        if writing.is_empty() {
            return Err(Error::InvalidInput(
                "a save over several streams writes at least one stream: no root has unsaved events".into(),
            ));
        }
        let batches: Vec<Batch<'_>> = writing
            .iter()
            .map(|(root, events)| Batch {
                aggregate_id: root.id(),
                aggregate_type: root.aggregate_type(),
                expected_version: root.saved_version(),
                events,
            })
            .collect();
        let save = StreamBatches::checked(&batches, &checks)?;
        let span = tracing::debug_span!(
            "eventsource.multi_stream.save",
            streams.written = batches.len(),
            streams.checked = checks.len(),
            events.saved = save.event_count(),
            error = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let appended = match store.append_streams(save).instrument(span.clone()).await {
            Ok(appended) => appended,
            Err(e) => {
                span.record("error", tracing::field::display(&e));
                if let Error::Conflicts { streams } = &e {
                    for stream in streams {
                        crate::telemetry::conflict(&stream.aggregate_type);
                    }
                }
                crate::telemetry::store_error("save", &e);
                return Err(e);
            }
        };
        drop(batches);
        for ((root, events), outcome) in writing.iter_mut().zip(&appended) {
            root.mark_saved(outcome.position);
            crate::telemetry::save(root.aggregate_type(), started.elapsed());
            crate::telemetry::events_written(root.aggregate_type(), events.len() as u64);
        }
        Ok(appended)
    }
}

/// The id of a stream named by a natural key (a username, an email address, a SKU) in
/// `namespace`: the name-based UUID of RFC 9562, version 3 (as `uuid`'s `Uuid::new_v3`
/// gives it), so that every process derives the same stream from the same name, and a save
/// that writes it at version 0 claims the name.
pub fn name_id(namespace: Uuid, name: &[u8]) -> Uuid {
    let mut bytes = crate::slice::md5::digest(&[namespace.as_bytes(), name]);
    bytes[6] = (bytes[6] & 0x0f) | 0x30;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// An error that may be a conflict: another writer came first, and the decision should be
/// made again from fresh loads (what [`retry`] retries).
pub trait Conflicted {
    /// Whether it is a conflict.
    fn is_conflict(&self) -> bool;
}

impl Conflicted for Error {
    fn is_conflict(&self) -> bool {
        Error::is_conflict(self)
    }
}

/// The first wait between two attempts of [`retry`]; each wait doubles, up to
/// [`MAX_BACKOFF`], with a random part so that writers that met do not meet again.
const BACKOFF: Duration = Duration::from_millis(2);

/// The longest wait between two attempts of [`retry`].
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Runs `attempt` (load the aggregates, decide, save them together) until it ends other
/// than by a conflict, at most `attempts` times (at least once), waiting a little more
/// before each new attempt; the last conflict if every attempt met one.
///
/// Each attempt must load what it decides on again: a conflict means another writer changed
/// one of the streams.
///
/// The attempt is a closure that returns a future, `|| async move { ... }`, borrowing what
/// it needs (`let names = &names;` before it), so that the whole future is `Send` and can be
/// spawned or served.
///
/// # Errors
///
/// The last attempt's error, a conflict if every attempt met one.
///
/// # Cancel safety
///
/// Dropped, the attempt in progress is dropped as its own future is: see
/// [`MultiStreamSave::save`].
pub async fn retry<T, E, F, Fut>(attempts: u32, mut attempt: F) -> Result<T, E>
where
    E: Conflicted,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.is_conflict() && tries < attempts.max(1) => {
                // Up to the whole wait at random, half of it at least.
                let jitter = Uuid::new_v4().as_u128() % (wait.as_micros().max(1) / 2 + 1);
                tokio::time::sleep(wait / 2 + Duration::from_micros(jitter as u64)).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_ids_are_version_3_uuids() {
        // RFC 9562's name-based UUID of "python.org" in the DNS namespace, version 3.
        let id = name_id(Uuid::NAMESPACE_DNS, b"python.org");
        assert_eq!(id.to_string(), "6fa459ea-ee8a-3ca4-894e-db77e160355e");
        assert_eq!(id.get_version_num(), 3);
    }
}
