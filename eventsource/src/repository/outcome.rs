//! What a command answers: what it did ([`Executed`]) or why it did not ([`CommandError`]).

use uuid::Uuid;

use crate::error::Error;
use crate::request::RequestId;

/// How a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command: the decision's own error.
    #[error("{0}")]
    Rejected(E),
    /// A create-only command found the aggregate already there.
    #[error("{aggregate_type} {aggregate_id} already exists")]
    AlreadyExists {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The aggregate id.
        aggregate_id: Uuid,
    },
    /// Other writers saved first on every attempt.
    #[error("{aggregate_type} {aggregate_id}: other writers saved first {attempts} time(s)")]
    Contended {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The aggregate id.
        aggregate_id: Uuid,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The command's request id was used before for a different request: another
    /// fingerprint, or a command on another aggregate type. Nothing was decided or written;
    /// an HTTP service answers 422.
    #[error("request {request_id} was used before for a different request")]
    RequestMismatch {
        /// The request id.
        request_id: RequestId,
    },
    /// The command's request id was refused when it was first sent, within the repository's
    /// request retention: this is that refusal's text, and nothing was decided again.
    #[error("{reason}")]
    RejectedEarlier {
        /// The request id.
        request_id: RequestId,
        /// The first refusal, as its error displayed it.
        reason: String,
    },
    /// The aggregate could not be loaded or saved: a store failure, an event that cannot be
    /// stored, an aggregate that must exist and does not ([`Error::NotFound`]).
    #[error(transparent)]
    Failed(Error),
}

/// What a command that succeeded did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Executed {
    /// The aggregate the command ran on: the one given, or, for a request id sent again, the
    /// one its first outcome ran on (a create under a fresh id finds the first one's).
    pub aggregate_id: Uuid,
    /// The aggregate's version after the command.
    pub version: u64,
    /// How many events the command recorded (0: it decided there was nothing to do).
    pub events: usize,
    /// How many times it was decided (1 unless other writers came first).
    pub attempts: u32,
    /// Whether the command's request id was found recorded: the command ran before, and
    /// this is its first outcome, with nothing decided or written now.
    pub repeated: bool,
    /// The feed position of the aggregate's event at `version` (0 when the aggregate has no
    /// events): wait for a [projection](crate::projection) to reach it, and its read model
    /// shows this command's outcome. For a command saved in a batch with others (see
    /// [`Repository::with_command_queue`](crate::Repository::with_command_queue)), the
    /// position of the batch's last event, at or past the command's own.
    pub position: u64,
}

impl<E> crate::multi_stream::Conflicted for CommandError<E> {
    fn is_conflict(&self) -> bool {
        matches!(self, CommandError::Failed(e) if e.is_conflict())
    }
}
