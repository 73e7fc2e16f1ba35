//! Process managers (`eventsource::process`): the warehouse flow of the guide. A placed order
//! reserves stock for each line; when every line is reserved the order is confirmed, and if
//! a line cannot be, what was reserved is released and the order cancelled; an order not
//! paid in time is cancelled and its stock released. Checked with the testing kit, on
//! memory, SQLite and PostgreSQL, and with worker processes killed mid-flow (SIGKILL): every
//! order ends confirmed with its stock reserved, or cancelled with nothing reserved, and no
//! reservation is ever made twice.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use eventsource::backend::Stores;
use eventsource::process::{Decisions, ProcessManager, Reply};
use eventsource::prelude::*;
use eventsource::repository::CommandError;
use eventsource::subscription::HandlerError;
use eventsource::testing::process::{event, given};

// --- The domain: orders and stock -------------------------------------------------------

#[event(aggregate = "Order")]
pub struct OrderPlaced {
    pub lines: Vec<(Uuid, u32)>,
}

#[event(aggregate = "Order")]
pub struct OrderConfirmed {}

#[event(aggregate = "Order")]
pub struct OrderCancelled {
    pub reason: String,
}

#[event(aggregate = "Order")]
pub struct OrderPaid {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Status {
    #[default]
    New,
    Placed,
    Confirmed,
    Cancelled,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Order", events(OrderPlaced, OrderConfirmed, OrderCancelled, OrderPaid))]
pub struct Order {
    pub status: Status,
    pub paid: bool,
}

impl Apply<OrderPlaced> for Order {
    fn apply(&mut self, _: &OrderPlaced) {
        self.status = Status::Placed;
    }
}
impl Apply<OrderConfirmed> for Order {
    fn apply(&mut self, _: &OrderConfirmed) {
        self.status = Status::Confirmed;
    }
}
impl Apply<OrderCancelled> for Order {
    fn apply(&mut self, _: &OrderCancelled) {
        self.status = Status::Cancelled;
    }
}
impl Apply<OrderPaid> for Order {
    fn apply(&mut self, _: &OrderPaid) {
        self.paid = true;
    }
}

#[event(aggregate = "Stock")]
pub struct Stocked {
    pub units: u32,
}

#[event(aggregate = "Stock")]
pub struct Reserved {
    pub order: Uuid,
    pub units: u32,
}

#[event(aggregate = "Stock")]
pub struct Released {
    pub order: Uuid,
    pub units: u32,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Stock", events(Stocked, Reserved, Released))]
pub struct Stock {
    pub available: u32,
    pub held: HashMap<Uuid, u32>,
}

impl Apply<Stocked> for Stock {
    fn apply(&mut self, e: &Stocked) {
        self.available += e.units;
    }
}
impl Apply<Reserved> for Stock {
    fn apply(&mut self, e: &Reserved) {
        self.available -= e.units;
        self.held.insert(e.order, e.units);
    }
}
impl Apply<Released> for Stock {
    fn apply(&mut self, e: &Released) {
        self.available += e.units;
        self.held.remove(&e.order);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(String);

// --- The process -------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    Reserve { product: Uuid, order: Uuid, units: u32 },
    Release { product: Uuid, order: Uuid },
    Confirm { order: Uuid },
    Cancel { order: Uuid, reason: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Fulfilment {
    pub order: Option<Uuid>,
    pub lines: usize,
    pub reserved: Vec<Uuid>,
    pub refused: bool,
    pub confirmed: bool,
    pub paid: bool,
}

/// The warehouse's process: its repositories, and how long an order may wait for payment.
pub struct Warehouse {
    orders: Repository<Order>,
    stock: Repository<Stock>,
    payment: Duration,
}

impl Warehouse {
    fn release_all(state: &Fulfilment, order: Uuid, decide: &mut Decisions<Step>) {
        for product in &state.reserved {
            decide.send(Step::Release {
                product: *product,
                order,
            });
        }
    }
}

#[eventsource::async_trait]
impl ProcessManager for Warehouse {
    type State = Fulfilment;
    type Command = Step;

    fn route(&self, event: &StoredEvent) -> Option<Uuid> {
        (&*event.aggregate_type == "Order").then_some(event.aggregate_id)
    }

    fn handle(&self, state: &mut Fulfilment, event: &StoredEvent, decide: &mut Decisions<Step>) -> Result<(), HandlerError> {
        let order = event.aggregate_id;
        match OrderEvent::decode(&event.event_type, event.event_version, &event.payload)? {
            OrderEvent::OrderPlaced(placed) => {
                state.order = Some(order);
                state.lines = placed.lines.len();
                for (product, units) in placed.lines {
                    decide.send(Step::Reserve { product, order, units });
                }
                decide.schedule("payment", self.payment);
            }
            OrderEvent::OrderPaid(_) => {
                state.paid = true;
                if state.confirmed {
                    decide.cancel("payment").complete();
                }
            }
            OrderEvent::OrderConfirmed(_) | OrderEvent::OrderCancelled(_) => {}
        }
        Ok(())
    }

    fn on_reply(&self, state: &mut Fulfilment, step: &Step, reply: &Reply, decide: &mut Decisions<Step>) -> Result<(), HandlerError> {
        match (step, reply) {
            (Step::Reserve { product, order, .. }, Reply::Done) => {
                if state.refused {
                    // Reserved after another line was refused: give it back.
                    decide.send(Step::Release { product: *product, order: *order });
                } else {
                    state.reserved.push(*product);
                    if state.reserved.len() == state.lines {
                        decide.send(Step::Confirm { order: *order });
                    }
                }
            }
            (Step::Reserve { order, .. }, Reply::Refused(reason)) if !state.refused => {
                state.refused = true;
                Self::release_all(state, *order, decide);
                state.reserved.clear();
                decide.send(Step::Cancel { order: *order, reason: reason.clone() });
            }
            (Step::Confirm { .. }, Reply::Done) => {
                state.confirmed = true;
                if state.paid {
                    decide.cancel("payment").complete();
                }
            }
            (Step::Cancel { .. }, _) => {
                decide.cancel("payment").complete();
            }
            _ => {}
        }
        Ok(())
    }

    fn on_timeout(&self, state: &mut Fulfilment, timeout: &str, decide: &mut Decisions<Step>) -> Result<(), HandlerError> {
        if timeout == "payment" && !state.paid && !state.refused {
            state.refused = true;
            if let Some(order) = state.order {
                Self::release_all(state, order, decide);
                state.reserved.clear();
                decide.send(Step::Cancel { order, reason: "not paid in time".into() });
            }
        }
        Ok(())
    }

    async fn execute(&self, step: &Step, context: EventContext) -> Result<Reply, HandlerError> {
        let outcome = match step.clone() {
            Step::Reserve { product, order, units } => self
                .stock
                .command(product)
                .context(context)
                .run(move |stock| {
                    if stock.state().available < units {
                        return Err(Refusal(format!("{units} units of {product} are not available")));
                    }
                    stock.record(Reserved { order, units });
                    Ok(())
                })
                .await
                .map(drop),
            Step::Release { product, order } => self
                .stock
                .command(product)
                .context(context)
                .run(move |stock| {
                    if let Some(units) = stock.state().held.get(&order).copied() {
                        stock.record(Released { order, units });
                    }
                    Ok(())
                })
                .await
                .map(drop),
            Step::Confirm { order } => self
                .orders
                .command(order)
                .context(context)
                .run(|o| {
                    if o.state().status != Status::Placed {
                        return Err(Refusal(format!("order {order} is {:?}", o.state().status)));
                    }
                    o.record(OrderConfirmed {});
                    Ok(())
                })
                .await
                .map(drop),
            Step::Cancel { order, reason } => self
                .orders
                .command(order)
                .context(context)
                .run(move |o| {
                    if o.state().status == Status::Placed {
                        o.record(OrderCancelled { reason: reason.clone() });
                    }
                    Ok(())
                })
                .await
                .map(drop),
        };
        match outcome {
            Ok(()) => Ok(Reply::Done),
            Err(CommandError::Rejected(refusal)) => Ok(Reply::Refused(refusal.to_string())),
            Err(CommandError::RejectedEarlier { reason, .. }) => Ok(Reply::Refused(reason)),
            Err(e) => Err(e.to_string().into()),
        }
    }
}

// --- The testing kit ------------------------------------------------------------------------

fn warehouse(stores: &Stores, payment: Duration) -> Warehouse {
    Warehouse {
        orders: stores.repository::<Order>(),
        stock: stores.repository::<Stock>(),
        payment,
    }
}

#[test]
fn the_kit_shows_the_commands_and_their_request_ids() {
    let stores = Stores::in_memory();
    let (order, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let placed = event::<Order>(order, 1, OrderPlaced { lines: vec![(a, 2), (b, 1)] });
    let reserve = |product, units| Step::Reserve { product, order, units };
    given("warehouse", warehouse(&stores, Duration::from_secs(900)), [])
        .when(placed.clone())
        .then_commands([reserve(a, 2), reserve(b, 1), Step::Confirm { order }])
        .then_timeouts(&["payment"], &[])
        .then_state(|s| assert_eq!(s.reserved, vec![a, b]));
    let first = format!("warehouse/{}/1", placed.event_id);
    let then = given("warehouse", warehouse(&stores, Duration::from_secs(900)), [])
        .when(placed.clone())
        .then_request_ids([first.clone(), format!("warehouse/{}/2", placed.event_id)].into_iter().chain(
            // The confirmation is decided on the second reservation's reply.
            std::iter::once(format!(
                "warehouse/{}/1",
                eventsource::process::reply_cause(&format!("warehouse/{}/2", placed.event_id).parse().unwrap())
            )),
        ));
    assert_eq!(then.commands()[0].1.as_str(), first);

    // A refused line: the reserved one is released, the order cancelled.
    given("warehouse", warehouse(&stores, Duration::from_secs(900)), [])
        .replying(move |step| match step {
            Step::Reserve { product, .. } if *product == b => Reply::Refused("none left".into()),
            _ => Reply::Done,
        })
        .when(placed.clone())
        .then_commands([
            reserve(a, 2),
            reserve(b, 1),
            Step::Release { product: a, order },
            Step::Cancel { order, reason: "none left".into() },
        ])
        .then_timeouts(&["payment"], &["payment"])
        .then_completed(true);

    // Paid after its confirmation: the timeout goes, the instance ends.
    given("warehouse", warehouse(&stores, Duration::from_secs(900)), [placed])
        .when(event::<Order>(order, 3, OrderPaid {}))
        .then_nothing()
        .then_timeouts(&[], &["payment"])
        .then_completed(true);
}
