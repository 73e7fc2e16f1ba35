use eventsourcing_kit::prelude::*;

#[event(aggregate = "Customer")]
pub struct Registered {
    pub customer: String,
    pub email: Personal<String>,
}

fn main() {}
