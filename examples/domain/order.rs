//! An order placed against an account, then paid or cancelled: the second aggregate of the
//! service example, beside its account (`service/account.rs`, which a program that includes
//! this file includes as `account`). Its amount is in whole cents, as the account's are;
//! version 1 of `OrderPlaced` held floating-point units and is upcast.

use eventsourcing_kit::prelude::*;
use serde_json::Value;

#[event(aggregate = "Order", version = 2, upcast(1 => json(amount_in_cents)))]
pub struct OrderPlaced {
    pub account_id: Uuid,
    /// Cents, more than 0.
    pub amount_cents: i64,
}

/// Version 1 `{"account_id": ..., "amount": 20.5}` becomes `{"account_id": ..., "amount_cents":
/// 2050}`, as the account's amounts do.
fn amount_in_cents(v1: Value) -> Result<Value, String> {
    super::account::in_cents(v1, "amount", "amount_cents")
}

#[event(aggregate = "Order")]
pub struct OrderPaid {}

#[event(aggregate = "Order")]
pub struct OrderCancelled {}

/// Where an order is in its life: placed, then paid or cancelled, and nothing after that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    // The state of an order with no events yet; the commands tell that one by its version 0,
    // as the account's do.
    #[default]
    Placed,
    Paid,
    Cancelled,
}

/// Schema version 2: the amount in cents. A snapshot of version 1 is replayed past.
#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(
    name = "Order",
    schema_version = 2,
    events(OrderPlaced, OrderPaid, OrderCancelled)
)]
pub struct Order {
    pub account_id: Uuid,
    pub amount_cents: i64,
    pub status: OrderStatus,
}

impl Apply<OrderPlaced> for Order {
    fn apply(&mut self, e: &OrderPlaced) {
        self.account_id = e.account_id;
        self.amount_cents = e.amount_cents;
        self.status = OrderStatus::Placed;
    }
}

impl Apply<OrderPaid> for Order {
    fn apply(&mut self, _: &OrderPaid) {
        self.status = OrderStatus::Paid;
    }
}

impl Apply<OrderCancelled> for Order {
    fn apply(&mut self, _: &OrderCancelled) {
        self.status = OrderStatus::Cancelled;
    }
}

/// Why the order refused a command.
#[derive(Debug, PartialEq)]
pub enum OrderRefused {
    AlreadyPlaced,
    NotPlaced,
    /// An amount of 0 cents or less.
    NotPositive(i64),
    AlreadyPaid,
    AlreadyCancelled,
}

/// The order's commands: each checks the state, then records what happened.
pub trait OrderCommands {
    fn place(&mut self, account_id: Uuid, amount_cents: i64) -> Result<(), OrderRefused>;
    fn pay(&mut self) -> Result<(), OrderRefused>;
    fn cancel(&mut self) -> Result<(), OrderRefused>;
}

impl OrderCommands for AggregateRoot<Order> {
    fn place(&mut self, account_id: Uuid, amount_cents: i64) -> Result<(), OrderRefused> {
        if self.version() > 0 {
            return Err(OrderRefused::AlreadyPlaced);
        }
        if amount_cents <= 0 {
            return Err(OrderRefused::NotPositive(amount_cents));
        }
        self.record(OrderPlaced {
            account_id,
            amount_cents,
        });
        Ok(())
    }

    fn pay(&mut self) -> Result<(), OrderRefused> {
        open(self)?;
        self.record(OrderPaid {});
        Ok(())
    }

    fn cancel(&mut self) -> Result<(), OrderRefused> {
        open(self)?;
        self.record(OrderCancelled {});
        Ok(())
    }
}

/// Refuses a command on an order that is not waiting for payment: paid and cancelled are final.
fn open(order: &AggregateRoot<Order>) -> Result<(), OrderRefused> {
    if order.version() == 0 {
        return Err(OrderRefused::NotPlaced);
    }
    match order.state().status {
        OrderStatus::Placed => Ok(()),
        OrderStatus::Paid => Err(OrderRefused::AlreadyPaid),
        OrderStatus::Cancelled => Err(OrderRefused::AlreadyCancelled),
    }
}

impl std::fmt::Display for OrderRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderRefused::AlreadyPlaced => f.write_str("the order is already placed"),
            OrderRefused::NotPlaced => f.write_str("the order is not placed"),
            OrderRefused::NotPositive(cents) => write!(f, "{cents} cents is not a positive amount"),
            OrderRefused::AlreadyPaid => f.write_str("the order is already paid"),
            OrderRefused::AlreadyCancelled => f.write_str("the order is cancelled"),
        }
    }
}

impl std::error::Error for OrderRefused {}
