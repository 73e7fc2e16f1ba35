use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", version = 0, colour = "blue")]
pub struct Deposited {
    pub amount: f64,
}

#[event(aggregate = "Ledger")]
pub struct Posted {
    pub amount: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Withdrawn {
    pub amount: f64,
}

#[event(aggregate = "Account")]
pub struct Closed;

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(
    name = "Account",
    schema_version = 0,
    snapshots = true,
    events(Deposited, Posted, Withdrawn, Closed, Deposited)
)]
pub struct Account {
    pub balance: f64,
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}

impl Apply<Posted> for Account {
    fn apply(&mut self, e: &Posted) {
        self.balance += e.amount;
    }
}

impl Apply<Withdrawn> for Account {
    fn apply(&mut self, e: &Withdrawn) {
        self.balance -= e.amount;
    }
}

fn main() {}
