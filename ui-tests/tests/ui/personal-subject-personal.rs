use eventsourcing_kit::prelude::*;

#[event(aggregate = "Customer")]
pub struct Registered {
    #[personal(subject = email)]
    pub customer: Personal<String>,
    #[personal(subject = customer)]
    pub email: Personal<String>,
}

fn main() {}
