//! The aggregate root: an aggregate's identity, version, state and unsaved events.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::aggregate::{Aggregate, AggregateEvent};
use crate::codec;
use crate::error::Result;
use crate::event::{EventContext, EventEnvelope};
use crate::personal::seal::Unsealed;

/// An event recorded on a root and not yet saved.
#[derive(Clone, Debug)]
pub struct PendingEvent<E> {
    /// The event.
    pub event: E,
    /// The id it will be stored under.
    pub event_id: Uuid,
    /// The aggregate version it brings the aggregate to.
    pub aggregate_version: u64,
    /// When it was recorded.
    pub occurred_at: DateTime<Utc>,
    /// Its correlation, causation and metadata.
    pub context: EventContext,
}

/// One aggregate: its id, its version, its state, and the events recorded since it was
/// loaded or saved.
///
/// Commands are written as functions that check the state and [`record`](Self::record) events;
/// recording applies the event at once, so the state is always current.
#[derive(Clone, Debug)]
pub struct AggregateRoot<A: Aggregate> {
    id: Uuid,
    version: u64,
    state: A,
    pending: Vec<PendingEvent<A::Event>>,
    context: EventContext,
    /// The id of the event at `version`, when known: what a snapshot of this state follows.
    last_event_id: Option<Uuid>,
    /// The feed position of the last event saved through this root.
    position: Option<u64>,
    /// Whether the stream is closed (see [`crate::lifecycle`]).
    closed: bool,
}

impl<A: Aggregate> AggregateRoot<A> {
    /// A new aggregate with no events, in its default state.
    pub fn new(id: Uuid) -> Self {
        Self::from_state(id, 0, A::default())
    }

    /// An aggregate at `version` in `state`, with no unsaved events.
    pub fn from_state(id: Uuid, version: u64, state: A) -> Self {
        AggregateRoot {
            id,
            version,
            state,
            pending: Vec::new(),
            context: EventContext::default(),
            last_event_id: None,
            position: None,
            closed: false,
        }
    }

    /// An aggregate at `version` in `state` whose event at `version` has id `event_id`.
    pub(crate) fn following(id: Uuid, version: u64, state: A, event_id: Uuid) -> Self {
        let mut root = Self::from_state(id, version, state);
        root.last_event_id = Some(event_id);
        root
    }

    /// The aggregate id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Whether its stream is closed (see [`crate::lifecycle`]): no event can be saved on it.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Applies a stored system event (see [`crate::lifecycle`]): it counts as a version and
    /// changes no state; [`Error::UnknownEventType`](crate::Error::UnknownEventType) for one
    /// this library does not know.
    pub(crate) fn apply_system(&mut self, event_type: &str, event_id: Uuid) -> Result<()> {
        match event_type {
            crate::lifecycle::CLOSED => self.closed = true,
            crate::lifecycle::SUBJECT_FORGOTTEN => {}
            other => {
                return Err(crate::error::Error::UnknownEventType {
                    event_type: other.to_owned(),
                    aggregate_type: A::TYPE_NAME.to_owned(),
                })
            }
        }
        self.version += 1;
        self.last_event_id = Some(event_id);
        Ok(())
    }

    /// Marks the stream closed: what a snapshot taken at its closing event stands for.
    pub(crate) fn mark_closed(&mut self) {
        self.closed = true;
    }

    /// The version, counting unsaved events: the number of events applied to the state.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version of the last saved event (the version the store is expected to be at).
    pub fn saved_version(&self) -> u64 {
        self.version - self.pending.len() as u64
    }

    /// The current state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The recorded events not yet saved.
    pub fn pending_events(&self) -> &[PendingEvent<A::Event>] {
        &self.pending
    }

    /// Whether events are recorded and not yet saved.
    pub fn has_pending_events(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The id of the event at [`version`](Self::version), saved or not: the event a snapshot
    /// of this state follows. `None` for a new aggregate, and for one built with
    /// [`from_state`](Self::from_state) until it records an event.
    pub fn last_event_id(&self) -> Option<Uuid> {
        self.last_event_id
    }

    /// The feed position of the last event saved through this root: what a reader of the
    /// feed, such as a [projection](crate::projection), must have reached to show this save
    /// (read-your-writes). `None` before a save through this root (then
    /// [`Repository::position`](crate::Repository::position) finds it).
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    /// Sets the correlation, causation and metadata of the events recorded from now on.
    pub fn set_context(&mut self, context: EventContext) {
        self.context = context;
    }

    /// Records an event: applies it to the state and keeps it to be saved.
    pub fn record(&mut self, event: impl Into<A::Event>) {
        let context = self.context.clone();
        self.record_with(event, context);
    }

    /// Records an event with its own correlation, causation and metadata. The request id of
    /// the root's context (the command's idempotency key) is kept unless `context` has one.
    pub fn record_with(&mut self, event: impl Into<A::Event>, mut context: EventContext) {
        context.request_id = context.request_id.or_else(|| self.context.request_id.clone());
        let event = event.into();
        self.state.apply_event(&event);
        // At u64::MAX the save refuses the batch (InvalidInput) instead of a panic here.
        self.version = self.version.saturating_add(1);
        // Fixed now, so that a save retried after a lost answer recognises its own batch.
        let event_id = Uuid::new_v4();
        self.last_event_id = Some(event_id);
        self.pending.push(PendingEvent {
            event,
            event_id,
            aggregate_version: self.version,
            occurred_at: Utc::now(),
            context,
        });
    }

    /// Applies a stored event; used when loading.
    pub(crate) fn apply_stored(&mut self, event: &A::Event, event_id: Uuid) {
        self.state.apply_event(event);
        self.version += 1;
        self.last_event_id = Some(event_id);
    }

    /// The unsaved events as envelopes to seal and append, or the first that cannot be
    /// encoded or would not load back (see [`codec::loadable_event`]).
    pub(crate) fn pending_envelopes(&self) -> Result<Unsealed> {
        if self.closed && !self.pending.is_empty() {
            return Err(crate::error::Error::StreamClosed {
                aggregate_type: A::TYPE_NAME.to_owned(),
                aggregate_id: self.id,
            });
        }
        let aggregate_type: Arc<str> = Arc::from(A::TYPE_NAME);
        let envelopes = self
            .pending
            .iter()
            .map(|p| {
                let payload = p.event.to_json()?;
                codec::loadable_event::<A::Event>(p.event.event_type(), &payload)?;
                if let Some(metadata) = &p.context.metadata {
                    codec::loadable_value(metadata, || format!("metadata of event {}", p.event_id))?;
                }
                Ok(EventEnvelope {
                    event_id: p.event_id,
                    event_type: Arc::from(p.event.event_type()),
                    event_version: p.event.event_version(),
                    aggregate_id: self.id,
                    aggregate_type: aggregate_type.clone(),
                    aggregate_version: p.aggregate_version,
                    occurred_at: p.occurred_at,
                    correlation_id: p.context.correlation_id,
                    causation_id: p.context.causation_id,
                    request_id: p.context.request_id.clone(),
                    metadata: p.context.metadata.clone(),
                    payload: Arc::from(payload),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let personal = self.pending.iter().map(|p| p.event.personal_fields()).collect();
        Ok(Unsealed::new(envelopes, personal))
    }

    /// The unsaved events as envelopes, for a save outside the repository (in the caller's
    /// transaction): [`Error::InvalidInput`](crate::Error::InvalidInput) if there are none, and
    /// the registry's error if the program registered a name twice.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn envelopes_to_save(&self) -> Result<Unsealed> {
        crate::registry::check()?;
        let envelopes = self.pending_envelopes()?;
        if envelopes.is_empty() {
            return Err(crate::error::Error::InvalidInput(format!(
                "{} {} has no unsaved events to save",
                A::TYPE_NAME,
                self.id
            )));
        }
        Ok(envelopes)
    }

    /// Forgets the unsaved events once the store has them, at `position` in the feed.
    pub(crate) fn mark_saved(&mut self, position: u64) {
        self.pending.clear();
        self.position = Some(position);
    }
}
