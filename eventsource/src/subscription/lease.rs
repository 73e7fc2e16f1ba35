//! A consumer's hold on a subscription's lease: taken, renewed every third of it, and given
//! up as lost as soon as it may have run out.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use uuid::Uuid;

use super::SubscriptionStore;
use crate::deadline::sleep;
use crate::error::Result;

pub(super) struct Held<'a> {
    store: &'a dyn SubscriptionStore,
    name: &'a str,
    owner: Uuid,
    lease: Duration,
    /// When the last renewal that succeeded was asked for: the lease runs until `lease` after.
    renewed: Mutex<Option<Instant>>,
}

impl<'a> Held<'a> {
    pub(super) fn new(store: &'a dyn SubscriptionStore, name: &'a str, owner: Uuid, lease: Duration) -> Self {
        Held {
            store,
            name,
            owner,
            lease,
            renewed: Mutex::new(None),
        }
    }

    pub(super) fn owner(&self) -> Uuid {
        self.owner
    }

    fn since_renewed(&self) -> Option<Duration> {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| at.elapsed())
    }

    /// Takes or renews the lease now; whether this consumer holds it.
    pub(super) async fn renew(&self) -> Result<bool> {
        let asked = Instant::now();
        let held = self.store.acquire(self.name, self.owner, self.lease).await?;
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = held.then_some(asked);
        Ok(held)
    }

    /// Renews the lease if a third of it has passed; whether this consumer still holds it. A
    /// lease that may have run out meanwhile counts as lost, even if nobody took it: another
    /// consumer may have taken it, moved the checkpoint and let it go again.
    pub(super) async fn keep(&self) -> Result<bool> {
        match self.since_renewed() {
            None => Ok(false),
            Some(since) if since >= self.lease => Ok(false),
            Some(since) if since < self.lease / 3 => Ok(true),
            Some(_) => self.renew().await,
        }
    }

    /// Renews the lease every third of it, for as long as it is held; completes when it is
    /// lost (or may have run out), or fails with an error another try cannot cure.
    pub(super) async fn hold(&self) -> Result<()> {
        loop {
            let Some(since) = self.since_renewed() else {
                return Ok(());
            };
            sleep((self.lease / 3).saturating_sub(since)).await;
            if self.since_renewed().is_none_or(|since| since >= self.lease) {
                return Ok(());
            }
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) if e.is_transient() => {
                    tracing::warn!(subscription = %self.name, error = %e, "cannot renew the lease; trying again");
                }
                Err(e) => return Err(e),
            }
        }
    }
}
