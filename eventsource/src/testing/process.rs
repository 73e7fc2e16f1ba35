//! Given/when/then for [process managers](crate::process): given these events, when this
//! one (or this timeout), expect these commands, with their request ids, without stores or a
//! runtime.
//!
//! The kit decides as a [`ProcessRunner`](crate::process::ProcessRunner) does: each event
//! routed to its instance, each command answered (with [`Reply::Done`] unless
//! [`replying`](Given::replying) says otherwise) and its reply decided on, request ids
//! derived from the causes as the runner derives them. `given` events are decided on and
//! their commands answered; `when` shows what one more cause decides.
//!
//! ```
//! use eventsourcing_kit::prelude::*;
//! use eventsourcing_kit::process::{Decisions, ProcessManager, Reply};
//! use eventsourcing_kit::subscription::HandlerError;
//! use eventsourcing_kit::testing::process::{event, given};
//!
//! #[event(aggregate = "Order")]
//! pub struct Placed { pub items: u32 }
//! # #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
//! # #[aggregate(name = "Order", events(Placed))]
//! # pub struct Order;
//! # impl Apply<Placed> for Order { fn apply(&mut self, _: &Placed) {} }
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! enum Command { Reserve { order: Uuid, items: u32 } }
//!
//! struct Fulfilment;
//!
//! #[eventsourcing_kit::async_trait]
//! impl ProcessManager for Fulfilment {
//!     type State = u32;
//!     type Command = Command;
//!     fn route(&self, event: &StoredEvent) -> Option<Uuid> { Some(event.aggregate_id) }
//!     fn handle(&self, reserved: &mut u32, event: &StoredEvent, decide: &mut Decisions<Command>) -> Result<(), HandlerError> {
//!         let OrderEvent::Placed(placed) = OrderEvent::decode(&event.event_type, event.event_version, &event.payload)?;
//!         decide.send(Command::Reserve { order: event.aggregate_id, items: placed.items });
//!         Ok(())
//!     }
//!     async fn execute(&self, _: &Command, _: EventContext) -> Result<Reply, HandlerError> { Ok(Reply::Done) }
//! }
//!
//! let order = Uuid::new_v4();
//! let placed = event::<Order>(order, 1, Placed { items: 3 });
//! given("fulfilment", Fulfilment, [])
//!     .when(placed.clone())
//!     .then_commands([Command::Reserve { order, items: 3 }])
//!     .then_request_ids([format!("fulfilment/{}/1", placed.event_id)]);
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;

use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::event::{EventEnvelope, StoredEvent};
use crate::process::{
    reply_cause, request_id, timeout_cause, Decisions, ProcessManager, Reply, MAX_COMMANDS,
};
use crate::request::RequestId;

/// A stored event of aggregate `A`: `event` at `version` of aggregate `aggregate_id`, with a
/// new event id (position 0: the kit gives positions in the order it decides).
///
/// # Panics
///
/// If the event cannot be encoded (a non-finite float).
pub fn event<A: Aggregate>(aggregate_id: Uuid, version: u64, event: impl Into<A::Event>) -> StoredEvent {
    let envelope = EventEnvelope::new(aggregate_id, A::TYPE_NAME, version, &event.into())
        .unwrap_or_else(|e| panic!("cannot encode the event: {e}"));
    StoredEvent {
        position: 0,
        envelope,
    }
}

type Replier<C> = Box<dyn Fn(&C) -> Reply>;

/// The state of process manager `name` after `events`: see the [module docs](self).
///
/// # Panics
///
/// If `name` cannot name a process manager (see
/// [`MAX_PROCESS_NAME_LEN`](crate::process::MAX_PROCESS_NAME_LEN)), or the process manager's
/// code fails on one of the events.
pub fn given<P: ProcessManager>(
    name: &str,
    manager: P,
    events: impl IntoIterator<Item = StoredEvent>,
) -> Given<P> {
    crate::process::validate_process_name(name).unwrap_or_else(|e| panic!("{e}"));
    let mut given = Given {
        name: name.to_owned(),
        manager,
        instances: HashMap::new(),
        replier: Box::new(|_| Reply::Done),
        position: 0,
    };
    for event in events {
        given.decide_event(event);
    }
    given
}

/// Process instances after their `given` events.
pub struct Given<P: ProcessManager> {
    name: String,
    manager: P,
    instances: HashMap<Uuid, Instance<P::State>>,
    replier: Replier<P::Command>,
    position: u64,
}

impl<P: ProcessManager> Debug for Given<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Given")
            .field("name", &self.name)
            .field("instances", &self.instances.len())
            .finish_non_exhaustive()
    }
}

struct Instance<S> {
    state: S,
    /// The timeouts scheduled, each with the cause that scheduled it.
    timeouts: Vec<(String, Uuid)>,
    done: bool,
}

impl<P: ProcessManager> Given<P> {
    /// Answers each command with what `reply` gives, from now on (by default every command
    /// is [`Reply::Done`]).
    #[must_use]
    pub fn replying(mut self, reply: impl Fn(&P::Command) -> Reply + 'static) -> Self {
        self.replier = Box::new(reply);
        self
    }

    /// What the process decides on `event`.
    ///
    /// # Panics
    ///
    /// If the process manager's code fails.
    pub fn when(mut self, event: StoredEvent) -> Then<P> {
        let (instance, decided) = self.decide_event(event);
        self.then(instance, decided)
    }

    /// What instance `instance` decides when its timeout `name` comes due.
    ///
    /// # Panics
    ///
    /// If the instance has no such timeout, or the process manager's code fails.
    pub fn when_timeout(mut self, instance: Uuid, name: &str) -> Then<P> {
        let manager = &self.manager;
        let entry = self
            .instances
            .get_mut(&instance)
            .unwrap_or_else(|| panic!("instance {instance} decided on no event"));
        let Some(at) = entry.timeouts.iter().position(|(t, _)| t == name) else {
            panic!("instance {instance} has no timeout `{name}` scheduled");
        };
        let (_, scheduled_by) = entry.timeouts.remove(at);
        let mut decisions = Decisions::default();
        manager
            .on_timeout(&mut entry.state, name, &mut decisions)
            .unwrap_or_else(|e| panic!("the timeout failed: {e}"));
        let cause = timeout_cause(instance, name, scheduled_by);
        let decided = self.settle(instance, cause, decisions);
        self.then(Some(instance), decided)
    }

    fn then(self, instance: Option<Uuid>, decided: Decided<P::Command>) -> Then<P> {
        Then {
            given: self,
            instance,
            decided,
        }
    }

    /// Decides on `event` and answers its commands; the instance and what it decided.
    fn decide_event(&mut self, mut event: StoredEvent) -> (Option<Uuid>, Decided<P::Command>) {
        self.position += 1;
        event.position = self.position;
        // As the runner: the library's system events reach no process manager.
        if crate::lifecycle::is_system_event(&event.event_type) {
            return (None, Decided::default());
        }
        let Some(instance) = self.manager.route(&event) else {
            return (None, Decided::default());
        };
        let entry = self.instances.entry(instance).or_insert_with(|| Instance {
            state: P::State::default(),
            timeouts: Vec::new(),
            done: false,
        });
        if entry.done {
            return (Some(instance), Decided::default());
        }
        let mut decisions = Decisions::default();
        self.manager
            .handle(&mut entry.state, &event, &mut decisions)
            .unwrap_or_else(|e| panic!("the process failed on event {}: {e}", event.event_id));
        let decided = self.settle(instance, event.event_id, decisions);
        (Some(instance), decided)
    }

    /// Records `decisions` on `cause`, then answers each command and decides on its reply, as
    /// the runner does.
    fn settle(
        &mut self,
        instance: Uuid,
        cause: Uuid,
        decisions: Decisions<P::Command>,
    ) -> Decided<P::Command> {
        let mut decided = Decided::default();
        let mut queue = VecDeque::new();
        self.record(instance, cause, decisions, &mut decided, &mut queue);
        while let Some((command, request)) = queue.pop_front() {
            let reply = (self.replier)(&command);
            let mut decisions = Decisions::default();
            let entry = self.instances.get_mut(&instance).expect("recorded above");
            self.manager
                .on_reply(&mut entry.state, &command, &reply, &mut decisions)
                .unwrap_or_else(|e| panic!("the process failed on a reply: {e}"));
            self.record(
                instance,
                reply_cause(&request),
                decisions,
                &mut decided,
                &mut queue,
            );
        }
        decided
    }

    fn record(
        &mut self,
        instance: Uuid,
        cause: Uuid,
        decisions: Decisions<P::Command>,
        decided: &mut Decided<P::Command>,
        queue: &mut VecDeque<(P::Command, RequestId)>,
    ) {
        let entry = self.instances.get_mut(&instance).expect("an instance decided");
        assert!(
            decisions.commands.len() <= MAX_COMMANDS,
            "the process decided {} commands on one cause, above the runner's limit of {MAX_COMMANDS}",
            decisions.commands.len()
        );
        for (i, command) in decisions.commands.into_iter().enumerate() {
            let request = request_id(&self.name, cause, i + 1).expect("a valid process name");
            decided.commands.push((command.clone(), request.clone()));
            queue.push_back((command, request));
        }
        for name in decisions.cancel {
            entry.timeouts.retain(|(t, _)| *t != name);
            decided.cancelled.push(name);
        }
        for (name, _) in decisions.schedule {
            entry.timeouts.retain(|(t, _)| *t != name);
            entry.timeouts.push((name.clone(), cause));
            decided.scheduled.push(name);
        }
        if decisions.complete {
            entry.done = true;
            entry.timeouts.clear();
            decided.completed = true;
        }
    }
}

/// What one cause decided, replies included.
struct Decided<C> {
    commands: Vec<(C, RequestId)>,
    scheduled: Vec<String>,
    cancelled: Vec<String>,
    completed: bool,
}

impl<C> Default for Decided<C> {
    fn default() -> Self {
        Decided {
            commands: Vec::new(),
            scheduled: Vec::new(),
            cancelled: Vec::new(),
            completed: false,
        }
    }
}

/// What the `when` decided, to check: see the [module docs](self).
pub struct Then<P: ProcessManager> {
    given: Given<P>,
    instance: Option<Uuid>,
    decided: Decided<P::Command>,
}

impl<P: ProcessManager> Debug for Then<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Then")
            .field("instance", &self.instance)
            .field("commands", &self.decided.commands)
            .field("scheduled", &self.decided.scheduled)
            .field("cancelled", &self.decided.cancelled)
            .field("completed", &self.decided.completed)
            .finish_non_exhaustive()
    }
}

#[allow(clippy::return_self_not_must_use)] // chained checks, whose value is the check
impl<P: ProcessManager> Then<P> {
    /// Asserts the commands sent, in order, those decided on replies included.
    ///
    /// # Panics
    ///
    /// If they differ.
    pub fn then_commands(self, expected: impl IntoIterator<Item = P::Command>) -> Self {
        let expected: Vec<P::Command> = expected.into_iter().collect();
        let sent: Vec<P::Command> = self.decided.commands.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(sent, expected, "the commands sent");
        self
    }

    /// Asserts the request ids the commands are sent with, in order.
    ///
    /// # Panics
    ///
    /// If they differ.
    pub fn then_request_ids<S: AsRef<str>>(self, expected: impl IntoIterator<Item = S>) -> Self {
        let sent: Vec<&str> = self.decided.commands.iter().map(|(_, r)| r.as_str()).collect();
        let expected: Vec<String> = expected.into_iter().map(|s| s.as_ref().to_owned()).collect();
        assert_eq!(sent, expected, "the request ids of the commands sent");
        self
    }

    /// Asserts that nothing was sent.
    ///
    /// # Panics
    ///
    /// If a command was.
    pub fn then_nothing(self) -> Self {
        assert!(
            self.decided.commands.is_empty(),
            "expected no command, got {:?}",
            self.decided.commands
        );
        self
    }

    /// Asserts the timeouts scheduled and cancelled, in order.
    ///
    /// # Panics
    ///
    /// If they differ.
    pub fn then_timeouts(self, scheduled: &[&str], cancelled: &[&str]) -> Self {
        assert_eq!(self.decided.scheduled, scheduled, "the timeouts scheduled");
        assert_eq!(self.decided.cancelled, cancelled, "the timeouts cancelled");
        self
    }

    /// Asserts whether the instance ended.
    ///
    /// # Panics
    ///
    /// If it did not as expected.
    pub fn then_completed(self, completed: bool) -> Self {
        assert_eq!(self.decided.completed, completed, "whether the instance ended");
        self
    }

    /// Checks the instance's state.
    ///
    /// # Panics
    ///
    /// If the cause was routed to no instance, or as `check` does.
    pub fn then_state(self, check: impl FnOnce(&P::State)) -> Self {
        let instance = self.instance.expect("the cause was routed to no instance");
        check(&self.given.instances[&instance].state);
        self
    }

    /// The commands sent, with their request ids.
    pub fn commands(&self) -> &[(P::Command, RequestId)] {
        &self.decided.commands
    }

    /// Goes on: the instances as they are now, for another `when`.
    pub fn and(self) -> Given<P> {
        self.given
    }
}
