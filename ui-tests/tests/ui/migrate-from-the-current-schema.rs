use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct Deposited {
    pub amount: f64,
}

fn step(v: serde_json::Value) -> serde_json::Value {
    v
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Account", schema_version = 2, migrate(1 => step, 2 => step), events(Deposited))]
pub struct Account {
    pub balance: f64,
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}

fn main() {}
