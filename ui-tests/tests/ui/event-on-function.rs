use eventsource::prelude::*;

#[event(aggregate = "Account")]
fn deposited() {}

fn main() {}
