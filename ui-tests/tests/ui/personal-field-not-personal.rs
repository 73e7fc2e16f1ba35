use eventsourcing_kit::prelude::*;

#[event(aggregate = "Customer")]
pub struct Registered {
    pub customer: String,
    #[personal(subject = customer)]
    pub email: String,
}

fn main() {}
