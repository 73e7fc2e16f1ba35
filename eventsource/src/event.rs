//! Domain events and the envelopes they are stored in.

use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::aggregate::AggregateEvent;
use crate::error::{Error, Result};
use crate::request_id::RequestId;

/// A domain event: a fact about one aggregate type, stored as JSON.
///
/// Implemented by `#[event(aggregate = "...")]`, which also registers the event type so a
/// program can list every event type it knows (see [`crate::registry`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an `#[event]` type",
    note = "annotate the struct with `#[event(aggregate = \"...\")]`"
)]
pub trait Event: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// The event type name, unique within its aggregate type (two aggregates may each have
    /// a `Created`): the struct's name unless renamed.
    const EVENT_TYPE: &'static str;
    /// The name of the aggregate type this event belongs to.
    const AGGREGATE_TYPE: &'static str;
    /// The version of this event's schema, 1 unless set.
    const EVENT_VERSION: u32;
    /// Older names of this event type, still read from stored events
    /// (`#[event(aliases("..."))]`); events are always written under [`EVENT_TYPE`](Self::EVENT_TYPE).
    const ALIASES: &'static [&'static str] = &[];
    /// The personal fields of the event (`#[personal(subject = ...)]`, see
    /// [`crate::personal`]): none unless declared.
    const PERSONAL: &'static [crate::aggregate::PersonalField] = &[];

    /// Decodes a payload stored at `version`, upcasting it step by step to
    /// [`EVENT_VERSION`](Self::EVENT_VERSION) through the steps of `#[event(upcast(...))]`.
    ///
    /// A version newer than the event's (or 0) is [`Error::UnknownEventVersion`];
    /// a step that fails is [`Error::Upcast`].
    fn decode_version(version: u32, payload: &str) -> Result<Self> {
        if version != Self::EVENT_VERSION {
            return Err(unknown_event_version::<Self>(version));
        }
        crate::__private::decode_event(payload)
    }
}

/// Correlation, causation and free-form metadata carried by recorded events.
///
/// Built with [`EventContext::new`] and the `with_*` methods (it may gain fields in a minor
/// version): `EventContext::new().with_correlation_id(order_id)`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct EventContext {
    /// Groups the events of one business transaction across aggregates.
    pub correlation_id: Option<Uuid>,
    /// The event or command that caused this one.
    pub causation_id: Option<Uuid>,
    /// Anything else worth storing beside the event, as a JSON object.
    pub metadata: Option<serde_json::Value>,
    /// The idempotency key of the command that recorded the event: a command made again
    /// with a key already recorded returns the first outcome instead of deciding again (see
    /// [`Command::request_id`](crate::repository::Command::request_id)).
    pub request_id: Option<RequestId>,
}

impl EventContext {
    /// No correlation, causation, metadata or request id.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `id` as [`correlation_id`](Self::correlation_id).
    #[must_use]
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// With `id` as [`causation_id`](Self::causation_id).
    #[must_use]
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// With `metadata` (a JSON object) as [`metadata`](Self::metadata).
    #[must_use]
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// With `id` as [`request_id`](Self::request_id).
    #[must_use]
    pub fn with_request_id(mut self, id: impl Into<RequestId>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// An event ready to be appended: its envelope and its JSON payload.
///
/// The text fields are reference-counted so that reading a long stream copies no strings.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EventEnvelope {
    /// Unique id of this event.
    pub event_id: Uuid,
    /// The event type name, as in [`Event::EVENT_TYPE`].
    pub event_type: Arc<str>,
    /// The version of the event's schema, as in [`Event::EVENT_VERSION`].
    pub event_version: u32,
    /// The aggregate this event belongs to.
    pub aggregate_id: Uuid,
    /// The aggregate type name.
    pub aggregate_type: Arc<str>,
    /// The version of the aggregate this event brings it to; the first event is 1.
    pub aggregate_version: u64,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
    /// See [`EventContext::correlation_id`].
    pub correlation_id: Option<Uuid>,
    /// See [`EventContext::causation_id`].
    pub causation_id: Option<Uuid>,
    /// See [`EventContext::request_id`].
    pub request_id: Option<RequestId>,
    /// See [`EventContext::metadata`].
    pub metadata: Option<serde_json::Value>,
    /// The event itself, as JSON text.
    pub payload: Arc<str>,
}

impl EventEnvelope {
    /// An event of type `Noted`, version 1, payload `{}`, recorded now with a new id and no
    /// context: what tests append (see `testing::envelope`).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn noted(aggregate_id: Uuid, aggregate_type: &str, aggregate_version: u64) -> Self {
        Self::from_json(aggregate_id, aggregate_type, aggregate_version, "Noted", 1, "{}")
    }

    /// The envelope of one event of aggregate type `aggregate_type`, at `aggregate_version`,
    /// with a new event id, recorded now, without correlation, causation or metadata.
    ///
    /// For programs that append to an [`EventStore`](crate::EventStore) directly (imports,
    /// migrations, benchmarks); a [`Repository`](crate::Repository) builds envelopes itself.
    /// An event that cannot be encoded (a non-finite float), or whose JSON would not decode
    /// again (nested too deep), is [`Error::Serialization`].
    pub fn new<E: AggregateEvent>(
        aggregate_id: Uuid,
        aggregate_type: &str,
        aggregate_version: u64,
        event: &E,
    ) -> Result<Self> {
        let payload = event.to_json()?;
        crate::codec::loadable_event::<E>(event.event_type(), &payload)?;
        Ok(Self::from_json(
            aggregate_id,
            aggregate_type,
            aggregate_version,
            event.event_type(),
            event.event_version(),
            payload,
        ))
    }

    /// The envelope of one event given as JSON text, of `event_type` at `event_version`, for
    /// aggregate type `aggregate_type` at `aggregate_version`: a new event id, recorded now,
    /// no context. What a backend builds from a stored row (with the `with_*` methods), and
    /// what imports and tests append; the payload is checked when it is appended, not here.
    pub fn from_json(
        aggregate_id: Uuid,
        aggregate_type: impl Into<Arc<str>>,
        aggregate_version: u64,
        event_type: impl Into<Arc<str>>,
        event_version: u32,
        payload: impl Into<Arc<str>>,
    ) -> Self {
        EventEnvelope {
            event_id: Uuid::new_v4(),
            event_type: event_type.into(),
            event_version,
            aggregate_id,
            aggregate_type: aggregate_type.into(),
            aggregate_version,
            occurred_at: Utc::now(),
            correlation_id: None,
            causation_id: None,
            request_id: None,
            metadata: None,
            payload: payload.into(),
        }
    }

    /// With `id` as its [`event_id`](Self::event_id).
    #[must_use]
    pub fn with_event_id(mut self, id: Uuid) -> Self {
        self.event_id = id;
        self
    }

    /// Recorded at `at`.
    #[must_use]
    pub fn with_occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = at;
        self
    }

    /// With the correlation, causation, metadata and request id of `context`.
    #[must_use]
    pub fn with_context(mut self, context: EventContext) -> Self {
        self.correlation_id = context.correlation_id;
        self.causation_id = context.causation_id;
        self.metadata = context.metadata;
        self.request_id = context.request_id;
        self
    }

    /// Its correlation, causation, metadata and request id.
    pub fn context(&self) -> EventContext {
        EventContext {
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            metadata: self.metadata.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl StoredEvent {
    /// `envelope` as read back at feed position `position`.
    pub fn new(position: u64, envelope: EventEnvelope) -> Self {
        StoredEvent { position, envelope }
    }
}

/// An event as read back from a store: its envelope and its global position.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StoredEvent {
    /// Position in the store's global order, starting at 1 and increasing with every append.
    pub position: u64,
    /// The event.
    pub envelope: EventEnvelope,
}

impl std::ops::Deref for StoredEvent {
    type Target = EventEnvelope;

    fn deref(&self) -> &EventEnvelope {
        &self.envelope
    }
}

/// Checks an aggregate type name as every store can keep it: not empty, no NUL character.
pub fn validate_aggregate_type(aggregate_type: &str) -> Result<()> {
    if aggregate_type.is_empty() {
        return Err(crate::error::Error::InvalidInput(
            "the aggregate type name is empty".into(),
        ));
    }
    if aggregate_type.contains('\0') {
        return Err(crate::error::Error::InvalidInput(format!(
            "the aggregate type name {aggregate_type:?} holds a NUL character, which not every store can keep"
        )));
    }
    Ok(())
}

/// The error for a stored version the event does not read.
pub fn unknown_event_version<E: Event>(stored: u32) -> Error {
    Error::UnknownEventVersion {
        aggregate_type: E::AGGREGATE_TYPE.to_owned(),
        event_type: E::EVENT_TYPE.to_owned(),
        stored,
        current: E::EVENT_VERSION,
    }
}
