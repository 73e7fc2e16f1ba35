use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct Deposited(pub f64);

fn main() {}
