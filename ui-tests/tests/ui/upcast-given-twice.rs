use eventsourcing_kit::prelude::*;

fn step(v: serde_json::Value) -> serde_json::Value {
    v
}

#[event(aggregate = "Account", version = 2, upcast(1 => json(step), 1 => json(step)))]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
