use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
fn deposited() {}

fn main() {}
