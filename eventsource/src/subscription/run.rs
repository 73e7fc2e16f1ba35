//! Running a subscription: as one consumer of its feed, or, on a store whose slices are in
//! several feeds (a [sharded store](crate::backend::sharded)), as what a single consumer of such a store
//! is: a consumer group of one range, cut at the feeds' bounds, run by one worker in this
//! process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::{FusedFuture, FutureExt};
use uuid::Uuid;

use super::{stopped, Committed, Handled, Handler, Restart, Sink, Subscription};
use crate::deadline::{jittered, sleep};
use crate::error::Result;
use crate::event::StoredEvent;

impl Subscription {
    /// Runs the subscription until `shutdown` completes: as a standby while another consumer
    /// holds the name's lease, then catching up and following the feed.
    ///
    /// Returns `Ok` after a graceful shutdown, [`Error::SubscriptionStopped`](crate::Error::SubscriptionStopped) when a batch
    /// still fails after the last attempt under [`OnFailure::Stop`](super::OnFailure::Stop), and a store error that
    /// another try cannot cure; transient store errors are retried after the poll interval.
    ///
    /// # Errors
    ///
    /// [`Error::SubscriptionStopped`](crate::Error::SubscriptionStopped) for a batch that
    /// failed every attempt under [`OnFailure::Stop`](super::OnFailure::Stop); a store error another try cannot cure.
    ///
    /// # Cancel safety
    ///
    /// Dropped, the subscription stops where it was: the checkpoint is the last batch stored,
    /// and the batches after it (the one in the handler's hands, and the one before it if its
    /// checkpoint was still being stored) are handed over again by the next consumer (delivery
    /// is at least once). The lease is not let go and runs out after its duration; complete
    /// `shutdown` instead to let it go at once.
    pub async fn run<H: Handler>(
        &self,
        mut handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        self.run_consumer(&mut Handled(&mut handler), shutdown).await
    }

    /// Runs the subscription as [`run`](Self::run) does, and starts it again from its stored
    /// checkpoint each time it stops on an error, after the backoff of `restart` (see
    /// [`supervisor`](super::supervisor)). Returns `Ok` after a graceful shutdown, and the last error once the
    /// restarts that `restart` allows are used up. Every restart is logged and counted in
    /// [`SubscriptionMetrics::restarts`](super::SubscriptionMetrics::restarts).
    ///
    /// # Errors
    ///
    /// A store error another try cannot cure, or a name refused by the store.
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn run_supervised<H: Handler>(
        &self,
        mut handler: H,
        shutdown: impl Future<Output = ()> + Send,
        restart: Restart,
    ) -> Result<()> {
        let mut shutdown = Box::pin(shutdown.fuse());
        let mut restarts = 0u32;
        loop {
            let error = match self
                .run_consumer(&mut Handled(&mut handler), shutdown.as_mut())
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if shutdown.is_terminated() || restart.max_restarts.is_some_and(|max| restarts >= max) {
                return Err(error);
            }
            restarts += 1;
            let wait = jittered(restart.wait(restarts));
            tracing::error!(subscription = %self.name, error = %error, restart = restarts, wait = ?wait, "stopped on an error; starting again after the backoff");
            self.metrics.add_restart();
            crate::telemetry::subscription(&self.name, crate::telemetry::SubscriptionEvent::Restart);
            if stopped(&mut shutdown, sleep(wait)).await {
                return Ok(());
            }
        }
    }

    /// Runs it until `shutdown` completes, each batch committed by `sink`: as one consumer
    /// of its feed, or on a store of several feeds as a consumer group of one range.
    pub(crate) async fn run_consumer<K: Sink>(
        &self,
        sink: &mut K,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        if self.reads_split_feed().await {
            return self.run_in_ranges(sink, shutdown).await;
        }
        self.run_into(sink, shutdown).await
    }

    /// Whether it is a single consumer of a store whose slices are in several feeds (a
    /// [sharded store](crate::backend::sharded)). A failure to ask is taken as one feed: the run then
    /// tries its store calls again, as with any store.
    pub(crate) async fn reads_split_feed(&self) -> bool {
        match (&self.range, &self.options.slice_feed) {
            (None, Some(feed)) => feed.parts().await.is_ok_and(|parts| parts.parts().len() > 1),
            _ => false,
        }
    }

    /// Runs it as what a single consumer of a store of several feeds is: a consumer group of
    /// one range, cut at the feeds' bounds, run by one worker in this process. The ranges
    /// hand their batches to `sink` in turn.
    async fn run_in_ranges<K: Sink>(
        &self,
        sink: &mut K,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let shared = Arc::new(tokio::sync::Mutex::new(sink));
        let run_range = |range: Subscription, stop: Pin<Box<dyn Future<Output = ()> + Send>>, owner: Uuid| {
            let mut sink = SharedSink(shared.clone());
            Box::pin(async move { range.run_as(&mut sink, stop, owner).await })
                as Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>
        };
        crate::group::run_workers(self, 1, 1, &run_range, shutdown).await
    }
}

/// One sink shared by the ranges of a single consumer run as a group: each call takes it in
/// turn.
struct SharedSink<'s, K>(Arc<tokio::sync::Mutex<&'s mut K>>);

#[async_trait::async_trait]
impl<K: Sink> Sink for SharedSink<'_, K> {
    async fn checkpoint(&mut self, subscription: &Subscription) -> Result<Option<u64>> {
        self.0.lock().await.checkpoint(subscription).await
    }

    async fn commit(
        &mut self,
        subscription: &Subscription,
        taken: &[StoredEvent],
        read: usize,
        after: Option<u64>,
        last: u64,
        owner: Uuid,
    ) -> Result<Committed> {
        self.0
            .lock()
            .await
            .commit(subscription, taken, read, after, last, owner)
            .await
    }
}
