use eventsourcing_kit::prelude::*;

fn rename(v1: &mut serde_json::Value) {
    v1["amount"] = v1["value"].take();
}

#[event(aggregate = "Account", version = 2, upcast(1 => json(rename)))]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
