//! What a subscription hands its events to.

use std::marker::PhantomData;

use async_trait::async_trait;

use crate::aggregate::{Aggregate, AggregateEvent};
use crate::event::StoredEvent;

/// Why a handler failed; the subscription retries, then applies its failure policy.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Handles the events of a subscription, a batch at a time, in feed order.
///
/// A batch may be handed over again after a crash or a lost lease (delivery is at least
/// once), so a handler must cope with an event it has seen: by its position or its id. A
/// synchronous closure `FnMut(&[StoredEvent]) -> Result<(), HandlerError>` is a handler.
#[async_trait]
pub trait Handler: Send {
    /// Handles a batch; an error makes the subscription try the batch again.
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError>;
}

#[async_trait]
impl<F> Handler for F
where
    F: FnMut(&[StoredEvent]) -> Result<(), HandlerError> + Send,
{
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        self(events)
    }
}

/// A handler of `A`'s events, decoded through its event enum: `f` gets each stored event
/// with its decoded form. Events of other aggregate types are skipped (filter the
/// subscription with [`for_aggregate`](super::Consumer::for_aggregate) so they are not
/// read at all); one that does not decode fails the batch like an error of `f`.
pub struct Typed<A, F> {
    f: F,
    aggregate: PhantomData<fn() -> A>,
}

impl<A, F> std::fmt::Debug for Typed<A, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed")
            .field("aggregate", &std::any::type_name::<A>())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate, F> Typed<A, F>
where
    F: FnMut(&StoredEvent, A::Event) -> Result<(), HandlerError> + Send,
{
    /// The handler that decodes `A`'s events for `f`.
    pub fn new(f: F) -> Self {
        Typed {
            f,
            aggregate: PhantomData,
        }
    }
}

#[async_trait]
impl<A: Aggregate, F> Handler for Typed<A, F>
where
    F: FnMut(&StoredEvent, A::Event) -> Result<(), HandlerError> + Send,
{
    async fn handle(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        // System events (a stream's closing) are no event of the aggregate's.
        let taken = events.iter().filter(|e| {
            *e.aggregate_type == *A::TYPE_NAME && !crate::lifecycle::is_system_event(&e.event_type)
        });
        for event in taken {
            let decoded = A::Event::decode(&event.event_type, event.event_version, &event.payload)?;
            (self.f)(event, decoded)?;
        }
        Ok(())
    }
}
