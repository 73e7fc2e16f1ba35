//! Given past events, when a command, then the events it records, its refusal, or the state:
//! domain logic tested without stores or a runtime.
//!
//! ```
//! # use eventsourcing_kit::prelude::*;
//! use eventsourcing_kit::testing::given;
//! # #[event(aggregate = "Account")] pub struct AccountOpened { pub initial_balance: i64 }
//! # #[event(aggregate = "Account")] pub struct MoneyWithdrawn { pub amount: i64 }
//! # #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
//! # #[aggregate(name = "Account", events(AccountOpened, MoneyWithdrawn))]
//! # pub struct Account { pub balance: i64 }
//! # impl Apply<AccountOpened> for Account { fn apply(&mut self, e: &AccountOpened) { self.balance = e.initial_balance } }
//! # impl Apply<MoneyWithdrawn> for Account { fn apply(&mut self, e: &MoneyWithdrawn) { self.balance -= e.amount } }
//! // Amounts in cents.
//! fn withdraw(account: &mut AggregateRoot<Account>, amount: i64) -> Result<(), String> {
//!     if amount > account.state().balance {
//!         return Err(format!("insufficient funds for {amount} cents"));
//!     }
//!     account.record(MoneyWithdrawn { amount });
//!     Ok(())
//! }
//!
//! given::<Account>([AccountOpened { initial_balance: 10_000 }.into()])
//!     .when(|account| withdraw(account, 3_000))
//!     .then([MoneyWithdrawn { amount: 3_000 }.into()])
//!     .then_state(|account| assert_eq!(account.balance, 7_000));
//!
//! given::<Account>([AccountOpened { initial_balance: 10_000 }.into()])
//!     .when(|account| withdraw(account, 50_000))
//!     .then_refused_with("insufficient funds for 50000 cents".to_owned());
//! ```
//!
//! Events are compared by their type and their JSON, so an event enum needs no `PartialEq`;
//! a failure prints the expected and the recorded events, or the refusal, one per line.

use std::fmt::{Debug, Write};

use uuid::Uuid;

use crate::aggregate::{Aggregate, AggregateEvent};
use crate::root::AggregateRoot;

/// An aggregate with its past events applied, ready for a command.
pub struct Given<A: Aggregate> {
    root: AggregateRoot<A>,
}

impl<A: Aggregate> Debug for Given<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Given")
            .field("aggregate_type", &A::TYPE_NAME)
            .field("version", &self.root.version())
            .finish_non_exhaustive()
    }
}

/// The aggregate with its past events applied: each is applied as if loaded from a store.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut root = AggregateRoot::new(Uuid::new_v4());
    for event in events {
        root.apply_stored(&event, Uuid::new_v4());
    }
    Given { root }
}

impl<A: Aggregate> Given<A> {
    /// Runs the command: a decision on the aggregate, the same closure a
    /// [`Repository::command`](crate::Repository::command) runs, or a call of the program's
    /// own command methods.
    pub fn when<E: Debug>(
        mut self,
        command: impl FnOnce(&mut AggregateRoot<A>) -> Result<(), E>,
    ) -> When<A, E> {
        let outcome = command(&mut self.root);
        When {
            root: self.root,
            outcome,
        }
    }
}

/// What a command did, to check.
pub struct When<A: Aggregate, E> {
    root: AggregateRoot<A>,
    outcome: Result<(), E>,
}

impl<A: Aggregate, E: Debug> Debug for When<A, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("When")
            .field("aggregate_type", &A::TYPE_NAME)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

// Each check asserts when called; it returns the outcome only to chain the next one.
#[allow(clippy::return_self_not_must_use)]
impl<A: Aggregate, E: Debug> When<A, E> {
    /// Checks that the command succeeded and recorded exactly these events, in order.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> Self {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let recorded: Vec<&A::Event> = self.root.pending_events().iter().map(|p| &p.event).collect();
        let same = self.outcome.is_ok()
            && expected.len() == recorded.len()
            && expected.iter().zip(&recorded).all(|(e, r)| key(e) == key(*r));
        if !same {
            panic!(
                "the command did not record what was expected\nexpected:\n{}{}",
                list(expected.iter()),
                self.describe()
            );
        }
        self
    }

    /// Checks that the command succeeded and recorded nothing.
    #[track_caller]
    pub fn then_nothing(self) -> Self {
        self.then([])
    }

    /// Checks that the command was refused with this error and recorded nothing.
    #[track_caller]
    pub fn then_refused_with(self, expected: E) -> Self
    where
        E: PartialEq,
    {
        let refused = matches!(&self.outcome, Err(e) if *e == expected);
        if !refused || self.root.has_pending_events() {
            panic!(
                "the command was not refused as expected\nexpected the refusal:\n  {expected:?}\n{}",
                self.describe()
            );
        }
        self
    }

    /// Checks that the command was refused, whatever the error, and recorded nothing.
    #[track_caller]
    pub fn then_refused(self) -> Self {
        if self.outcome.is_ok() || self.root.has_pending_events() {
            panic!("the command was not refused\n{}", self.describe());
        }
        self
    }

    /// Checks the state after the command with `check` (which asserts what it wants).
    pub fn then_state(self, check: impl FnOnce(&A)) -> Self {
        check(self.root.state());
        self
    }

    /// The aggregate after the command, with its recorded events pending.
    pub fn into_root(self) -> AggregateRoot<A> {
        self.root
    }

    fn describe(&self) -> String {
        let recorded = self.root.pending_events().iter().map(|p| &p.event);
        match &self.outcome {
            Ok(()) => format!("recorded:\n{}", list(recorded)),
            Err(e) => format!("refused with:\n  {e:?}\nrecorded:\n{}", list(recorded)),
        }
    }
}

/// What identifies an event for comparison: its type and its JSON.
fn key<E: AggregateEvent>(event: &E) -> (&'static str, String) {
    let json = event
        .to_json()
        .unwrap_or_else(|e| format!("<cannot encode: {e}>"));
    (event.event_type(), json)
}

fn list<'e, E: AggregateEvent + 'e>(events: impl Iterator<Item = &'e E>) -> String {
    let mut out = String::new();
    for (n, event) in events.enumerate() {
        let (event_type, json) = key(event);
        let _ = writeln!(out, "  {}. {event_type} {json}", n + 1);
    }
    if out.is_empty() {
        out.push_str("  (none)\n");
    }
    out
}
