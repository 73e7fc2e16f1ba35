use eventsourcing_kit::prelude::*;

#[derive(Deserialize)]
pub struct DepositedV1 {
    pub value: f64,
}

// No `From<DepositedV1> for Deposited`.
#[event(aggregate = "Account", version = 2, upcast(1 => DepositedV1))]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
