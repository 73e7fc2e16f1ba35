use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub enum Deposited {
    Cash { amount: f64 },
    Card { amount: f64 },
}

fn main() {}
