use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", crate = "not a path!")]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
