use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", name = "Money\tDeposited")]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
