use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct Deposited {
    pub amount: f64,
}

fn v1_to_v2(v1: serde_json::Value) -> serde_json::Value {
    v1
}

// A schema 1 snapshot becomes schema 2, then nothing takes it to 3.
#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Account", schema_version = 3, migrate(1 => v1_to_v2), events(Deposited))]
pub struct Account {
    pub balance: f64,
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}

fn main() {}
