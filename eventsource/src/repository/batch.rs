//! Commands decided together: with the [command queue](super::Repository::with_command_queue),
//! the commands that wait for their turn on one aggregate join the batch of the command ahead
//! of them, decide one after the other on the root it loaded, and are saved in one append.
//!
//! The first command of a batch (its saver) loads the aggregate and decides, opens the batch,
//! and lets every command waiting behind it take its turn: each decides on the batch's root
//! (a refusal puts the root back as it was), records its events there, and waits. Then the
//! saver takes the batch back and saves it, and tells every command how it went. One load and
//! one commit serve the whole batch, so a hot aggregate takes as many commands per second as
//! fit in its batches, not one per round trip.
//!
//! On a conflict nothing is stored, and each command of the batch decides again, in a batch
//! of its next attempt. A save that fails is each command's failure, as for a command alone
//! (the events may or may not be stored). Commands with a request id run alone: their events
//! are appended with their request's record.

use std::sync::Arc;

use super::execute::{Command, Start};
use super::outcome::{CommandError, Executed};
use super::queue::{outcome_of, BatchOutcome, CommandQueue, Open};
use crate::aggregate::Aggregate;
use crate::deadline::{jittered, sleep};
use crate::error::Error;
use crate::root::AggregateRoot;

/// How one attempt of a batched command ended.
enum Attempt {
    /// Decided and saved (or nothing to save): the command's version, its event count and the
    /// feed position to wait for.
    Done {
        version: u64,
        events: usize,
        position: Option<u64>,
    },
    /// Another writer saved first: decide again.
    Conflict,
}

impl<A: Aggregate> Command<'_, A> {
    /// Runs the command in the batches of its aggregate, attempt after attempt.
    pub(super) async fn run_batched<E, F>(
        &self,
        queue: &Arc<CommandQueue<AggregateRoot<A>>>,
        decide: &mut F,
    ) -> Result<Executed, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            match self.batched_attempt(queue, decide).await? {
                Attempt::Done {
                    version,
                    events,
                    position,
                } => {
                    let position = match position {
                        Some(position) if events > 0 => position,
                        _ => self.position(version).await?,
                    };
                    return Ok(Executed {
                        aggregate_id: self.id,
                        version,
                        events,
                        attempts: attempt,
                        repeated: false,
                        position,
                    });
                }
                Attempt::Conflict if attempt < self.attempts => {
                    sleep(jittered(wait)).await;
                    wait = wait.saturating_mul(2).min(self.max_backoff);
                }
                Attempt::Conflict => {}
            }
        }
        Err(CommandError::Contended {
            aggregate_type: A::TYPE_NAME,
            aggregate_id: self.id,
            attempts: self.attempts,
        })
    }

    /// Joins the batch open on the aggregate, or opens one and saves it.
    async fn batched_attempt<E, F>(
        &self,
        queue: &Arc<CommandQueue<AggregateRoot<A>>>,
        decide: &mut F,
    ) -> Result<Attempt, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        let mut turn = queue.enter(self.id).await;
        if let Some(open) = turn.slot().as_mut() {
            if self.start == Start::MustExist && open.root.version() == 0 {
                return Err(CommandError::Failed(Error::NotFound {
                    aggregate_type: A::TYPE_NAME.to_owned(),
                    aggregate_id: self.id,
                }));
            }
            let before = open.root.clone();
            open.root.set_context(self.context.clone().unwrap_or_default());
            if let Err(why) = decide(&mut open.root) {
                open.root = before;
                return Err(CommandError::Rejected(why));
            }
            let (version, events) = (open.root.version(), open.root.version() - before.version());
            let outcome = open.subscribe();
            drop(turn);
            return self.joined(outcome_of(outcome).await, version, events as usize);
        }
        let mut root = match self.start {
            Start::MustExist => self.repository.load(self.id).await,
            _ => self.repository.load_or_create(self.id).await,
        }
        .map_err(CommandError::Failed)?;
        root.set_context(self.context.clone().unwrap_or_default());
        if let Err(why) = decide(&mut root) {
            return Err(CommandError::Rejected(why));
        }
        let (version, events) = (root.version(), root.pending_events().len());
        let (open, saver) = Open::new(root);
        *turn.slot() = Some(open);
        let mut turn = turn.after_the_waiting().await;
        let Some(Open { mut root, .. }) = turn.slot().take() else {
            // Only its saver takes a batch; gone, it was never saved.
            saver.tell(BatchOutcome::Conflict);
            return Ok(Attempt::Conflict);
        };
        let outcome = match root.pending_events().len() {
            0 => BatchOutcome::Saved { position: None },
            _ => match self.save(&mut root, None, self.backoff).await {
                Ok(_) => BatchOutcome::Saved {
                    position: root.position(),
                },
                Err(e) if e.is_conflict() => BatchOutcome::Conflict,
                Err(e) => {
                    saver.tell(BatchOutcome::Failed {
                        message: e.to_string(),
                        transient: e.is_transient(),
                    });
                    return Err(CommandError::Failed(e));
                }
            },
        };
        saver.tell(outcome.clone());
        drop(turn);
        self.joined(Some(outcome), version, events)
    }

    /// The attempt of a command whose batch ended with `outcome`, its own events ending at
    /// `version`.
    fn joined<E>(
        &self,
        outcome: Option<BatchOutcome>,
        version: u64,
        events: usize,
    ) -> Result<Attempt, CommandError<E>> {
        match outcome {
            Some(BatchOutcome::Saved { position, .. }) => Ok(Attempt::Done {
                version,
                events,
                position,
            }),
            Some(BatchOutcome::Conflict) => Ok(Attempt::Conflict),
            Some(BatchOutcome::Failed { message, transient }) => Err(CommandError::Failed(Error::Store {
                backend: "command batch",
                message: format!(
                    "the save of the batch of commands on {} {} failed, and its events may or may not be stored: {message}",
                    A::TYPE_NAME,
                    self.id
                ),
                transient,
                source: None,
            })),
            None => Err(CommandError::Failed(Error::Store {
                backend: "command batch",
                message: format!(
                    "the command saving the batch of commands on {} {} was dropped; its events may or may not be stored",
                    A::TYPE_NAME,
                    self.id
                ),
                transient: true,
                source: None,
            })),
        }
    }
}
