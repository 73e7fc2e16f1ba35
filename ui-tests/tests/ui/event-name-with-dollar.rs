use eventsourcing_kit::prelude::*;

#[event(aggregate = "Order", name = "$StreamClosed")]
pub struct Closed {}

fn main() {}
