use eventsourcing_kit::prelude::*;

mod placed {
    use eventsourcing_kit::prelude::*;

    #[event(aggregate = "Order")]
    pub struct Created {
        pub amount: f64,
    }
}

#[event(aggregate = "Order", name = "Created")]
pub struct Placed {
    pub id: u64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Order", events(placed::Created, Placed))]
pub struct Order {
    pub total: f64,
}

impl Apply<placed::Created> for Order {
    fn apply(&mut self, e: &placed::Created) {
        self.total += e.amount;
    }
}

impl Apply<Placed> for Order {
    fn apply(&mut self, _: &Placed) {}
}

fn main() {}
