use eventsourcing_kit::prelude::*;

#[event(aggregate = "Customer")]
pub struct Registered {
    pub customer: String,
    #[personal(subject = client)]
    pub email: Personal<String>,
}

fn main() {}
