//! A projection's dead letters replayed into its read model (see
//! [`crate::subscription::replay`]): each event committed in the read model's transaction
//! with the checkpoint it has, so the checkpoint never moves; a dry run commits against a
//! checkpoint the read model does not have, which the read model's contract rolls back.

use uuid::Uuid;

use super::{Projection, ReadModelStore};
use crate::error::Result;
use crate::event::StoredEvent;
use crate::subscription::replay::{
    names_with_letters, replay, OnLetter, Replay, ReplayOptions, ReplayReport,
};

/// The read model, committing each event with the checkpoint as it is.
struct Committing<'m> {
    model: &'m dyn ReadModelStore,
    dry_run: bool,
}

impl Replay for Committing<'_> {
    async fn replay(
        &mut self,
        name: &str,
        owner: Uuid,
        event: &StoredEvent,
    ) -> Result<std::result::Result<bool, String>> {
        let Some(checkpoint) = self.model.checkpoint(name).await? else {
            return Ok(Err(format!(
                "{name} has no checkpoint (it was reset): a rebuild replays every event"
            )));
        };
        // A dry run's commit expects another checkpoint than the stored one: the read model
        // applies the event, finds the checkpoint moved, and rolls back (the contract's
        // fencing), so success reads as "not committed".
        let after = match self.dry_run {
            true => None,
            false => Some(checkpoint),
        };
        match self
            .model
            .commit(name, owner, after, std::slice::from_ref(event), checkpoint)
            .await
        {
            Ok(committed) => Ok(Ok(committed != self.dry_run)),
            Err(e) => Ok(Err(e.to_string())),
        }
    }
}

impl Projection {
    /// Applies the events this projection gave up on to its read model again, one by one,
    /// each in the read model's transaction with the checkpoint as it is (which never
    /// moves), and removes the letter of each that now applies; with
    /// [`ReplayOptions::dry_run`], each transaction is rolled back and nothing is removed.
    /// The letters of its consumer group's ranges are replayed too. See
    /// [`crate::subscription::replay`] for what a replay guarantees.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) while a consumer holds the lease of
    /// a name with letters (stop the projection first), or if one takes it over meanwhile; a
    /// store error as the store gives it. A handler that fails again is no error: the report
    /// says so, and the letter stays.
    ///
    /// # Cancel safety
    ///
    /// Each letter is applied in the read model's transaction, then removed: dropped in
    /// between, that letter stays and is applied again by the next replay (at least once);
    /// the letters replayed before are gone, the others stay.
    pub async fn replay_dead_letters(&self, options: ReplayOptions) -> Result<ReplayReport> {
        self.replay_dead_letters_with_progress(options, &mut |_| {}).await
    }

    /// [`replay_dead_letters`](Self::replay_dead_letters), calling `on_letter` with each
    /// letter as it is replayed (a progress bar, a log line): the report lists only the first
    /// [`REPORTED`](crate::subscription::replay::REPORTED).
    ///
    /// # Errors
    ///
    /// As [`replay_dead_letters`](Self::replay_dead_letters).
    ///
    /// # Cancel safety
    ///
    /// As [`replay_dead_letters`](Self::replay_dead_letters).
    pub async fn replay_dead_letters_with_progress(
        &self,
        options: ReplayOptions,
        on_letter: OnLetter<'_>,
    ) -> Result<ReplayReport> {
        let subscription = self.subscription();
        let store = self.model().subscriptions();
        let names = names_with_letters(&*store, self.name()).await?;
        let mut committing = Committing {
            model: self.model(),
            dry_run: options.dry_run,
        };
        replay(subscription, &*store, &names, options, &mut committing, on_letter).await
    }
}
