//! An outbox relay (feature `nats`): the feed published to NATS JetStream, each event once in
//! effect, in order per aggregate.
//!
//! Other services learn of this one's events from a broker, not from its database. The event
//! store is the outbox: every saved event is in the feed, and a [`NatsRelay`] is a
//! [subscription](crate::subscription) that publishes each event to a JetStream stream and
//! moves its checkpoint once the broker acknowledged the batch. After a crash of the relay, or
//! a broker that went away, the batches after the last checkpoint (at most two) are published
//! again; JetStream drops the copies because each message carries the event's id as its
//! de-duplication id (`Nats-Msg-Id`), so a consumer on the other side sees each event once,
//! as long as the copies arrive within the stream's duplicate window.
//!
//! # Subjects and order
//!
//! Each event goes to the subject of its aggregate, `PREFIX.TYPE.ID` (the aggregate type with
//! every character but ASCII letters, digits, `-` and `_` written `~XX`, its UTF-8 bytes in
//! hexadecimal), or, with [`NatsRelay::per_slice`], of its stream's slice, `PREFIX.SLICE`.
//! The relay publishes one event at a time and waits for its acknowledgment before the next,
//! so the stream holds each aggregate's events in version order (a consumer filtering on a
//! subject reads them so); a batch that failed part way is published again from its start,
//! and the copies of what went in are dropped.
//!
//! # What the broker must be set up with
//!
//! - **A stream that captures the subjects**, `PREFIX.>`, with file storage (memory storage
//!   loses the messages when the server stops). [`NatsRelay::ensure_stream`] creates one.
//! - **A duplicate window longer than the relay's longest outage**: a batch published again
//!   after the window has passed is stored twice. The default is two minutes; the relay's
//!   own retries take seconds, a relay stopped for a deployment may take longer.
//! - **Replicas** (three, on a cluster) for a broker that must survive a server's disk.
//! - JetStream acknowledges a message once it is written to the stream's file, not synced to
//!   disk (`sync_interval`, two minutes by default): a server's power loss can lose
//!   acknowledged messages unless the stream is replicated or the server syncs always
//!   (`sync_interval: always`, NATS Server 2.10 and later). The relay cannot tell.
//!
//! Every feature used here (streams, de-duplication by `Nats-Msg-Id`, headers) is in NATS
//! Server 2.2 and later; the tests run against 2.9.
//!
//! # Metrics
//!
//! The relay's subscription has its metrics (lag, batches, retries, see
//! [`crate::subscription`]); with the feature `metrics`, the relay counts
//! `eventsource_outbox_published_total` and `eventsource_outbox_failures_total` by relay.

mod subject;

pub use async_nats;
pub use subject::subject_token;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::slice::SliceCount;
use crate::subscription::{Consumer, Handler, HandlerError, Subscription};
use crate::text::escape;

/// A subscription that publishes the feed to NATS JetStream: see the [module docs](self).
pub struct NatsRelay {
    subscription: Subscription,
    publisher: Publisher,
}

impl std::fmt::Debug for NatsRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRelay")
            .field("subscription", &self.subscription.name())
            .field("prefix", &self.publisher.prefix)
            .field("slices", &self.publisher.slices)
            .finish_non_exhaustive()
    }
}

/// What a relay publishes with: the broker, and how it names subjects.
#[derive(Clone)]
struct Publisher {
    name: String,
    jetstream: jetstream::Context,
    prefix: String,
    /// Subjects by slice of a store of this many slices, instead of by aggregate.
    slices: Option<SliceCount>,
}

impl NatsRelay {
    /// The relay of `subscription`'s events (its name is the relay's) to the JetStream of
    /// `jetstream`, on subjects under `prefix`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a prefix that is no NATS subject: empty, or holding a
    /// space, a `*` or a `>`, or an empty token.
    ///
    /// Events are published as stored: personal fields (see [`crate::personal`]) leave
    /// sealed, whatever keyring the subscription was given, so that no copy of a value
    /// leaves the store where forgetting its subject cannot reach it.
    pub fn new(mut subscription: Subscription, jetstream: jetstream::Context, prefix: &str) -> Result<Self> {
        subject::validate_prefix(prefix)?;
        subscription.options_mut().keys = None;
        Ok(NatsRelay {
            publisher: Publisher {
                name: subscription.name().to_owned(),
                jetstream,
                prefix: prefix.to_owned(),
                slices: None,
            },
            subscription,
        })
    }

    /// Publishes each event on the subject of its stream's slice, `PREFIX.SLICE`, in a store
    /// of `slices` slices ([`Stores::slice_count`](crate::backend::Stores::slice_count)),
    /// instead of one subject per aggregate.
    #[must_use]
    pub fn per_slice(mut self, slices: SliceCount) -> Self {
        self.publisher.slices = Some(slices);
        self
    }

    /// The subject `event` is published on.
    pub fn subject_of(&self, event: &StoredEvent) -> String {
        self.publisher.subject_of(event)
    }

    /// Creates the JetStream stream `stream` that captures the subjects under `prefix`, with
    /// file storage and a duplicate window of `duplicate_window`, unless it exists (an
    /// existing stream is left as it is).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] (backend `nats`) if the broker refused or could not be reached.
    ///
    /// # Cancel safety
    ///
    /// Dropped, the stream may or may not be created; creating it again is safe.
    pub async fn ensure_stream(
        jetstream: &jetstream::Context,
        stream: &str,
        prefix: &str,
        duplicate_window: Duration,
    ) -> Result<()> {
        subject::validate_prefix(prefix)?;
        let config = jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            storage: jetstream::stream::StorageType::File,
            duplicate_window,
            ..Default::default()
        };
        jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| broker_error(&format!("cannot create the stream {stream}"), e))?;
        Ok(())
    }

    /// Runs until `shutdown` completes, publishing every event of the feed after the
    /// checkpoint, as [`Subscription::run`] runs a handler.
    ///
    /// # Errors
    ///
    /// As [`Subscription::run`]: by default, a batch the broker still refuses after the
    /// subscription's attempts stops the relay (its checkpoint before the batch).
    ///
    /// # Cancel safety
    ///
    /// As [`Subscription::run`]: a batch published but not yet recorded is published again by
    /// the next relay, and the broker drops the copies.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.subscription.run(self.publisher.clone(), shutdown).await
    }

    /// Publishes the events of the feed after the checkpoint, then returns how many.
    ///
    /// # Errors
    ///
    /// As [`Subscription::catch_up`].
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn catch_up(&self) -> Result<u64> {
        self.subscription.catch_up(self.publisher.clone()).await
    }

    /// The relay's subscription: its checkpoint, lag and metrics.
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }
}

impl Publisher {
    fn subject_of(&self, event: &StoredEvent) -> String {
        match self.slices {
            Some(slices) => format!(
                "{}.{}",
                self.prefix,
                slices.slice_of(&event.aggregate_type, event.aggregate_id)
            ),
            None => format!(
                "{}.{}.{}",
                self.prefix,
                subject_token(&event.aggregate_type),
                event.aggregate_id
            ),
        }
    }

    /// Publishes one event and waits for the broker to store it.
    async fn publish(&self, event: &StoredEvent) -> std::result::Result<(), HandlerError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            event.event_id.to_string().as_str(),
        );
        // Names are stored as they were given: control characters escaped (`\n`), so that
        // none ends a header line.
        headers.insert("Eventsource-Event-Type", escape(&event.event_type).as_ref());
        headers.insert(
            "Eventsource-Event-Version",
            event.event_version.to_string().as_str(),
        );
        headers.insert(
            "Eventsource-Aggregate-Type",
            escape(&event.aggregate_type).as_ref(),
        );
        headers.insert(
            "Eventsource-Aggregate-Id",
            event.aggregate_id.to_string().as_str(),
        );
        headers.insert(
            "Eventsource-Aggregate-Version",
            event.aggregate_version.to_string().as_str(),
        );
        headers.insert("Eventsource-Position", event.position.to_string().as_str());
        headers.insert("Eventsource-Occurred-At", event.occurred_at.to_rfc3339().as_str());
        if let Some(id) = event.correlation_id {
            headers.insert("Eventsource-Correlation-Id", id.to_string().as_str());
        }
        if let Some(id) = event.causation_id {
            headers.insert("Eventsource-Causation-Id", id.to_string().as_str());
        }
        let acked = async {
            self.jetstream
                .publish_with_headers(self.subject_of(event), headers, event.payload.to_string().into())
                .await?
                .await
        }
        .await;
        match acked {
            Ok(_) => {
                crate::telemetry::outbox_published(&self.name);
                Ok(())
            }
            Err(e) => {
                crate::telemetry::outbox_failed(&self.name);
                Err(format!("cannot publish event {} to NATS: {e}", event.event_id).into())
            }
        }
    }
}

#[async_trait]
impl Handler for Publisher {
    async fn handle(&mut self, events: &[StoredEvent]) -> std::result::Result<(), HandlerError> {
        for event in events {
            self.publish(event).await?;
        }
        Ok(())
    }
}

/// A broker's failure as the library's store error: worth trying again.
fn broker_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::store("nats", format!("{what}: {e}"), e)
}
