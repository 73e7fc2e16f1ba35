//! Running a subscription again after it stopped on an error: the restart policy of
//! [`Subscription::run_supervised`](super::Subscription::run_supervised).
//!
//! A subscription stops on an error another try inside it cannot cure: a store that refuses
//! (a full disk, a revoked permission) or a batch that still fails after the last attempt
//! under [`OnFailure::Stop`](super::OnFailure::Stop). A long-running program wants it running
//! again once the cause is fixed, without a loop of its own: the supervisor starts it again
//! from its stored checkpoint after a backoff that doubles from one restart to the next, and
//! counts every restart ([`SubscriptionMetrics::restarts`](super::SubscriptionMetrics::restarts),
//! `eventsource_subscription_restarts_total`).

use std::time::Duration;

use crate::error::{Error, Result};

/// How a supervised subscription is started again; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Restart {
    pub(super) backoff: Duration,
    pub(super) max_backoff: Duration,
    pub(super) max_restarts: Option<u32>,
}

impl Default for Restart {
    /// A first restart after 1 s, doubling up to 1 min, without end.
    fn default() -> Self {
        Restart {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_restarts: None,
        }
    }
}

impl Restart {
    /// The default policy: a first restart after 1 s, doubling up to 1 min, without end.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits `backoff` before the first restart, twice that before the next and so on up to
    /// `max_backoff` (each wait jittered by up to half). A zero `backoff` is
    /// [`Error::InvalidConfiguration`]: a subscription that fails at once would spin.
    pub fn backoff(mut self, backoff: Duration, max_backoff: Duration) -> Result<Self> {
        if backoff.is_zero() {
            return Err(Error::InvalidConfiguration(
                "a supervised subscription's restart backoff must be above zero".into(),
            ));
        }
        self.backoff = backoff;
        self.max_backoff = max_backoff.max(backoff);
        Ok(self)
    }

    /// Gives up after `restarts` restarts, returning the error the subscription last stopped
    /// with. Without it, restarts go on until the shutdown future completes.
    pub fn at_most(mut self, restarts: u32) -> Self {
        self.max_restarts = Some(restarts);
        self
    }

    /// The wait before restart number `restart` (from 1), before jitter.
    pub(super) fn wait(&self, restart: u32) -> Duration {
        let doublings = restart.saturating_sub(1).min(31);
        self.backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_bound() {
        let restart = Restart::new()
            .backoff(Duration::from_millis(100), Duration::from_millis(500))
            .unwrap();
        let waits: Vec<u128> = (1..=5).map(|n| restart.wait(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(restart.wait(u32::MAX), Duration::from_millis(500));
        assert!(Restart::new()
            .backoff(Duration::ZERO, Duration::from_secs(1))
            .is_err());
    }
}
