use eventsourcing_kit::prelude::*;

// Bumped to version 2 without saying how stored version 1 events load.
#[event(aggregate = "Account", version = 2)]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
