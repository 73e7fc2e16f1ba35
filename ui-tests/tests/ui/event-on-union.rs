use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub union Deposited {
    pub amount: f64,
    pub cents: u64,
}

fn main() {}
