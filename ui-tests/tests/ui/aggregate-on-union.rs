use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct Deposited {
    pub amount: f64,
}

#[derive(Aggregate)]
#[aggregate(name = "Account", events(Deposited))]
pub union Account {
    pub balance: f64,
    pub cents: u64,
}

fn main() {}
