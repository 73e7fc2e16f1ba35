use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", schema = 2)]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
