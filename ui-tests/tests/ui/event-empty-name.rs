use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", name = "")]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
