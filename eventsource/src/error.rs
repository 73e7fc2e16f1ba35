//! The one error type of the library.

use uuid::Uuid;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this library, named by what it means to the caller.
///
/// Backends map their own failures into these variants, so a program handles a conflict the
/// same way on every store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream of the aggregate has no events.
    #[error("aggregate {aggregate_type} {aggregate_id} not found")]
    NotFound {
        /// The aggregate type that was asked for.
        aggregate_type: String,
        /// The aggregate id that was asked for.
        aggregate_id: Uuid,
    },

    /// Another writer appended to the stream first; nothing was written.
    #[error(
        "concurrency conflict on {aggregate_type} {aggregate_id}: expected version {expected}, found {actual}"
    )]
    Conflict {
        /// The aggregate type of the stream.
        aggregate_type: String,
        /// The aggregate id of the stream.
        aggregate_id: Uuid,
        /// The version the writer expected the stream to be at.
        expected: u64,
        /// The version the stream is actually at.
        actual: u64,
    },

    /// A save over several streams found streams not at the version it expected: streams it
    /// writes, and streams it only checks; nothing was written. Each is named.
    #[error("concurrency conflict on {}", conflicts_text(streams))]
    Conflicts {
        /// Every stream whose expectation failed.
        streams: Vec<StreamConflict>,
    },

    /// A stored event names a type that the aggregate does not know.
    #[error("unknown event type `{event_type}` for aggregate {aggregate_type}")]
    UnknownEventType {
        /// The event type read from the store.
        event_type: String,
        /// The aggregate type whose events were being decoded.
        aggregate_type: String,
    },

    /// A stored event's version is not one this program reads: newer than the program knows
    /// (written by a newer instance, as during a rolling deploy), or 0. Nothing is decoded:
    /// the program must be upgraded before it reads this event.
    #[error(
        "event {aggregate_type}.{event_type} is stored at version {stored}, but this program reads versions 1 to {current} of it; {}",
        if *stored > *current { "an instance of a newer program wrote it, so upgrade this one" } else { "no program writes that version: the row is corrupt" }
    )]
    UnknownEventVersion {
        /// The aggregate type of the event.
        aggregate_type: String,
        /// The event type name.
        event_type: String,
        /// The version read from the store.
        stored: u32,
        /// The event's version in this program.
        current: u32,
    },

    /// A stored event or snapshot state of an older version could not be brought to the
    /// current version: its upcaster or migration failed, or the JSON it produced does not
    /// decode as the next version.
    #[error("cannot upcast {what} from version {from_version}: {reason}")]
    Upcast {
        /// What was upcast, such as `event Account.MoneyDeposited` or `snapshot of Account`.
        what: String,
        /// The version of the step that failed.
        from_version: u32,
        /// Why it failed.
        reason: String,
    },

    /// Two aggregate types share one name and schema version in this program, or two event
    /// types share one name within one aggregate type.
    #[error("{kind} name `{name}` is registered twice: by {first} and by {second}")]
    DuplicateName {
        /// What kind of name is shared: `"aggregate type"` or `"event type"` (then named
        /// `Aggregate.Event`).
        kind: &'static str,
        /// The shared name.
        name: String,
        /// The Rust type that registered it first.
        first: &'static str,
        /// The Rust type that registered it again.
        second: &'static str,
    },

    /// A value could not be turned into JSON, or JSON back into a value.
    #[error("cannot {action} {what}: {reason}")]
    Serialization {
        /// `"serialize"` or `"deserialize"`.
        action: &'static str,
        /// What was being converted, such as `event MoneyDeposited`.
        what: String,
        /// Why it failed.
        reason: String,
    },

    /// A stored row is not what this library writes: a bad column, a gap, a wrong type.
    #[error("corrupt data in {what}: {reason}")]
    Corrupt {
        /// Where the corruption was found.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The store itself failed: I/O, a lost connection, a timeout, a missing table.
    ///
    /// After a failed append the batch may or may not be stored (the connection may have
    /// dropped after the commit); saving again is safe, see
    /// [`Repository::save`](crate::Repository::save).
    #[error("{backend} store error: {message}")]
    Store {
        /// The backend that failed, such as `"sqlite"`.
        backend: &'static str,
        /// What failed.
        message: String,
        /// Whether the same call may succeed when made again: true for a lost connection, a
        /// timeout, a busy or restarting database; false for a failure that needs a person
        /// (a missing table, a permission, a full disk, a database that is not one).
        transient: bool,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The library was configured with values it cannot work with.
    #[error("invalid configuration: {0}")]
    InvalidConfiguration(String),

    /// A call was given an argument it cannot accept; nothing was changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A subscription's handler failed on a batch after every attempt, and the subscription's
    /// policy is to stop; its checkpoint is still before the batch.
    #[error("subscription {subscription} stopped at position {position}: {reason}")]
    SubscriptionStopped {
        /// The subscription's name.
        subscription: String,
        /// The position of the first event of the batch.
        position: u64,
        /// The handler's last error.
        reason: String,
    },

    /// A projection's read model failed to be set up, reset or switched to.
    #[error("cannot {action} the read model of projection {projection}: {reason}")]
    ReadModel {
        /// The projection's name.
        projection: String,
        /// What was being done: `set up`, `reset`, `switch to`, ...
        action: &'static str,
        /// The read model's error.
        reason: String,
    },

    /// A process manager's code failed on a cause, or one of its commands could not be sent
    /// (see [`crate::process`]); what it decided before is kept, and the cause is decided on
    /// again later.
    #[error("process manager {process} failed: {reason}")]
    Process {
        /// The process manager's name.
        process: String,
        /// Its error.
        reason: String,
    },

    /// A snapshot was asked of an aggregate whose recorded events are not saved yet.
    #[error("aggregate {aggregate_type} {aggregate_id} has {count} unsaved event(s); save it before taking a snapshot")]
    UnsavedEvents {
        /// The aggregate type.
        aggregate_type: String,
        /// The aggregate id.
        aggregate_id: Uuid,
        /// How many recorded events are not saved.
        count: usize,
    },

    /// New events were to be saved on a stream that is closed (see [`crate::lifecycle`]);
    /// nothing was written.
    #[error("{aggregate_type} {aggregate_id} is closed: no event can be saved on it")]
    StreamClosed {
        /// The aggregate type of the stream.
        aggregate_type: String,
        /// The aggregate id of the stream.
        aggregate_id: Uuid,
    },

    /// The stream was deleted (see [`crate::lifecycle`]): it cannot be loaded, and no event
    /// can be saved on it again.
    #[error("{aggregate_type} {aggregate_id} was deleted")]
    StreamDeleted {
        /// The aggregate type of the stream.
        aggregate_type: String,
        /// The aggregate id of the stream.
        aggregate_id: Uuid,
    },

    /// Personal data of a data subject that is forgotten, or being forgotten, was to be
    /// written (see [`crate::personal`]); nothing was written.
    #[error("personal data of subject {subject} cannot be written: the subject is forgotten")]
    SubjectForgotten {
        /// The data subject.
        subject: String,
    },

    /// An append that records its request found the request id recorded already, for
    /// another batch or a refusal: nothing of the batch is stored. The request index holds
    /// the first outcome ([`RequestIndex::find_request`](crate::abilities::RequestIndex::find_request)).
    #[error("request {request_id} is recorded already; nothing was stored")]
    RequestRecorded {
        /// The request id.
        request_id: String,
    },
}

impl Error {
    /// A transient [`Error::Store`] error from a backend's own error: one that making the
    /// same call again may cure (a lost connection, a timeout).
    pub fn store(
        backend: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::store_failure(backend, message.into(), true, Box::new(source))
    }

    /// A permanent [`Error::Store`] error from a backend's own error: one that making the
    /// same call again will not cure (a missing table, a permission, a full disk).
    pub fn store_permanent(
        backend: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::store_failure(backend, message.into(), false, Box::new(source))
    }

    fn store_failure(
        backend: &'static str,
        message: String,
        transient: bool,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        Error::Store {
            backend,
            message,
            transient,
            source: Some(source),
        }
    }

    /// Whether making the same call again, unchanged, may succeed: a transient
    /// [`Error::Store`] (a lost connection, a timeout, a busy database).
    ///
    /// Every other error is permanent for that call: [`Error::InvalidInput`],
    /// [`Error::Serialization`] and [`Error::InvalidConfiguration`] will fail the same way
    /// again, [`Error::Corrupt`] needs a person, and a [`Error::Conflict`] needs the
    /// aggregate loaded again and the command decided again, not the same append repeated
    /// ([`is_conflict`](Self::is_conflict)).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store { transient: true, .. })
    }

    /// A [`Error::Corrupt`] error.
    pub fn corrupt(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Whether this error is a [`Error::Conflict`], or the [`Error::Conflicts`] of a save over
    /// several streams: another writer came first, and loading and deciding again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::Conflicts { .. })
    }

    /// Whether this error is a [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// One stream of an [`Error::Conflicts`]: what a save over several streams expected of it,
/// and what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConflict {
    /// The aggregate type of the stream.
    pub aggregate_type: String,
    /// The aggregate id of the stream.
    pub aggregate_id: Uuid,
    /// The version the save expected (0: that the stream does not exist).
    pub expected: u64,
    /// The version the stream is at.
    pub actual: u64,
    /// Whether the save writes the stream (or only checks it).
    pub written: bool,
}

impl StreamConflict {
    /// The conflict of a stream expected at `expected` and found at `actual`.
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: Uuid,
        expected: u64,
        actual: u64,
        written: bool,
    ) -> Self {
        StreamConflict {
            aggregate_type: aggregate_type.into(),
            aggregate_id,
            expected,
            actual,
            written,
        }
    }
}

impl std::fmt::Display for StreamConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expected = match self.expected {
            0 => "absent".to_owned(),
            v => format!("version {v}"),
        };
        write!(
            f,
            "{} {} (expected {expected}, found version {})",
            self.aggregate_type, self.aggregate_id, self.actual
        )
    }
}

fn conflicts_text(streams: &[StreamConflict]) -> String {
    let texts: Vec<String> = streams.iter().map(ToString::to_string).collect();
    texts.join(", ")
}
