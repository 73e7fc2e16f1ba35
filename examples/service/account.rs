//! The service's bank account: money in whole cents (`i64`), every sum checked before an event
//! records it, so that a balance can neither overflow nor go below zero.
//!
//! Version 1 of these events held amounts as floating-point units, as the seed's account in
//! `domain/account.rs` (the tutorial's) once did; the service's earlier databases hold them,
//! and they are upcast to cents as they are read. A stored amount that is not a number of
//! cents from 0 to `i64::MAX` cannot be upcast (`Error::Upcast`): nothing is guessed about
//! money.

use eventsourcing_kit::prelude::*;
use serde_json::Value;

/// An account opened with its first balance.
#[event(aggregate = "Account", version = 2, upcast(1 => json(opened_in_cents)))]
pub struct AccountOpened {
    pub owner_name: String,
    /// Cents, at least 0.
    pub initial_balance_cents: i64,
}

#[event(aggregate = "Account", version = 2, upcast(1 => json(amount_in_cents)))]
pub struct MoneyDeposited {
    /// Cents, more than 0.
    pub amount_cents: i64,
}

#[event(aggregate = "Account", version = 2, upcast(1 => json(amount_in_cents)))]
pub struct MoneyWithdrawn {
    /// Cents, more than 0 and at most the balance.
    pub amount_cents: i64,
}

/// Version 1 `{"owner_name": "Ada", "initial_balance": 100.5}` becomes
/// `{"owner_name": "Ada", "initial_balance_cents": 10050}`.
fn opened_in_cents(v1: Value) -> Result<Value, String> {
    in_cents(v1, "initial_balance", "initial_balance_cents")
}

/// Version 1 `{"amount": 2.5}` becomes `{"amount_cents": 250}`.
fn amount_in_cents(v1: Value) -> Result<Value, String> {
    in_cents(v1, "amount", "amount_cents")
}

/// Replaces the field `units` of a version 1 payload, a number of units, with `cents`, the
/// same amount in cents, rounded to the nearest cent. Version 1 never recorded an amount
/// below 0.
pub fn in_cents(mut payload: Value, units: &str, cents: &str) -> Result<Value, String> {
    let fields = payload.as_object_mut().ok_or("the payload is not an object")?;
    let amount = fields
        .remove(units)
        .and_then(|amount| amount.as_f64())
        .ok_or_else(|| format!("no number `{units}`"))?;
    // 2^63: `i64::MAX as f64` rounds up to it, so the bound is exclusive.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let rounded = (amount * 100.0).round();
    if !(0.0..LIMIT).contains(&rounded) {
        return Err(format!(
            "`{units}` {amount} is not a number of cents from 0 to {}",
            i64::MAX
        ));
    }
    fields.insert(cents.into(), (rounded as i64).into());
    Ok(payload)
}

/// Schema version 2: the balance in cents. A snapshot of version 1 (a floating-point
/// balance) is not migrated but replayed past, so the balance is the exact sum of the
/// upcast events.
#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(
    name = "Account",
    schema_version = 2,
    events(AccountOpened, MoneyDeposited, MoneyWithdrawn)
)]
pub struct Account {
    pub owner_name: String,
    pub balance_cents: i64,
    pub transaction_count: u64,
}

// The commands check every sum before they record an event, so the additions below cannot
// overflow for events this service decided. Only a history upcast from version 1 could (the
// floating-point account let a balance grow without bound): it stops at the bound instead of
// wrapping around to a negative balance.

impl Apply<AccountOpened> for Account {
    fn apply(&mut self, e: &AccountOpened) {
        self.owner_name = e.owner_name.clone();
        self.balance_cents = e.initial_balance_cents;
    }
}

impl Apply<MoneyDeposited> for Account {
    fn apply(&mut self, e: &MoneyDeposited) {
        self.balance_cents = self.balance_cents.saturating_add(e.amount_cents);
        self.transaction_count += 1;
    }
}

impl Apply<MoneyWithdrawn> for Account {
    fn apply(&mut self, e: &MoneyWithdrawn) {
        self.balance_cents = self.balance_cents.saturating_sub(e.amount_cents);
        self.transaction_count += 1;
    }
}

/// Why the account refused a command.
#[derive(Debug, PartialEq)]
pub enum Refused {
    AlreadyOpen,
    NotOpen,
    /// An opening balance below 0 cents.
    Negative(i64),
    /// An amount of 0 cents or less.
    NotPositive(i64),
    /// A withdrawal of more than the balance.
    InsufficientFunds {
        balance_cents: i64,
        requested_cents: i64,
    },
    /// A deposit that would take the balance past `i64::MAX` cents.
    BalanceTooLarge {
        balance_cents: i64,
        deposit_cents: i64,
    },
}

impl Refused {
    /// Whether the request itself is at fault (an amount no account takes), rather than the
    /// account's state (not open, too little money).
    pub fn is_invalid_amount(&self) -> bool {
        matches!(
            self,
            Refused::Negative(_) | Refused::NotPositive(_) | Refused::BalanceTooLarge { .. }
        )
    }
}

/// The account's commands: each checks the state and the arithmetic, then records what
/// happened.
pub trait AccountCommands {
    fn open(&mut self, owner_name: &str, initial_balance_cents: i64) -> Result<(), Refused>;
    fn deposit(&mut self, amount_cents: i64) -> Result<(), Refused>;
    fn withdraw(&mut self, amount_cents: i64) -> Result<(), Refused>;
}

fn positive(amount_cents: i64) -> Result<i64, Refused> {
    if amount_cents > 0 {
        Ok(amount_cents)
    } else {
        Err(Refused::NotPositive(amount_cents))
    }
}

fn opened(account: &AggregateRoot<Account>) -> Result<(), Refused> {
    if account.version() == 0 {
        return Err(Refused::NotOpen);
    }
    Ok(())
}

impl AccountCommands for AggregateRoot<Account> {
    fn open(&mut self, owner_name: &str, initial_balance_cents: i64) -> Result<(), Refused> {
        if self.version() > 0 {
            return Err(Refused::AlreadyOpen);
        }
        if initial_balance_cents < 0 {
            return Err(Refused::Negative(initial_balance_cents));
        }
        self.record(AccountOpened {
            owner_name: owner_name.into(),
            initial_balance_cents,
        });
        Ok(())
    }

    fn deposit(&mut self, amount_cents: i64) -> Result<(), Refused> {
        opened(self)?;
        let amount_cents = positive(amount_cents)?;
        let balance_cents = self.state().balance_cents;
        if balance_cents.checked_add(amount_cents).is_none() {
            return Err(Refused::BalanceTooLarge {
                balance_cents,
                deposit_cents: amount_cents,
            });
        }
        self.record(MoneyDeposited { amount_cents });
        Ok(())
    }

    fn withdraw(&mut self, amount_cents: i64) -> Result<(), Refused> {
        opened(self)?;
        let amount_cents = positive(amount_cents)?;
        let balance_cents = self.state().balance_cents;
        if amount_cents > balance_cents {
            return Err(Refused::InsufficientFunds {
                balance_cents,
                requested_cents: amount_cents,
            });
        }
        self.record(MoneyWithdrawn { amount_cents });
        Ok(())
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::AlreadyOpen => f.write_str("the account is already open"),
            Refused::NotOpen => f.write_str("the account is not open"),
            Refused::Negative(cents) => write!(f, "an opening balance of {cents} cents is below 0"),
            Refused::NotPositive(cents) => write!(f, "{cents} cents is not a positive amount"),
            Refused::InsufficientFunds {
                balance_cents,
                requested_cents,
            } => write!(
                f,
                "insufficient funds: balance {balance_cents} cents, requested {requested_cents} cents"
            ),
            Refused::BalanceTooLarge {
                balance_cents,
                deposit_cents,
            } => write!(
                f,
                "a deposit of {deposit_cents} cents would take the balance of {balance_cents} cents \
                 past the largest an account holds, {} cents",
                i64::MAX
            ),
        }
    }
}

impl std::error::Error for Refused {}
