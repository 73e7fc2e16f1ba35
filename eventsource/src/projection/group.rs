//! A projection run as a consumer group: each range commits its batches with its own
//! checkpoint in the read model's transaction.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use uuid::Uuid;

use super::Projection;
use crate::error::Result;
use crate::group::{self, ConsumerGroup, GroupStatus};
use crate::subscription::Subscription;

impl ConsumerGroup<Projection> {
    /// Runs `workers` workers of the group in this process until `shutdown` completes, as
    /// [`ConsumerGroup::<Subscription>::run`] does, each range's batches committed into the
    /// read model with the range's checkpoint. Creates the read model's tables first, if
    /// missing.
    pub async fn run(&self, workers: usize, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.consumer.setup().await?;
        let projection = &self.consumer;
        let run_range =
            move |range: Subscription, stop: Pin<Box<dyn Future<Output = ()> + Send>>, owner: Uuid| {
                Box::pin(async move { projection.run_range(range, stop, owner).await })
                    as Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>
            };
        group::run_workers(
            self.consumer.subscription(),
            self.ranges,
            workers,
            &run_range,
            shutdown,
        )
        .await
    }

    /// The projection the group runs.
    pub fn projection(&self) -> &Projection {
        &self.consumer
    }

    /// See [`group::status`].
    pub async fn status(&self) -> Result<Option<GroupStatus>> {
        let subscription = self.consumer.subscription();
        group::status(
            &**subscription.events(),
            &**subscription.store(),
            subscription.name(),
        )
        .await
    }

    /// Records a new layout of `ranges` ranges; see [`group::rescale`].
    pub async fn rescale(&self, ranges: u32) -> Result<u32> {
        group::rescale(self.consumer.subscription(), ranges).await
    }

    /// Waits until every range of the current layout has committed `position` (a save's
    /// position) into the read model, at most `timeout`; whether it has: the read model then
    /// shows the caller's own change.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<bool> {
        let subscription = self.consumer.subscription();
        group::wait_for(&**subscription.store(), subscription.name(), position, timeout).await
    }
}
