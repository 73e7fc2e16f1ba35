//! The seed's bank account: its events, its state and its commands, shared by the examples.
//!
//! Money is kept as an `i64` count of cents, the minor units of the currency, never as a
//! floating-point number: 1234 is 12.34. An amount deposited or withdrawn must be positive,
//! an overdraft (a withdrawal of more than the balance) is refused, and so is a deposit that
//! would take the balance past `i64::MAX` cents: the commands check every sum before an event
//! records it. [`Units`] writes an amount of cents as units with two decimals.

use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct AccountOpened {
    pub owner_name: String,
    /// The opening balance in cents (minor units of the currency), at least 0.
    pub initial_balance: i64,
}

#[event(aggregate = "Account")]
pub struct MoneyDeposited {
    /// In cents (minor units of the currency), more than 0.
    pub amount: i64,
}

#[event(aggregate = "Account")]
pub struct MoneyWithdrawn {
    /// In cents (minor units of the currency), more than 0 and at most the balance.
    pub amount: i64,
}

#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(
    name = "Account",
    schema_version = 1,
    events(AccountOpened, MoneyDeposited, MoneyWithdrawn)
)]
pub struct Account {
    pub owner_name: String,
    /// In cents (minor units of the currency).
    pub balance: i64,
    pub transaction_count: u64,
}

// The commands check every sum before they record an event, so the additions below cannot
// overflow for events the commands decided. An event recorded or stored past them could: the
// balance stops at the bound instead of wrapping around (or panicking).

impl Apply<AccountOpened> for Account {
    fn apply(&mut self, e: &AccountOpened) {
        self.owner_name = e.owner_name.clone();
        self.balance = e.initial_balance;
    }
}

impl Apply<MoneyDeposited> for Account {
    fn apply(&mut self, e: &MoneyDeposited) {
        self.balance = self.balance.saturating_add(e.amount);
        self.transaction_count += 1;
    }
}

impl Apply<MoneyWithdrawn> for Account {
    fn apply(&mut self, e: &MoneyWithdrawn) {
        self.balance = self.balance.saturating_sub(e.amount);
        self.transaction_count += 1;
    }
}

/// Why the account refused a command. Every amount is in cents.
#[derive(Debug, PartialEq)]
#[allow(dead_code)] // each example uses some of the reasons
pub enum Refused {
    AlreadyOpen,
    NotOpen,
    /// An amount of 0 cents or less (an opening balance below 0).
    NotPositive(i64),
    /// A withdrawal of more than the balance: an overdraft.
    InsufficientFunds {
        balance: i64,
        requested: i64,
    },
    /// A deposit that would take the balance past `i64::MAX` cents.
    TooLarge {
        balance: i64,
        deposit: i64,
    },
}

/// The account's commands: each checks the state and the arithmetic, then records what
/// happened. Every amount is in cents.
pub trait AccountCommands {
    fn open(&mut self, owner_name: &str, initial_balance: i64) -> Result<(), Refused>;
    fn deposit(&mut self, amount: i64) -> Result<(), Refused>;
    #[allow(dead_code)] // not every program that includes the domain withdraws
    fn withdraw(&mut self, amount: i64) -> Result<(), Refused>;
}

fn positive(amount: i64) -> Result<i64, Refused> {
    if amount > 0 {
        Ok(amount)
    } else {
        Err(Refused::NotPositive(amount))
    }
}

impl AccountCommands for AggregateRoot<Account> {
    fn open(&mut self, owner_name: &str, initial_balance: i64) -> Result<(), Refused> {
        if self.version() > 0 {
            return Err(Refused::AlreadyOpen);
        }
        if initial_balance < 0 {
            return Err(Refused::NotPositive(initial_balance));
        }
        self.record(AccountOpened {
            owner_name: owner_name.into(),
            initial_balance,
        });
        Ok(())
    }

    fn deposit(&mut self, amount: i64) -> Result<(), Refused> {
        if self.version() == 0 {
            return Err(Refused::NotOpen);
        }
        let amount = positive(amount)?;
        let balance = self.state().balance;
        if balance.checked_add(amount).is_none() {
            return Err(Refused::TooLarge {
                balance,
                deposit: amount,
            });
        }
        self.record(MoneyDeposited { amount });
        Ok(())
    }

    fn withdraw(&mut self, amount: i64) -> Result<(), Refused> {
        if self.version() == 0 {
            return Err(Refused::NotOpen);
        }
        let amount = positive(amount)?;
        let balance = self.state().balance;
        if amount > balance {
            return Err(Refused::InsufficientFunds {
                balance,
                requested: amount,
            });
        }
        self.record(MoneyWithdrawn { amount });
        Ok(())
    }
}

/// An amount of cents written as units with two decimals: `Units(1234)` is `12.34`,
/// `Units(-5)` is `-0.05`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // not every program that includes the domain prints an amount
pub struct Units(pub i64);

impl std::fmt::Display for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `unsigned_abs`: the magnitude of `i64::MIN` is no i64.
        let (sign, cents) = (if self.0 < 0 { "-" } else { "" }, self.0.unsigned_abs());
        write!(f, "{sign}{}.{:02}", cents / 100, cents % 100)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::AlreadyOpen => f.write_str("the account is already open"),
            Refused::NotOpen => f.write_str("the account is not open"),
            Refused::NotPositive(amount) => write!(f, "{} is not a positive amount", Units(*amount)),
            Refused::InsufficientFunds { balance, requested } => write!(
                f,
                "insufficient funds: balance {}, requested {}",
                Units(*balance),
                Units(*requested)
            ),
            Refused::TooLarge { balance, deposit } => write!(
                f,
                "a deposit of {} would take the balance of {} past the largest an account holds, {}",
                Units(*deposit),
                Units(*balance),
                Units(i64::MAX)
            ),
        }
    }
}

impl std::error::Error for Refused {}
