use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct Deposited<T> {
    pub amount: T,
}

fn main() {}
