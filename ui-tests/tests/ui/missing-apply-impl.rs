use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct MoneyDeposited {
    pub amount: f64,
}

#[event(aggregate = "Account")]
pub struct MoneyWithdrawn {
    pub amount: f64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Account", events(MoneyDeposited, MoneyWithdrawn))]
pub struct Account {
    pub balance: f64,
}

impl Apply<MoneyDeposited> for Account {
    fn apply(&mut self, e: &MoneyDeposited) {
        self.balance += e.amount;
    }
}

fn main() {}
