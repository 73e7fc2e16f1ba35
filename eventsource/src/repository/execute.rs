//! Commands: load, decide, save; on a conflict, load and decide again, a bounded number of
//! times with jittered backoff.
//!
//! The decision is the program's own closure: it sees the aggregate, records events or
//! refuses with its own error type. [`CommandError`] keeps the outcomes apart so that an
//! HTTP layer maps them with one `match`: the aggregate refused (the program's error,
//! unchanged, or its text when a request id sent again finds it), a request id reused for
//! another request, other writers kept winning, or the store failed.
//!
//! A save whose answer was lost (a transient store error) is saved again as it is, never
//! decided again: the store recognises a batch it already holds, so a command is never
//! applied twice (see [`Repository::save`]).

use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use super::outcome::{CommandError, Executed};
use super::requests::{recorded_first, CommandRequest, FirstOutcome};
use super::Repository;
use crate::aggregate::Aggregate;
use crate::deadline::{jittered, sleep};
use crate::error::Error;
use crate::event::EventContext;
use crate::request::{Fingerprint, RequestId};
use crate::root::AggregateRoot;

/// Whether a command loads the aggregate, creates it, or either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    LoadOrCreate,
    MustExist,
    CreateOnly,
}

/// A command on one aggregate, set up by [`Repository::command`] and run by
/// [`run`](Self::run).
#[must_use = "a command does nothing until it is run"]
pub struct Command<'r, A: Aggregate> {
    pub(super) repository: &'r Repository<A>,
    pub(super) id: Uuid,
    pub(super) start: Start,
    pub(super) attempts: u32,
    pub(super) backoff: Duration,
    pub(super) max_backoff: Duration,
    pub(super) context: Option<EventContext>,
    request_id: Option<RequestId>,
    fingerprint: Option<Fingerprint>,
}

impl<A: Aggregate> std::fmt::Debug for Command<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("aggregate_type", &A::TYPE_NAME)
            .field("id", &self.id)
            .field("attempts", &self.attempts)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A command on the aggregate `id`: by default it loads the aggregate (or starts a new
    /// one if it has no events), makes up to 5 attempts, and waits from 5 ms to 200 ms
    /// (jittered) between them.
    ///
    /// ```
    /// # use eventsourcing_kit::prelude::*;
    /// # use eventsourcing_kit::repository::CommandError;
    /// # #[event(aggregate = "Counter")] pub struct Incremented { pub by: u64 }
    /// # #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
    /// # #[aggregate(name = "Counter", events(Incremented))]
    /// # pub struct Counter { pub value: u64 }
    /// # impl Apply<Incremented> for Counter { fn apply(&mut self, e: &Incremented) { self.value += e.by } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
    /// let repo = Repository::<Counter>::new(InMemoryEventStore::new());
    /// let id = Uuid::new_v4();
    /// let done = repo
    ///     .command(id)
    ///     .run(|counter| {
    ///         if counter.state().value >= 10 {
    ///             return Err("the counter is full");
    ///         }
    ///         counter.record(Incremented { by: 1 });
    ///         Ok(())
    ///     })
    ///     .await;
    /// match done {
    ///     Ok(executed) => assert_eq!(executed.version, 1),
    ///     Err(CommandError::Rejected(why)) => println!("409: {why}"),
    ///     Err(CommandError::Contended { .. }) => println!("503: try again later"),
    ///     Err(e) => println!("500: {e}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn command(&self, id: Uuid) -> Command<'_, A> {
        Command {
            repository: self,
            id,
            start: Start::LoadOrCreate,
            attempts: 5,
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
            context: None,
            request_id: None,
            fingerprint: None,
        }
    }

    /// Runs `decide` on the aggregate `id` as [`command`](Self::command) sets up, with its
    /// defaults.
    ///
    /// # Errors
    ///
    /// As [`Command::run`].
    ///
    /// # Cancel safety
    ///
    /// As [`Command::run`].
    pub async fn execute<E, F>(&self, id: Uuid, decide: F) -> Result<Executed, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        self.command(id).run(decide).await
    }
}

impl<A: Aggregate> Command<'_, A> {
    /// Refuses the command with [`CommandError::AlreadyExists`] if the aggregate has events:
    /// `decide` sees a new aggregate, and the save expects none to be stored.
    pub fn create_only(mut self) -> Self {
        self.start = Start::CreateOnly;
        self
    }

    /// Refuses the command with [`CommandError::Failed`] of [`Error::NotFound`] if the
    /// aggregate has no events, instead of starting a new one.
    pub fn must_exist(mut self) -> Self {
        self.start = Start::MustExist;
        self
    }

    /// Gives every event the command records this correlation, causation and metadata.
    pub fn context(mut self, context: EventContext) -> Self {
        self.context = Some(context);
        self
    }

    /// Makes the command idempotent under `request_id` (an HTTP request's idempotency key):
    /// its events are stored with the key, and a command with a key already recorded returns
    /// that first outcome without deciding or writing, in any process: the events it stored
    /// ([`Executed::repeated`], with the aggregate they went to), or its refusal
    /// ([`CommandError::RejectedEarlier`]). Two commands with one key racing each other: one
    /// writes, the other finds its outcome.
    ///
    /// With a [request index](Repository::with_request_index) (every backend of this crate
    /// has one, and [`Stores::repository`](crate::backend::Stores::repository) wires it) the
    /// key is found whatever aggregate it ran on, so a create under a fresh random id is
    /// idempotent too, and refusals are remembered for the
    /// [retention](Repository::with_request_retention). Without one, the key is found among
    /// the aggregate's own events only. A command that records no event records nothing: sent
    /// again, it is decided again.
    pub fn request_id(mut self, request_id: impl Into<RequestId>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Records `fingerprint` (of the request's content: its body, the command) with the
    /// request id: the key sent again with a different fingerprint is refused with
    /// [`CommandError::RequestMismatch`] instead of answered with the first outcome. Where
    /// either request has no fingerprint, the key alone decides.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Makes at most `attempts` attempts (at least 1), waiting `backoff`, then twice that, up
    /// to `max_backoff` between them, each wait less a random part of up to half of it.
    pub fn retry(mut self, attempts: u32, backoff: Duration, max_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self.max_backoff = max_backoff.max(backoff);
        self
    }

    /// Loads (or creates) the aggregate, runs `decide`, saves what it recorded; on a conflict,
    /// does it all again, up to the number of attempts.
    ///
    /// The run is a span at DEBUG, `eventsource.command`, with the aggregate, the request id,
    /// the attempts made, the outcome and the error of a failed one; its outcome is counted
    /// (see [`crate::telemetry`]).
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] with the decision's own error (or
    /// [`CommandError::RejectedEarlier`], the first refusal of its request id);
    /// [`CommandError::AlreadyExists`] for a create-only command on an existing aggregate;
    /// [`CommandError::Contended`] when other writers saved first on every attempt;
    /// [`CommandError::RequestMismatch`] for a request id used before for another request;
    /// [`CommandError::Failed`] when the aggregate could not be loaded or saved.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it finishes, the command's events may or may not be stored, as after a
    /// save's store error. Run with a request id, the command sent again is answered with
    /// its first outcome; without one, it is decided again on the aggregate as it is then.
    /// Dropped in a [batch](Repository::with_command_queue), it leaves the others alone: the
    /// batch is saved, its events with it, and every other command learns how it went.
    pub async fn run<E, F>(self, decide: F) -> Result<Executed, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        let request = self
            .request_id
            .as_ref()
            .or_else(|| self.context.as_ref().and_then(|c| c.request_id.as_ref()))
            .map(|id| id.as_str().to_owned());
        let span = tracing::debug_span!(
            "eventsource.command",
            aggregate.id = %self.id,
            aggregate.type = A::TYPE_NAME,
            request.id = request,
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let outcome = self.run_attempts(decide).instrument(span.clone()).await;
        let label = match &outcome {
            Ok(executed) => {
                span.record("attempts", executed.attempts);
                if executed.repeated {
                    "repeated"
                } else {
                    "executed"
                }
            }
            Err(CommandError::Rejected(_) | CommandError::RejectedEarlier { .. }) => "rejected",
            Err(CommandError::AlreadyExists { .. }) => "exists",
            Err(CommandError::Contended { attempts, .. }) => {
                span.record("attempts", *attempts);
                "contended"
            }
            Err(CommandError::RequestMismatch { .. }) => "mismatch",
            Err(CommandError::Failed(e)) => {
                span.record("error", tracing::field::display(e));
                "failed"
            }
        };
        span.record("outcome", label);
        crate::telemetry::command(A::TYPE_NAME, label);
        outcome
    }

    async fn run_attempts<E, F>(self, mut decide: F) -> Result<Executed, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        let repo = self.repository;
        let request = self
            .request_id
            .clone()
            .or_else(|| self.context.as_ref().and_then(|c| c.request_id.clone()))
            .map(|id| CommandRequest {
                id,
                fingerprint: self.fingerprint,
            });
        // Commands with a request id, and creations, run alone (see `super::batch`).
        match &repo.commands {
            Some(queue) if request.is_none() && self.start != Start::CreateOnly => {
                self.run_batched(queue, &mut decide).await
            }
            _ => self.run_alone(request, &mut decide).await,
        }
    }

    /// Runs the command on its own: load, decide, save, attempt after attempt; in its turn
    /// on the aggregate if the repository queues commands.
    pub(super) async fn run_alone<E, F>(
        &self,
        request: Option<CommandRequest>,
        decide: &mut F,
    ) -> Result<Executed, CommandError<E>>
    where
        E: std::fmt::Display,
        F: FnMut(&mut AggregateRoot<A>) -> Result<(), E>,
    {
        let repo = self.repository;
        let _turn = match &repo.commands {
            Some(queue) => Some(queue.enter_alone(self.id).await),
            None => None,
        };
        if let Some(first) = self.first_outcome(request.as_ref(), 1).await? {
            return first;
        }
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            let mut root = match self.start {
                Start::CreateOnly => repo.create_new(self.id),
                Start::MustExist => repo.load(self.id).await.map_err(CommandError::Failed)?,
                Start::LoadOrCreate => repo.load_or_create(self.id).await.map_err(CommandError::Failed)?,
            };
            if self.context.is_some() || request.is_some() {
                let mut context = self.context.clone().unwrap_or_default();
                context.request_id = request.as_ref().map(|r| r.id.clone());
                root.set_context(context);
            }
            if let Err(why) = decide(&mut root) {
                return self.refused(request.as_ref(), why, attempt).await;
            }
            let events = root.pending_events().len();
            if events == 0
                && self.start == Start::CreateOnly
                && repo.exists(self.id).await.map_err(CommandError::Failed)?
            {
                return self.already_exists(request.as_ref(), attempt).await;
            }
            match self.save(&mut root, request.as_ref(), wait).await {
                Ok(version) => return self.executed(version, events, attempt, root.position()).await,
                Err(e) if e.is_conflict() || recorded_first(&e) => {
                    // The writer that came first may be this very request, sent twice.
                    if let Some(first) = self.first_outcome(request.as_ref(), attempt).await? {
                        return first;
                    }
                    if self.start == Start::CreateOnly && e.is_conflict() {
                        return self.already_exists(request.as_ref(), attempt).await;
                    }
                    if attempt < self.attempts {
                        sleep(jittered(wait)).await;
                        wait = wait.saturating_mul(2).min(self.max_backoff);
                    }
                }
                Err(e) => return Err(CommandError::Failed(e)),
            }
        }
        Err(CommandError::Contended {
            aggregate_type: A::TYPE_NAME,
            aggregate_id: self.id,
            attempts: self.attempts,
        })
    }

    /// The answer recorded for this command's request, if it was sent before.
    async fn first_outcome<E>(
        &self,
        request: Option<&CommandRequest>,
        attempt: u32,
    ) -> Result<Option<Result<Executed, CommandError<E>>>, CommandError<E>> {
        let Some(request) = request else {
            return Ok(None);
        };
        let first = self
            .repository
            .first_outcome(request, self.id, attempt)
            .await
            .map_err(CommandError::Failed)?;
        Ok(first.map(|first| answer(request, first)))
    }

    /// The aggregate refused the command: recorded as the request's first outcome, unless
    /// another command recorded one first, which is then the answer.
    async fn refused<E: std::fmt::Display>(
        &self,
        request: Option<&CommandRequest>,
        why: E,
        attempt: u32,
    ) -> Result<Executed, CommandError<E>> {
        if let Some(request) = request {
            let first = self
                .repository
                .record_refusal(request, self.id, why.to_string(), attempt)
                .await
                .map_err(CommandError::Failed)?;
            if let Some(first) = first {
                return answer(request, first);
            }
        }
        Err(CommandError::Rejected(why))
    }

    /// A create-only command found the aggregate there: a refusal like the aggregate's own.
    async fn already_exists<E>(
        &self,
        request: Option<&CommandRequest>,
        attempt: u32,
    ) -> Result<Executed, CommandError<E>> {
        let exists = CommandError::<E>::AlreadyExists {
            aggregate_type: A::TYPE_NAME,
            aggregate_id: self.id,
        };
        if let Some(request) = request {
            let reason = format!("{} {} already exists", A::TYPE_NAME, self.id);
            let first = self
                .repository
                .record_refusal(request, self.id, reason, attempt)
                .await
                .map_err(CommandError::Failed)?;
            if let Some(first) = first {
                return answer(request, first);
            }
        }
        Err(exists)
    }

    /// The outcome of a command that stored `events` events ending at `version` (at feed
    /// position `position`, if the save told it), on attempt `attempt`.
    pub(super) async fn executed<E>(
        &self,
        version: u64,
        events: usize,
        attempt: u32,
        position: Option<u64>,
    ) -> Result<Executed, CommandError<E>> {
        let position = match position {
            Some(position) if events > 0 => position,
            _ => self.position(version).await?,
        };
        Ok(Executed {
            aggregate_id: self.id,
            version,
            events,
            attempts: attempt,
            repeated: false,
            position,
        })
    }

    /// The feed position of the aggregate's event at `version`, 0 at version 0.
    pub(super) async fn position<E>(&self, version: u64) -> Result<u64, CommandError<E>> {
        if version == 0 {
            return Ok(0);
        }
        self.repository
            .position(self.id, version)
            .await
            .map_err(CommandError::Failed)
    }

    /// Saves the root, saving it again (never deciding again) after a transient store
    /// error, so that a batch whose answer was lost is recognised rather than written twice.
    pub(super) async fn save(
        &self,
        root: &mut AggregateRoot<A>,
        request: Option<&CommandRequest>,
        wait: Duration,
    ) -> Result<u64, Error> {
        save_again_on_transient(self.repository, root, request, self.resave(wait)).await
    }

    /// How this command's saves are made again after a transient error, the first wait
    /// `wait`.
    pub(super) fn resave(&self, wait: Duration) -> Resave {
        Resave {
            tries: self.attempts.max(3),
            wait,
            max_wait: self.max_backoff,
        }
    }
}

/// How a save is made again after a transient store error: at most `tries` tries (at least
/// three whatever the attempts: a save whose answer was lost must be made again to learn
/// whether it was stored), waiting `wait`, then twice that up to `max_wait`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Resave {
    tries: u32,
    wait: Duration,
    max_wait: Duration,
}

/// Saves the root through `repository`, saving it again (never deciding again) after a
/// transient store error, as `resave` says.
pub(super) async fn save_again_on_transient<A: Aggregate>(
    repository: &Repository<A>,
    root: &mut AggregateRoot<A>,
    request: Option<&CommandRequest>,
    resave: Resave,
) -> Result<u64, Error> {
    let (mut wait, mut tries) = (resave.wait, 1);
    loop {
        match repository.save_requested(root, request).await {
            Err(e) if e.is_transient() && tries < resave.tries => {
                tracing::warn!(aggregate.id = %root.id(), aggregate.type = A::TYPE_NAME, error = %e, "save failed; saving the same events again");
                sleep(jittered(wait)).await;
                wait = wait.saturating_mul(2).min(resave.max_wait);
                tries += 1;
            }
            outcome => return outcome,
        }
    }
}

/// What a first outcome answers to the command sent again.
fn answer<E>(request: &CommandRequest, first: FirstOutcome) -> Result<Executed, CommandError<E>> {
    match first {
        FirstOutcome::Executed(executed) => Ok(executed),
        FirstOutcome::Refused(reason) => Err(CommandError::RejectedEarlier {
            request_id: request.id.clone(),
            reason,
        }),
        FirstOutcome::Mismatch => Err(CommandError::RequestMismatch {
            request_id: request.id.clone(),
        }),
    }
}
