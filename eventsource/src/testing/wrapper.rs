//! A wrapper store that forwards only what the [`EventStore`] trait requires.

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::Result;
use crate::event::EventEnvelope;
use crate::event_store::{Appended, EventStore, EventStream, FeedHead};

/// An event store that forwards the required methods of [`EventStore`] to `S` and nothing
/// else, so that every provided method runs its default: what a wrapper store of a program's
/// own (a router, a store that counts or fails calls) gives when it forwards too little.
///
/// Every result through it must be the one `S` gives, only slower: the conformance suite run
/// through it checks the trait's defaults against the store, and a store's fast paths
/// against their plain equivalents.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use eventsourcing_kit::testing::{event_store, RequiredOnly};
///
/// event_store::run_all(&RequiredOnly(eventsourcing_kit::InMemoryEventStore::new())).await;
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct RequiredOnly<S>(pub S);

#[async_trait]
impl<S: EventStore> EventStore for RequiredOnly<S> {
    async fn append(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<Appended> {
        self.0
            .append(aggregate_id, aggregate_type, expected_version, events)
            .await
    }

    fn read_stream<'a>(
        &'a self,
        aggregate_id: Uuid,
        aggregate_type: &'a str,
        after_version: u64,
    ) -> EventStream<'a> {
        self.0.read_stream(aggregate_id, aggregate_type, after_version)
    }

    async fn stream_version(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<u64> {
        self.0.stream_version(aggregate_id, aggregate_type).await
    }

    fn read_all(&self, after_position: u64) -> EventStream<'_> {
        self.0.read_all(after_position)
    }

    async fn head(&self, after_position: u64) -> Result<FeedHead> {
        self.0.head(after_position).await
    }
}
