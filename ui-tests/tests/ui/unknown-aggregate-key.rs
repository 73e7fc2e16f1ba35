use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct Deposited {
    pub amount: f64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Account", snapshot_every = 100, events(Deposited))]
pub struct Account {
    pub balance: f64,
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}

fn main() {}
