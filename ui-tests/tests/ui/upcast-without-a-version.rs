use eventsourcing_kit::prelude::*;

fn step(v: serde_json::Value) -> serde_json::Value {
    v
}

// Upcasts given, but the event is still at version 1.
#[event(aggregate = "Account", upcast(1 => json(step)))]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
