use eventsourcing_kit::prelude::*;

#[derive(Deserialize)]
pub struct DepositedV1 {
    pub value: f64,
}

fn v2_to_v3(v2: serde_json::Value) -> serde_json::Value {
    v2
}

// Version 1 is a type, so it converts into version 2's type: but version 2 has none.
#[event(aggregate = "Account", version = 3, upcast(1 => DepositedV1, 2 => json(v2_to_v3)))]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
