//! A projection run as a consumer group: each range commits its batches with its own
//! checkpoint in the read model's transaction.

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use super::Projection;
use crate::error::Result;
use crate::group::{self, ConsumerGroup};
use crate::subscription::Subscription;

impl ConsumerGroup<Projection> {
    /// Runs `workers` workers of the group in this process until `shutdown` completes, as
    /// [`ConsumerGroup::<Subscription>::run`] does, each range's batches committed into the
    /// read model with the range's checkpoint. Creates the read model's tables first, if
    /// missing.
    ///
    /// # Errors
    ///
    /// As [`Projection::run`], for each range;
    /// [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration) for zero workers.
    ///
    /// # Cancel safety
    ///
    /// As [`Projection::run`].
    pub async fn run(&self, workers: usize, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.consumer.setup().await?;
        let projection = &self.consumer;
        let run_range =
            move |range: Subscription, stop: Pin<Box<dyn Future<Output = ()> + Send>>, owner: Uuid| {
                Box::pin(async move { projection.run_range(range, stop, owner).await })
                    as Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>
            };
        group::run_workers(self.template(), self.ranges, workers, &run_range, shutdown).await
    }

    /// The projection the group runs.
    pub fn projection(&self) -> &Projection {
        &self.consumer
    }
}
