use eventsourcing_kit::prelude::*;

#[event(aggregate = "Customer")]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub customer_id: String,
    #[personal(subject = customer_id)]
    pub email_address: Personal<String>,
}

fn main() {}
