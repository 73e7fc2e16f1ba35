//! Request ids: the idempotency keys of commands, the fingerprints of what a request asked,
//! and what a store's [request index](crate::abilities::RequestIndex) remembers of each.
//!
//! A command run with a request id (an HTTP request's `Idempotency-Key`, a message id) is
//! decided once: its outcome, the events it stored or its refusal, is recorded under the id,
//! and the same id sent again finds that first outcome instead of deciding again, whatever
//! aggregate the first one wrote. A fingerprint of the request's content, recorded with it,
//! tells a request sent again from a different request reusing its key: the second is
//! refused ([`CommandError::RequestMismatch`](crate::repository::CommandError::RequestMismatch)).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};
pub use crate::request_id::{RequestId, MAX_REQUEST_ID_LEN};

/// A fingerprint of what a request asked (its body, its command), recorded with its outcome
/// so that a request id reused for a different request is told apart from the same request
/// sent again.
///
/// It is the 64-bit FNV-1a hash of the bytes it is made of: stable across processes, versions
/// and platforms, and meant to tell requests apart, not to resist an attacker (a client can
/// always send a new request id).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// The fingerprint of `bytes`, such as a request's body.
    pub fn of_bytes(bytes: impl AsRef<[u8]>) -> Self {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let hash = bytes
            .as_ref()
            .iter()
            .fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME));
        Fingerprint(hash)
    }

    /// The fingerprint of `value`'s JSON form (serde's, so a field's order is the type's).
    /// A value that cannot be encoded is [`Error::Serialization`].
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let json = serde_json::to_vec(value).map_err(|e| Error::Serialization {
            action: "serialize",
            what: "a request to fingerprint".into(),
            reason: e.to_string(),
        })?;
        Ok(Self::of_bytes(json))
    }

    /// The fingerprint as a store keeps it: the hash's bits as a signed integer.
    pub fn to_stored(self) -> i64 {
        self.0 as i64
    }

    /// The fingerprint a store kept with [`to_stored`](Self::to_stored).
    pub fn from_stored(stored: i64) -> Self {
        Fingerprint(stored as u64)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({:016x})", self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a request index remembers of one request: the first outcome of the command run under
/// its id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestRecord {
    /// The request id.
    pub request_id: RequestId,
    /// The aggregate type of the command.
    pub aggregate_type: String,
    /// The aggregate the command ran on (the one it created, for a create).
    pub aggregate_id: Uuid,
    /// The fingerprint of the request, if it was given one.
    pub fingerprint: Option<Fingerprint>,
    /// What the command did.
    pub outcome: RequestOutcome,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// The first outcome of a command: see [`RequestRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestOutcome {
    /// The command stored events: the stream's version after them and the feed position of
    /// the last one.
    Executed {
        /// The stream's version after the command's events.
        version: u64,
        /// The feed position of the command's last event.
        position: u64,
    },
    /// The aggregate refused the command, for this reason (the refusal's text).
    Refused {
        /// Why.
        reason: String,
    },
}

impl RequestRecord {
    /// The record of a refusal of the command run under `request_id` on the aggregate, now.
    pub fn refused(
        request_id: RequestId,
        aggregate_type: &str,
        aggregate_id: Uuid,
        fingerprint: Option<Fingerprint>,
        reason: impl Into<String>,
    ) -> Self {
        RequestRecord {
            request_id,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            fingerprint,
            outcome: RequestOutcome::Refused {
                reason: reason.into(),
            },
            recorded_at: now(),
        }
    }

    /// The record of a command that stored events, as a store rebuilds it.
    pub fn executed(
        request_id: RequestId,
        aggregate_type: &str,
        aggregate_id: Uuid,
        fingerprint: Option<Fingerprint>,
        version: u64,
        position: u64,
        recorded_at: DateTime<Utc>,
    ) -> Self {
        RequestRecord {
            request_id,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            fingerprint,
            outcome: RequestOutcome::Executed { version, position },
            recorded_at,
        }
    }

    /// This record with its time set, as a store read it back.
    #[must_use]
    pub fn recorded_at(mut self, at: DateTime<Utc>) -> Self {
        self.recorded_at = at;
        self
    }
}

/// Now, to the microsecond: what every store keeps of a time.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is in range")
}

/// The one request id every event of a batch carries, for an append that records it: none,
/// or ids that differ, are [`Error::InvalidInput`].
pub fn request_of(events: &[crate::event::EventEnvelope]) -> Result<&RequestId> {
    let mut ids = events.iter().map(|e| e.request_id.as_ref());
    let first = ids.next().flatten().ok_or_else(|| {
        Error::InvalidInput("an append that records its request needs events with a request id".into())
    })?;
    if ids.any(|id| id != Some(first)) {
        return Err(Error::InvalidInput(format!(
            "an append that records request {first} has events with another request id, or none"
        )));
    }
    Ok(first)
}

/// Checks a refusal before a store records it: its outcome is a refusal and its aggregate type
/// a name every store can keep; anything else is [`Error::InvalidInput`].
pub fn validate_refusal(refusal: &RequestRecord) -> Result<()> {
    crate::event::validate_aggregate_type(&refusal.aggregate_type)?;
    match &refusal.outcome {
        RequestOutcome::Refused { reason } if !reason.contains('\0') => Ok(()),
        RequestOutcome::Refused { .. } => Err(Error::InvalidInput(format!(
            "the refusal of request {} holds a NUL character, which not every store can keep",
            refusal.request_id
        ))),
        RequestOutcome::Executed { .. } => Err(Error::InvalidInput(format!(
            "request {} is recorded as executed only by the append that stores its events",
            refusal.request_id
        ))),
    }
}

/// What a store recorded for `refusal`'s request id, read back after recording it: a record
/// must be there (the refusal, or the outcome recorded first); none is [`Error::Corrupt`].
pub fn recorded(refusal: &RequestRecord, found: Option<RequestRecord>) -> Result<RequestRecord> {
    found.ok_or_else(|| {
        Error::corrupt(
            format!("request {}", refusal.request_id),
            "the recorded refusal is not found",
        )
    })
}
