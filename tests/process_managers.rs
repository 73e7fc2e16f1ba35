//! Process managers (`eventsourcing_kit::process`): the warehouse flow of the guide. A placed order
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
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use eventsourcing_kit::backend::{self, Stores};
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::process::{Decisions, ProcessManager, ProcessRunner, Reply};
use eventsourcing_kit::repository::CommandError;
use eventsourcing_kit::subscription::{Consumer, HandlerError};
use eventsourcing_kit::testing::process::{event, given};

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
#[aggregate(
    name = "Order",
    events(OrderPlaced, OrderConfirmed, OrderCancelled, OrderPaid)
)]
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
    /// How long each command takes on top, standing for a call to another service.
    delay: Duration,
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

#[eventsourcing_kit::async_trait]
impl ProcessManager for Warehouse {
    type State = Fulfilment;
    type Command = Step;

    fn route(&self, event: &StoredEvent) -> Option<Uuid> {
        (&*event.aggregate_type == "Order").then_some(event.aggregate_id)
    }

    fn handle(
        &self,
        state: &mut Fulfilment,
        event: &StoredEvent,
        decide: &mut Decisions<Step>,
    ) -> Result<(), HandlerError> {
        let order = event.aggregate_id;
        match OrderEvent::decode(&event.event_type, event.event_version, &event.payload)? {
            OrderEvent::OrderPlaced(placed) => {
                state.order = Some(order);
                state.lines = placed.lines.len();
                for (product, units) in placed.lines {
                    decide.send(Step::Reserve {
                        product,
                        order,
                        units,
                    });
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

    fn on_reply(
        &self,
        state: &mut Fulfilment,
        step: &Step,
        reply: &Reply,
        decide: &mut Decisions<Step>,
    ) -> Result<(), HandlerError> {
        match (step, reply) {
            (Step::Reserve { product, order, .. }, Reply::Done) => {
                if state.refused {
                    // Reserved after another line was refused: give it back.
                    decide.send(Step::Release {
                        product: *product,
                        order: *order,
                    });
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
                decide.send(Step::Cancel {
                    order: *order,
                    reason: reason.clone(),
                });
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

    fn on_timeout(
        &self,
        state: &mut Fulfilment,
        timeout: &str,
        decide: &mut Decisions<Step>,
    ) -> Result<(), HandlerError> {
        if timeout == "payment" && !state.paid && !state.refused {
            state.refused = true;
            if let Some(order) = state.order {
                Self::release_all(state, order, decide);
                state.reserved.clear();
                decide.send(Step::Cancel {
                    order,
                    reason: "not paid in time".into(),
                });
            }
        }
        Ok(())
    }

    async fn execute(&self, step: &Step, context: EventContext) -> Result<Reply, HandlerError> {
        tokio::time::sleep(self.delay).await;
        let outcome = match step.clone() {
            Step::Reserve {
                product,
                order,
                units,
            } => self
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
                    if o.state().status != Status::Cancelled {
                        o.record(OrderCancelled {
                            reason: reason.clone(),
                        });
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
        delay: Duration::ZERO,
    }
}

#[test]
fn the_kit_shows_the_commands_and_their_request_ids() {
    let stores = Stores::in_memory();
    let (order, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let placed = event::<Order>(
        order,
        1,
        OrderPlaced {
            lines: vec![(a, 2), (b, 1)],
        },
    );
    let reserve = |product, units| Step::Reserve {
        product,
        order,
        units,
    };
    given("warehouse", warehouse(&stores, Duration::from_secs(900)), [])
        .when(placed.clone())
        .then_commands([reserve(a, 2), reserve(b, 1), Step::Confirm { order }])
        .then_timeouts(&["payment"], &[])
        .then_state(|s| assert_eq!(s.reserved, vec![a, b]));
    let first = format!("warehouse/{}/1", placed.event_id);
    let then = given("warehouse", warehouse(&stores, Duration::from_secs(900)), [])
        .when(placed.clone())
        .then_request_ids(
            [first.clone(), format!("warehouse/{}/2", placed.event_id)]
                .into_iter()
                .chain(
                    // The confirmation is decided on the second reservation's reply.
                    std::iter::once(format!(
                        "warehouse/{}/1",
                        eventsourcing_kit::process::reply_cause(
                            &format!("warehouse/{}/2", placed.event_id).parse().unwrap()
                        )
                    )),
                ),
        );
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
            Step::Cancel {
                order,
                reason: "none left".into(),
            },
        ])
        .then_timeouts(&["payment"], &["payment"])
        .then_completed(true);

    // Paid after its confirmation: the timeout goes, the instance ends.
    given(
        "warehouse",
        warehouse(&stores, Duration::from_secs(900)),
        [placed],
    )
    .when(event::<Order>(order, 3, OrderPaid {}))
    .then_nothing()
    .then_timeouts(&[], &["payment"])
    .then_completed(true);

    // The library's system events (a subject forgotten, a stream closed) reach no process
    // manager, whose own decoding would refuse them.
    let forgotten = StoredEvent::new(
        0,
        eventsourcing_kit::EventEnvelope::from_json(
            order,
            "Order",
            2,
            eventsourcing_kit::lifecycle::SUBJECT_FORGOTTEN,
            1,
            "{}",
        ),
    );
    given("warehouse", warehouse(&stores, Duration::from_secs(900)), [])
        .when(forgotten)
        .then_nothing();
}

// --- On the stores --------------------------------------------------------------------------

const PRODUCTS: usize = 6;
const UNITS: u32 = 10;
const ORDERS: usize = 40;
/// How long an order may wait for payment in these tests.
const PAYMENT: Duration = Duration::from_millis(400);

/// The runner of the warehouse on `stores`, looking for due timeouts often; each command
/// takes `delay` on top.
fn runner(stores: &Stores, delay: Duration) -> ProcessRunner<Warehouse> {
    let warehouse = Warehouse {
        delay,
        ..warehouse(stores, PAYMENT)
    };
    stores
        .process("warehouse", warehouse, |s| {
            s.for_aggregate::<Order>()
                .poll_interval(Duration::from_millis(20))
                .unwrap()
                .lease(Duration::from_millis(600))
                .unwrap()
        })
        .unwrap()
        .tick(Duration::from_millis(20))
        .rescan(Duration::from_millis(300))
}

/// Stocks the products and places the orders (every other one paid); the products and
/// the orders with whether each is paid.
async fn trade(stores: &Stores) -> (Vec<Uuid>, Vec<(Uuid, bool)>) {
    let stock = stores.repository::<Stock>();
    let mut products = Vec::new();
    for _ in 0..PRODUCTS {
        let id = Uuid::new_v4();
        let mut product = stock.create_new(id);
        product.record(Stocked { units: UNITS });
        stock.save(&mut product).await.unwrap();
        products.push(id);
    }
    let orders = stores.repository::<Order>();
    let mut placed = Vec::new();
    for i in 0..ORDERS {
        let id = Uuid::new_v4();
        let lines = (0..2 + i % 2)
            .map(|l| (products[(i * 5 + l * 7) % PRODUCTS], 1 + ((i + l) % 3) as u32))
            .collect::<Vec<_>>();
        let mut order = orders.create_new(id);
        order.record(OrderPlaced { lines });
        let paid = i % 2 == 0;
        if paid {
            order.record(OrderPaid {});
        }
        orders.save(&mut order).await.unwrap();
        placed.push((id, paid));
    }
    (products, placed)
}

/// Whether every order has settled: cancelled with no stock held (its releases may follow
/// its cancellation), or confirmed and paid.
async fn settled(stores: &Stores, products: &[Uuid], orders: &[(Uuid, bool)]) -> bool {
    let repo = stores.repository::<Order>();
    let mut cancelled = std::collections::HashSet::new();
    for (id, _) in orders {
        let order = repo.load(*id).await.unwrap();
        match order.state().status {
            Status::Cancelled => {
                cancelled.insert(*id);
            }
            Status::Confirmed if order.state().paid => {}
            _ => return false,
        }
    }
    let stock = stores.repository::<Stock>();
    for product in products {
        let held = stock.load(*product).await.unwrap();
        if held.state().held.keys().any(|order| cancelled.contains(order)) {
            return false;
        }
    }
    true
}

/// Every order ended confirmed and paid with its stock held, or cancelled with none held;
/// no product reserved twice for one order; the units add up.
async fn check(stores: &Stores, products: &[Uuid], orders: &[(Uuid, bool)]) {
    let repo = stores.repository::<Order>();
    let mut confirmed = std::collections::HashSet::new();
    for (id, paid) in orders {
        let order = repo.load(*id).await.unwrap();
        match order.state().status {
            Status::Confirmed => {
                assert!(*paid && order.state().paid, "order {id} confirmed and not paid");
                confirmed.insert(*id);
            }
            Status::Cancelled => {}
            other => panic!("order {id} did not settle: {other:?}"),
        }
    }
    assert!(!confirmed.is_empty(), "some orders went through");
    assert!(confirmed.len() < orders.len(), "some orders were cancelled");
    let stock = stores.repository::<Stock>();
    for product in products {
        let state = stock.load(*product).await.unwrap();
        let held: u32 = state.state().held.values().sum();
        assert_eq!(
            state.state().available + held,
            UNITS,
            "units of {product} made or lost"
        );
        for order in state.state().held.keys() {
            assert!(
                confirmed.contains(order),
                "stock of {product} left held by cancelled order {order}"
            );
        }
        let events: Vec<StoredEvent> = stores
            .events
            .read_stream(*product, "Stock", 0)
            .try_collect()
            .await
            .unwrap();
        let mut reservations: HashMap<Uuid, usize> = HashMap::new();
        for e in events.iter().filter(|e| &*e.event_type == "Reserved") {
            let StockEvent::Reserved(r) =
                StockEvent::decode(&e.event_type, e.event_version, &e.payload).unwrap()
            else {
                unreachable!()
            };
            *reservations.entry(r.order).or_default() += 1;
        }
        assert!(
            reservations.values().all(|n| *n == 1),
            "a reservation of {product} was made twice: {reservations:?}"
        );
    }
}

async fn the_warehouse_flow(stores: Stores) {
    let (products, orders) = trade(&stores).await;
    let runner = runner(&stores, Duration::ZERO);
    let stop = Arc::new(tokio::sync::Notify::new());
    let running = {
        let stop = stop.clone();
        async move { runner.run(stop.notified()).await }
    };
    let watch = async {
        for _ in 0..600 {
            if settled(&stores, &products, &orders).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.notify_one();
    };
    let (ran, ()) = tokio::join!(running, watch);
    ran.unwrap();
    check(&stores, &products, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_flow_in_memory() {
    the_warehouse_flow(Stores::in_memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_flow_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("warehouse.db").display());
    the_warehouse_flow(backend::open(&url).await.unwrap()).await;
}

/// The tests' PostgreSQL URL with a schema of the test's own, dropped at the end.
fn postgres_url(test: &str) -> Option<(common::ScratchSchema, String)> {
    let url = common::postgres_url(test)?;
    let scratch = common::ScratchSchema::new(&url, "process");
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}schema={}", scratch.name);
    Some((scratch, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_warehouse_flow_on_postgres() {
    let Some((_schema, url)) = postgres_url("the_warehouse_flow_on_postgres") else {
        return;
    };
    let stores = backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    the_warehouse_flow(stores).await;
}

// --- Worker processes killed mid-flow -------------------------------------------------------

/// Set in a worker process: the stores' URL.
const WORKER: &str = "EVENTSOURCE_TEST_PROCESS_WORKER";

/// A worker process: one worker of the warehouse's consumer group until its standard input
/// closes.
async fn work(url: &str) {
    let stores = backend::open(url).await.unwrap();
    // Slow enough that the kills land mid-flow: about a second of commands in all.
    let runner = runner(&stores, Duration::from_millis(4)).group(4).unwrap();
    let stop = common::stdin_closed();
    println!("READY");
    runner.run_workers(1, stop).await.unwrap();
}

struct Workers {
    test: &'static str,
    url: String,
    children: Vec<Child>,
}

impl Workers {
    fn start(&mut self) {
        let child = common::spawn_worker(self.test, &[(WORKER, &self.url)], |_| {});
        self.children.push(child);
    }

    fn kill(&mut self, worker: usize) {
        let child = &mut self.children[worker];
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn workers_killed_mid_flow(test: &'static str, url: String) {
    let stores = backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    let mut workers = Workers {
        test,
        url,
        children: Vec::new(),
    };
    workers.start();
    workers.start();
    let (products, orders) = trade(&stores).await;
    // Killed while the flow runs, then replaced; the other killed too, later.
    tokio::time::sleep(Duration::from_millis(150)).await;
    workers.kill(0);
    workers.start();
    tokio::time::sleep(Duration::from_millis(250)).await;
    workers.kill(1);
    workers.start();
    let mut done = false;
    for _ in 0..900 {
        if settled(&stores, &products, &orders).await {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the orders did not settle");
    check(&stores, &products, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_flow_on_sqlite() {
    const TEST: &str = "workers_killed_mid_flow_on_sqlite";
    if let Ok(url) = std::env::var(WORKER) {
        return work(&url).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("warehouse.db").display());
    workers_killed_mid_flow(TEST, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn workers_killed_mid_flow_on_postgres() {
    const TEST: &str = "workers_killed_mid_flow_on_postgres";
    if let Ok(url) = std::env::var(WORKER) {
        return work(&url).await;
    }
    let Some((_schema, url)) = postgres_url(TEST) else {
        return;
    };
    workers_killed_mid_flow(TEST, url).await;
}

// --- Failures ---------------------------------------------------------------------------------

/// A process whose instances schedule a timeout at once; the one of `broken` fails on it, and
/// on a payment.
struct Alarms {
    broken: Uuid,
    fired: Arc<std::sync::Mutex<Vec<Uuid>>>,
}

#[eventsourcing_kit::async_trait]
impl ProcessManager for Alarms {
    type State = Option<Uuid>;
    type Command = Uuid;

    fn route(&self, event: &StoredEvent) -> Option<Uuid> {
        (&*event.aggregate_type == "Order").then_some(event.aggregate_id)
    }

    fn handle(
        &self,
        state: &mut Option<Uuid>,
        event: &StoredEvent,
        decide: &mut Decisions<Uuid>,
    ) -> Result<(), HandlerError> {
        if event.aggregate_id == self.broken && &*event.event_type == "OrderPaid" {
            return Err("this process cannot take payments".into());
        }
        *state = Some(event.aggregate_id);
        decide.schedule("alarm", Duration::ZERO);
        Ok(())
    }

    fn on_timeout(
        &self,
        state: &mut Option<Uuid>,
        _: &str,
        decide: &mut Decisions<Uuid>,
    ) -> Result<(), HandlerError> {
        match *state {
            Some(id) if id == self.broken => Err("the alarm of this one is broken".into()),
            Some(id) => {
                decide.send(id).complete();
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn execute(&self, order: &Uuid, _: EventContext) -> Result<Reply, HandlerError> {
        self.fired.lock().unwrap().push(*order);
        Ok(Reply::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_fails_holds_no_other_back_and_a_failing_batch_stops_the_runner() {
    let stores = Stores::in_memory();
    let orders = stores.repository::<Order>();
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        let mut order = orders.create_new(*id);
        order.record(OrderPlaced { lines: vec![] });
        orders.save(&mut order).await.unwrap();
    }
    let fired = Arc::new(std::sync::Mutex::new(Vec::new()));
    let alarms = Alarms {
        broken: ids[0],
        fired: fired.clone(),
    };
    let runner = stores
        .process("alarms", alarms, |s| {
            s.retry(1, Duration::ZERO, Duration::ZERO)
                .unwrap()
                .poll_interval(Duration::from_millis(10))
                .unwrap()
        })
        .unwrap();
    runner.catch_up().await.unwrap();
    // The broken instance's timeout fails at every pass; the others fire all the same.
    let failed = runner.fire_due().await;
    assert!(matches!(failed, Err(Error::Process { .. })), "{failed:?}");
    let mut got = fired.lock().unwrap().clone();
    got.sort();
    let mut others = ids[1..].to_vec();
    others.sort();
    assert_eq!(got, others);

    // A batch that fails every attempt stops the runner, which returns its error.
    let mut paid = orders.load(ids[0]).await.unwrap();
    paid.record(OrderPaid {});
    orders.save(&mut paid).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), runner.run(std::future::pending()))
        .await
        .expect("the runner returned when its subscription stopped");
    assert!(
        matches!(stopped, Err(Error::SubscriptionStopped { .. })),
        "{stopped:?}"
    );
}
