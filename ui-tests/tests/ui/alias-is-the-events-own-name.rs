use eventsourcing_kit::prelude::*;

#[event(aggregate = "Account", name = "FundsDeposited", aliases("MoneyDeposited", "FundsDeposited"))]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
