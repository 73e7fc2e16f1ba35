use eventsourcing_kit::prelude::*;

fn v2_to_v3(v2: serde_json::Value) -> serde_json::Value {
    v2
}

// Version 3 reads version 2, but nothing says how version 1 becomes version 2.
#[event(aggregate = "Account", version = 3, upcast(2 => json(v2_to_v3)))]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
