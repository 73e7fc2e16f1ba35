use eventsourcing_kit::prelude::*;

#[event]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
