//! Process managers: long-running flows across aggregates, driven by events, that issue
//! commands and never repeat an effect.
//!
//! A warehouse reserves stock for each line of a placed order and confirms the order once
//! every line is reserved; if a line cannot be reserved, it releases what it reserved and
//! cancels the order; if the order is not paid within 15 minutes, it cancels it. Each order is
//! one *instance* of the process, with a state of its own. A [`ProcessManager`] says:
//!
//! - which instance an event concerns ([`route`](ProcessManager::route));
//! - what the instance decides on an event, on the reply to one of its commands (a refusal
//!   to compensate for), and on a timeout that came due: a new state, commands, timeouts to
//!   schedule or cancel, or the end of the instance ([`Decisions`]);
//! - how a command is sent ([`execute`](ProcessManager::execute)), given the request id and
//!   the correlation and causation to run it with.
//!
//! A [`ProcessRunner`] runs it on a [`Subscription`](crate::subscription::Subscription):
//! alone, or as a consumer group spread over processes, like any subscription.
//!
//! # Never an effect twice
//!
//! Deciding and sending are two steps, and the decision is stored first. Each instance keeps
//! a record in the event store (a stream of its own, aggregate type `process.NAME`): its
//! state, the causes (events, replies, timeouts) it has decided on, its timeouts, and the
//! commands decided and not yet sent, each with its request id, derived from the cause and
//! the command's place among the cause's commands (`NAME/CAUSE/N`). Then each command is sent
//! with its request id, and the reply decided on and stored in turn. So:
//!
//! - an event handed over again (after a crash, a lost lease) finds its cause recorded and
//!   decides nothing again; the commands left unsent are sent;
//! - a command sent again after a crash carries the same request id, and its aggregate's
//!   request index answers with the first outcome: it is not executed twice, and its reply
//!   is the same (a refusal is recorded too);
//! - two runners deciding for one instance at once (workers of a group, whose slices hold
//!   the events of one order and of its products) meet on the record's version: one decision
//!   is stored, the other decides again from it.
//!
//! The commands must therefore be run by a repository with a request index (every backend
//! of this crate has one): `repository.command(id).context(context)` with the context given.
//!
//! # Timeouts
//!
//! A timeout is stored with the instance, due at a time. A runner fires those that come due,
//! after restarts too: at start it reads every instance's record (a cost in the number of
//! instances, ended ones included), and again every [`rescan`](ProcessRunner::rescan) for
//! timeouts other processes scheduled. A timeout fires once: its firing is a cause like
//! another, recorded with the decision. A record this program cannot read (a state of
//! another shape) is logged and skipped, and the other instances go on.
//!
//! An instance remembers the last 1,024 causes it decided on (its events and the replies to
//! its commands). An event handed over again after more than that (a subscription reset to
//! replay its history) is decided on again; its commands then carry the request ids they
//! had, which the aggregates' request indexes answer as long as they keep them.
//!
//! The testing kit has a given/when/then for process managers:
//! [`crate::testing::process`]. `docs/guides/process-managers.md` builds the warehouse flow.

mod record;
mod runner;

pub use record::instance_type;
pub use runner::ProcessRunner;

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{EventContext, StoredEvent};
use crate::request::RequestId;
use crate::subscription::HandlerError;

/// The longest name of a process manager, in bytes: its request ids and its record's
/// aggregate type are made from it.
pub const MAX_PROCESS_NAME_LEN: usize = 100;

/// The most commands one cause may decide: a flow that decides without end is a bug, which
/// the runner stops at.
pub const MAX_COMMANDS: usize = 1_000;

/// A process manager: see the [module docs](self).
#[async_trait]
pub trait ProcessManager: Send + Sync + 'static {
    /// The state of one instance, stored with it (as JSON); a new instance starts from the
    /// default.
    type State: Default + Serialize + DeserializeOwned + Send + Sync;
    /// A command it issues, stored until it is sent (as JSON).
    type Command: Serialize + DeserializeOwned + std::fmt::Debug + Clone + PartialEq + Send + Sync;

    /// The instance `event` concerns, or `None` if none. The runner never gives it the
    /// library's system events ([`lifecycle::is_system_event`](crate::lifecycle::is_system_event)).
    fn route(&self, event: &StoredEvent) -> Option<Uuid>;

    /// Decides on an event routed to an instance in `state`.
    ///
    /// # Errors
    ///
    /// An error fails the subscription's batch, which is tried again (nothing of this
    /// decision is stored).
    fn handle(
        &self,
        state: &mut Self::State,
        event: &StoredEvent,
        decide: &mut Decisions<Self::Command>,
    ) -> std::result::Result<(), HandlerError>;

    /// Decides on the reply to one of its commands: a refusal to compensate for, say.
    /// Nothing by default.
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle).
    fn on_reply(
        &self,
        state: &mut Self::State,
        command: &Self::Command,
        reply: &Reply,
        decide: &mut Decisions<Self::Command>,
    ) -> std::result::Result<(), HandlerError> {
        let _ = (state, command, reply, decide);
        Ok(())
    }

    /// Decides on a timeout that came due. Nothing by default.
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle); the timeout stays, to fire again.
    fn on_timeout(
        &self,
        state: &mut Self::State,
        timeout: &str,
        decide: &mut Decisions<Self::Command>,
    ) -> std::result::Result<(), HandlerError> {
        let _ = (state, timeout, decide);
        Ok(())
    }

    /// Sends `command` to its aggregate with `context` (its request id, correlation and
    /// causation: give it to the repository's command,
    /// [`Command::context`](crate::repository::Command::context)); the reply.
    ///
    /// # Errors
    ///
    /// A failure to send (a store error): the command is sent again later, with the same
    /// request id. A refusal of the aggregate is no error but [`Reply::Refused`].
    async fn execute(
        &self,
        command: &Self::Command,
        context: EventContext,
    ) -> std::result::Result<Reply, HandlerError>;
}

/// The reply to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// The aggregate took the command (or had taken it, under the same request id).
    Done,
    /// The aggregate refused the command: its reason, as its error displayed it.
    Refused(String),
}

/// What an instance decided: commands to send, timeouts to schedule or cancel, and whether
/// it ended.
#[derive(Debug)]
pub struct Decisions<C> {
    pub(crate) commands: Vec<C>,
    pub(crate) schedule: Vec<(String, Duration)>,
    pub(crate) cancel: Vec<String>,
    pub(crate) complete: bool,
}

impl<C> Default for Decisions<C> {
    fn default() -> Self {
        Decisions {
            commands: Vec::new(),
            schedule: Vec::new(),
            cancel: Vec::new(),
            complete: false,
        }
    }
}

impl<C> Decisions<C> {
    /// Sends `command`, after the commands decided before it.
    pub fn send(&mut self, command: C) -> &mut Self {
        self.commands.push(command);
        self
    }

    /// Schedules the timeout `name` to come due `after` from now, replacing one of that name.
    pub fn schedule(&mut self, name: &str, after: Duration) -> &mut Self {
        self.cancel.retain(|n| n != name);
        self.schedule.push((name.to_owned(), after));
        self
    }

    /// Cancels the timeout `name`, if scheduled.
    pub fn cancel(&mut self, name: &str) -> &mut Self {
        self.schedule.retain(|(n, _)| n != name);
        self.cancel.push(name.to_owned());
        self
    }

    /// Ends the instance once its commands are sent: later events routed to it, and its
    /// timeouts, are ignored.
    pub fn complete(&mut self) -> &mut Self {
        self.complete = true;
        self
    }

    /// The commands decided, in order.
    pub fn commands(&self) -> &[C] {
        &self.commands
    }

    /// The timeouts scheduled, with when they come due from now.
    pub fn scheduled(&self) -> &[(String, Duration)] {
        &self.schedule
    }

    /// The timeouts cancelled.
    pub fn cancelled(&self) -> &[String] {
        &self.cancel
    }

    /// Whether the instance ends.
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

/// The request id of the `n`th command (from 1) decided on cause `cause` by process `name`:
/// `NAME/CAUSE/N`. A cause is an event (its id), the reply to a command (see
/// [`reply_cause`]) or a timeout (see [`timeout_cause`]).
pub fn request_id(name: &str, cause: Uuid, n: usize) -> Result<RequestId> {
    RequestId::new(&format!("{name}/{cause}/{n}"))
}

/// The cause id of the reply to the command with request id `request`.
pub fn reply_cause(request: &RequestId) -> Uuid {
    crate::multi_stream::name_id(CAUSES, format!("reply/{request}").as_bytes())
}

/// The cause id of the firing of timeout `timeout` of instance `instance`, as scheduled by
/// the decision on cause `scheduled_by` (a timeout scheduled again by a later cause fires as
/// another cause).
pub fn timeout_cause(instance: Uuid, timeout: &str, scheduled_by: Uuid) -> Uuid {
    crate::multi_stream::name_id(
        CAUSES,
        format!("timeout/{instance}/{timeout}/{scheduled_by}").as_bytes(),
    )
}

/// The namespace of derived cause ids.
const CAUSES: Uuid = Uuid::from_u128(0x6576_656e_7473_6f75_7263_6550_726f_6373);

/// Checks a process manager's name: that of its subscription, which also names its request
/// ids and its records.
pub(crate) fn validate_process_name(name: &str) -> Result<()> {
    if name.len() > MAX_PROCESS_NAME_LEN || name.contains('/') {
        return Err(Error::InvalidInput(format!(
            "a process manager's name has at most {MAX_PROCESS_NAME_LEN} bytes and no `/`: {name:?}"
        )));
    }
    Ok(())
}
