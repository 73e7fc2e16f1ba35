use eventsourcing_kit::prelude::*;

mod cash {
    use eventsourcing_kit::prelude::*;

    #[event(aggregate = "Account", name = "CashDeposited")]
    pub struct Deposited {
        pub amount: f64,
    }
}

mod card {
    use eventsourcing_kit::prelude::*;

    #[event(aggregate = "Account", name = "CardDeposited")]
    pub struct Deposited {
        pub amount: f64,
    }
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Account", events(cash::Deposited, card::Deposited))]
pub struct Account {
    pub balance: f64,
}

impl Apply<cash::Deposited> for Account {
    fn apply(&mut self, e: &cash::Deposited) {
        self.balance += e.amount;
    }
}

impl Apply<card::Deposited> for Account {
    fn apply(&mut self, e: &card::Deposited) {
        self.balance += e.amount;
    }
}

fn main() {}
