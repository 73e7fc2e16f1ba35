use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", aggregate = "Ledger")]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
