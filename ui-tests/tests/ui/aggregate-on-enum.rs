use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account")]
pub struct Deposited {
    pub amount: f64,
}

#[derive(Aggregate)]
#[aggregate(name = "Account", events(Deposited))]
pub enum Account {
    Open { balance: f64 },
    Closed,
}

fn main() {}
