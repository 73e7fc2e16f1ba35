use eventsourcing_kit::prelude::*;

// `#[event]` goes above the derives: the compiler takes a derive written above an
// attribute macro off the item before the macro sees it, so `Clone` is derived twice.
#[derive(Clone)]
#[event(aggregate = "Account")]
pub struct Deposited {
    pub amount: f64,
}

fn main() {}
