//! The customer of the personal data tests: a registration with an email and a name, each
//! personal to the customer.

use eventsourcing_kit::personal::Personal;
use eventsourcing_kit::prelude::*;

#[event(aggregate = "Customer")]
pub struct Registered {
    pub customer: String,
    #[personal(subject = customer)]
    pub email: Personal<String>,
    #[personal(subject = customer)]
    #[serde(rename = "fullName")]
    pub name: Personal<String>,
    pub plan: String,
}

#[event(aggregate = "Customer")]
pub struct EmailChanged {
    pub customer: String,
    #[personal(subject = customer)]
    pub email: Personal<String>,
}

/// A note of any shape, in the clear.
#[event(aggregate = "Customer")]
pub struct Noted {
    pub note: serde_json::Value,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Customer", events(Registered, EmailChanged, Noted))]
pub struct Customer {
    pub email: Personal<String>,
    pub name: Personal<String>,
    pub plan: String,
}

impl Apply<Registered> for Customer {
    fn apply(&mut self, e: &Registered) {
        self.email = e.email.clone();
        self.name = e.name.clone();
        self.plan = e.plan.clone();
    }
}

impl Apply<Noted> for Customer {
    fn apply(&mut self, _: &Noted) {}
}

impl Apply<EmailChanged> for Customer {
    fn apply(&mut self, e: &EmailChanged) {
        self.email = e.email.clone();
    }
}

pub const EMAIL: &str = "ada@example.com";
pub const NAME: &str = "Ada Lovelace";

pub fn registered(customer: &str) -> Registered {
    Registered {
        customer: customer.to_owned(),
        email: Personal::new(EMAIL.to_owned()),
        name: Personal::new(NAME.to_owned()),
        plan: "gold".to_owned(),
    }
}

/// A customer registered and saved through `repository`; its id.
pub async fn register(repository: &Repository<Customer>, customer: &str) -> Uuid {
    let id = Uuid::new_v4();
    let mut root = repository.create_new(id);
    root.record(registered(customer));
    repository.save(&mut root).await.unwrap();
    id
}
