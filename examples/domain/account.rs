//! The seed's bank account: its events, its state and its commands, shared by the examples.

use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct AccountOpened {
    pub owner_name: String,
    pub initial_balance: f64,
}

#[event(aggregate = "Account")]
pub struct MoneyDeposited {
    pub amount: f64,
}

#[event(aggregate = "Account")]
pub struct MoneyWithdrawn {
    pub amount: f64,
}

#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(
    name = "Account",
    schema_version = 1,
    events(AccountOpened, MoneyDeposited, MoneyWithdrawn)
)]
pub struct Account {
    pub owner_name: String,
    pub balance: f64,
    pub transaction_count: u64,
}

impl Apply<AccountOpened> for Account {
    fn apply(&mut self, e: &AccountOpened) {
        self.owner_name = e.owner_name.clone();
        self.balance = e.initial_balance;
    }
}

impl Apply<MoneyDeposited> for Account {
    fn apply(&mut self, e: &MoneyDeposited) {
        self.balance += e.amount;
        self.transaction_count += 1;
    }
}

impl Apply<MoneyWithdrawn> for Account {
    fn apply(&mut self, e: &MoneyWithdrawn) {
        self.balance -= e.amount;
        self.transaction_count += 1;
    }
}

/// Why the account refused a command.
#[derive(Debug, PartialEq)]
#[allow(dead_code)] // each example uses some of the reasons
pub enum Refused {
    AlreadyOpen,
    NotOpen,
    NotPositive(f64),
    InsufficientFunds { balance: f64, requested: f64 },
}

/// The account's commands: each checks the state, then records what happened.
pub trait AccountCommands {
    fn open(&mut self, owner_name: &str, initial_balance: f64) -> Result<(), Refused>;
    fn deposit(&mut self, amount: f64) -> Result<(), Refused>;
    #[allow(dead_code)] // not every program that includes the domain withdraws
    fn withdraw(&mut self, amount: f64) -> Result<(), Refused>;
}

fn positive(amount: f64) -> Result<f64, Refused> {
    if amount.is_finite() && amount > 0.0 {
        Ok(amount)
    } else {
        Err(Refused::NotPositive(amount))
    }
}

impl AccountCommands for AggregateRoot<Account> {
    fn open(&mut self, owner_name: &str, initial_balance: f64) -> Result<(), Refused> {
        if self.version() > 0 {
            return Err(Refused::AlreadyOpen);
        }
        if !initial_balance.is_finite() || initial_balance < 0.0 {
            return Err(Refused::NotPositive(initial_balance));
        }
        self.record(AccountOpened {
            owner_name: owner_name.into(),
            initial_balance,
        });
        Ok(())
    }

    fn deposit(&mut self, amount: f64) -> Result<(), Refused> {
        if self.version() == 0 {
            return Err(Refused::NotOpen);
        }
        self.record(MoneyDeposited {
            amount: positive(amount)?,
        });
        Ok(())
    }

    fn withdraw(&mut self, amount: f64) -> Result<(), Refused> {
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

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::AlreadyOpen => f.write_str("the account is already open"),
            Refused::NotOpen => f.write_str("the account is not open"),
            Refused::NotPositive(amount) => write!(f, "{amount} is not a positive amount"),
            Refused::InsufficientFunds { balance, requested } => {
                write!(
                    f,
                    "insufficient funds: balance {balance:.2}, requested {requested:.2}"
                )
            }
        }
    }
}

impl std::error::Error for Refused {}
