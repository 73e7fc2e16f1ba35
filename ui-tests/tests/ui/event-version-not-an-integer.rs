use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", version = "2")]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
