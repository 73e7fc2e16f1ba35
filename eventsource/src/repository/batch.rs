//! Commands decided together: with the [command queue](super::Repository::with_command_queue),
//! the commands that wait for their turn on one aggregate join the batch of the command ahead
//! of them, decide one after the other on the root it loaded, and are saved in one append.
//!
//! The first command of a batch (its saver) loads the aggregate and decides, opens the batch,
//! and lets every command waiting behind it take its turn: each decides on the batch's root
//! and records its events there, and waits. Then the saver takes the batch back, saves it,
//! and tells every command how it went. One load and one commit serve the whole batch, so a
//! hot aggregate takes as many commands per second as fit in its batches, not one per round
//! trip.
//!
//! - A command that refuses, or panics, puts the root back as it was before it decided. A
//!   refusal stands once the batch is stored; otherwise the state it was decided on may never
//!   be, and the command decides again.
//! - On a conflict nothing is stored, and every command of the batch decides again, in a
//!   batch of its next attempt.
//! - A batch that cannot be stored for a reason of some command's own (an event that does
//!   not serialize, a closed stream) is nothing stored: each command decides again alone,
//!   and meets its own error.
//! - A save that fails in the store is each command's failure, as for a command alone: the
//!   events may or may not be stored.
//! - The save runs in a task of its own: a saver dropped by its caller still saves the batch
//!   and tells the others.
//! - Commands with a request id, and create-only ones, run alone (their events are appended
//!   with their request's record); while one waits, no batch opens, so that it gets a turn.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tracing::Instrument;

use super::execute::{save_again_on_transient, Command, Resave, Start};
use super::outcome::{CommandError, Executed};
use super::queue::{outcome_of, BatchOutcome, CommandQueue, Open, Saver, Turn};
use super::Repository;
use crate::aggregate::Aggregate;
use crate::deadline::{jittered, sleep};
use crate::error::Error;
use crate::root::AggregateRoot;

/// How one attempt of a batched command ended.
enum Attempt<E> {
    /// Decided and saved (or nothing to save): the command's version, its event count and the
    /// feed position to wait for.
    Done {
        version: u64,
        events: usize,
        position: Option<u64>,
    },
    /// Refused, on a state that is stored.
    Refused(E),
    /// Another writer saved first: decide again.
    Again,
    /// Decide again alone.
    Alone,
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
                } => return self.executed(version, events, attempt, position).await,
                Attempt::Refused(why) => return Err(CommandError::Rejected(why)),
                Attempt::Alone => return self.run_alone(None, decide).await,
                Attempt::Again if attempt < self.attempts => {
                    sleep(jittered(wait)).await;
                    wait = wait.saturating_mul(2).min(self.max_backoff);
                }
                Attempt::Again => {}
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
    ) -> Result<Attempt<E>, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        let mut turn = queue.enter(self.id).await;
        if turn.batch().is_some() {
            return self.join(turn, decide).await;
        }
        let mut root = match self.start {
            Start::MustExist => self.repository.load(self.id).await,
            _ => self.repository.load_or_create(self.id).await,
        }
        .map_err(CommandError::Failed)?;
        root.set_context(self.context.clone().unwrap_or_default());
        if let Err(why) = decide(&mut root) {
            return Ok(Attempt::Refused(why));
        }
        let (version, events) = (root.version(), root.pending_events().len());
        if turn.alone_waiting() {
            // A command that must run alone waits: no batch, so that its turn comes.
            let saved = self.save(&mut root, None, self.backoff).await;
            drop(turn);
            return match saved {
                Ok(_) => Ok(Attempt::Done {
                    version,
                    events,
                    position: root.position(),
                }),
                Err(e) if e.is_conflict() => Ok(Attempt::Again),
                Err(e) => Err(CommandError::Failed(e)),
            };
        }
        let (open, saver) = Open::new(root);
        *turn.slot() = Some(open);
        let saving = tokio::spawn(
            save_batch(turn, saver, self.repository.clone(), self.resave(self.backoff))
                .instrument(tracing::Span::current()),
        );
        let (outcome, error) = match saving.await {
            Ok(saved) => saved,
            Err(e) if e.is_panic() => resume_unwind(e.into_panic()),
            Err(e) => {
                return Err(CommandError::Failed(Error::store(
                    "command batch",
                    "the save of a batch was lost",
                    e,
                )))
            }
        };
        match (outcome, error) {
            (BatchOutcome::Saved { position }, _) => Ok(Attempt::Done {
                version,
                events,
                position,
            }),
            (BatchOutcome::Conflict, _) => Ok(Attempt::Again),
            // Alone in its batch, the error is its own.
            (BatchOutcome::Unsaved, Some((e, 1))) => Err(CommandError::Failed(e)),
            (BatchOutcome::Unsaved, _) => Ok(Attempt::Alone),
            (BatchOutcome::Failed { .. }, Some((e, _))) => Err(CommandError::Failed(e)),
            (failed @ BatchOutcome::Failed { .. }, None) => self.batch_failed(Some(failed)),
        }
    }

    /// Decides on the batch open in `turn`, and waits for its outcome.
    async fn join<E, F>(
        &self,
        mut turn: Turn<AggregateRoot<A>>,
        decide: &mut F,
    ) -> Result<Attempt<E>, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        let open = turn.slot().as_mut().expect("a batch is open");
        if self.start == Start::MustExist && open.root.version() == 0 {
            return Err(CommandError::Failed(Error::NotFound {
                aggregate_type: A::TYPE_NAME.to_owned(),
                aggregate_id: self.id,
            }));
        }
        let before = open.root.clone();
        open.root.set_context(self.context.clone().unwrap_or_default());
        let decided = catch_unwind(AssertUnwindSafe(|| decide(&mut open.root)));
        let refused = match decided {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(panic) => {
                open.root = before;
                drop(turn);
                resume_unwind(panic);
            }
        };
        if refused.is_some() {
            open.root = before.clone();
        } else {
            open.members += 1;
        }
        let (version, events) = (open.root.version(), open.root.version() - before.version());
        let outcome = outcome_of(open.subscribe());
        drop(turn);
        let outcome = outcome.await;
        match (refused, outcome) {
            (Some(why), Some(BatchOutcome::Saved { .. })) => Ok(Attempt::Refused(why)),
            (Some(_), Some(BatchOutcome::Conflict)) => Ok(Attempt::Again),
            // The state it refused on may never be stored: it decides again.
            (Some(_), _) => Ok(Attempt::Alone),
            (None, Some(BatchOutcome::Saved { position })) => Ok(Attempt::Done {
                version,
                events: events as usize,
                position,
            }),
            (None, Some(BatchOutcome::Conflict)) => Ok(Attempt::Again),
            (None, Some(BatchOutcome::Unsaved)) => Ok(Attempt::Alone),
            (None, failed) => self.batch_failed(failed),
        }
    }

    /// The failure of a command whose batch's save failed in the store (or was lost).
    fn batch_failed<T, E>(&self, outcome: Option<BatchOutcome>) -> Result<T, CommandError<E>> {
        let (message, transient) = match outcome {
            Some(BatchOutcome::Failed { message, transient }) => (message, transient),
            _ => ("its saver was lost".to_owned(), true),
        };
        Err(CommandError::Failed(Error::Store {
            backend: "command batch",
            message: format!(
                "the save of the batch of commands on {} {} failed, and its events may or may not be stored: {message}",
                A::TYPE_NAME,
                self.id
            ),
            transient,
            source: None,
        }))
    }
}

/// Lets the commands waiting behind the batch's saver join the batch, then saves it and
/// tells them how it went: the outcome, with the store's own error and the number of
/// commands in the batch when the save failed.
async fn save_batch<A: Aggregate>(
    turn: Turn<AggregateRoot<A>>,
    saver: Saver,
    repository: Repository<A>,
    resave: Resave,
) -> (BatchOutcome, Option<(Error, usize)>) {
    let mut turn = turn.after_the_waiting().await;
    let Some(Open {
        mut root, members, ..
    }) = turn.slot().take()
    else {
        // Only its saver takes a batch: gone, it was never saved.
        saver.tell(BatchOutcome::Conflict);
        return (BatchOutcome::Conflict, None);
    };
    let (outcome, error) = match root.pending_events().len() {
        0 => (BatchOutcome::Saved { position: None }, None),
        _ => match save_again_on_transient(&repository, &mut root, None, resave).await {
            Ok(_) => (
                BatchOutcome::Saved {
                    position: root.position(),
                },
                None,
            ),
            Err(e) if e.is_conflict() => (BatchOutcome::Conflict, None),
            // Refused before anything reached the store.
            Err(e) if !matches!(e, Error::Store { .. }) => (BatchOutcome::Unsaved, Some((e, members))),
            Err(e) => {
                let failed = BatchOutcome::Failed {
                    message: e.to_string(),
                    transient: e.is_transient(),
                };
                (failed, Some((e, members)))
            }
        },
    };
    saver.tell(outcome.clone());
    drop(turn);
    (outcome, error)
}
