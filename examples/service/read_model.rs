//! The service's read side: one projection of accounts and orders into tables of the
//! service's own database, committed with its checkpoint, and the queries that read them.
//! Amounts are whole cents, as in the events.

use std::collections::BTreeMap;
use std::sync::Arc;

use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection, Projection, Row, StreamKey};
use eventsourcing_kit::subscription::HandlerError;
use serde_json::{json, Value};

use super::account::AccountEvent;
use super::order::{OrderEvent, OrderStatus};

/// The projection's name, which keeps its checkpoint and lease. Version 2 holds cents in
/// integer columns; version 1 (`bank-read-model`, tables `bank_accounts` and `bank_orders`)
/// held floating-point units. A new version is a new name and new tables, built from the
/// whole feed beside the old ones, which the service no longer reads.
pub const NAME: &str = "bank-read-model-v2";

// Statements name the tables `{p}bank_...`: `{p}` is the stores' PostgreSQL schema, if they
// have one (`?schema=` in the URL), and nothing on SQLite.
const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS {p}bank_accounts_v2 (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance_cents BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS {p}bank_orders_v2 (
        id TEXT PRIMARY KEY, account_id TEXT NOT NULL, amount_cents BIGINT NOT NULL,
        status TEXT NOT NULL)";

/// What one event changes in the read model, as one statement and its parameters.
enum Change {
    Open {
        id: String,
        owner: String,
        balance: i64,
    },
    Credit {
        id: String,
        amount: i64,
    },
    Place {
        id: String,
        account: String,
        amount: i64,
    },
    Status {
        id: String,
        status: &'static str,
    },
}

const OPEN: &str = "INSERT INTO {p}bank_accounts_v2 (id, owner, balance_cents) VALUES ($1, $2, $3)";
const CREDIT: &str = "UPDATE {p}bank_accounts_v2 SET balance_cents = balance_cents + $1 WHERE id = $2";
const PLACE: &str =
    "INSERT INTO {p}bank_orders_v2 (id, account_id, amount_cents, status) VALUES ($1, $2, $3, 'placed')";
const STATUS: &str = "UPDATE {p}bank_orders_v2 SET status = $1 WHERE id = $2";

fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Placed => "placed",
        OrderStatus::Paid => "paid",
        OrderStatus::Cancelled => "cancelled",
    }
}

/// The changes of a batch, decoded (and upcast) through the aggregates' event enums.
fn changes(events: &[StoredEvent]) -> Result<Vec<Change>, HandlerError> {
    let mut changes = Vec::new();
    for event in events {
        // A stream's closing (see eventsourcing_kit::lifecycle) is no event of the aggregate's.
        if eventsourcing_kit::lifecycle::is_system_event(&event.event_type) {
            continue;
        }
        let id = event.aggregate_id.to_string();
        match &*event.aggregate_type {
            "Account" => changes.push(
                match AccountEvent::decode(&event.event_type, event.event_version, &event.payload)? {
                    AccountEvent::AccountOpened(e) => Change::Open {
                        id,
                        owner: e.owner_name,
                        balance: e.initial_balance_cents,
                    },
                    AccountEvent::MoneyDeposited(e) => Change::Credit {
                        id,
                        amount: e.amount_cents,
                    },
                    // An amount is from 0 to i64::MAX: its negation is an i64.
                    AccountEvent::MoneyWithdrawn(e) => Change::Credit {
                        id,
                        amount: -e.amount_cents,
                    },
                },
            ),
            "Order" => changes.push(
                match OrderEvent::decode(&event.event_type, event.event_version, &event.payload)? {
                    OrderEvent::OrderPlaced(e) => Change::Place {
                        id,
                        account: e.account_id.to_string(),
                        amount: e.amount_cents,
                    },
                    OrderEvent::OrderPaid(_) => Change::Status {
                        id,
                        status: status_name(OrderStatus::Paid),
                    },
                    OrderEvent::OrderCancelled(_) => Change::Status {
                        id,
                        status: status_name(OrderStatus::Cancelled),
                    },
                },
            ),
            _ => {}
        }
    }
    Ok(changes)
}

/// The read model in the SQL database of the stores; `prefix` as in [`sql`].
struct Tables {
    prefix: String,
}

/// The same statements on SQLite and PostgreSQL: written once, run in the transaction of the
/// projection's checkpoint.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl eventsourcing_kit::backend::SqlProjection for Tables {
    fn setup(&mut self, writes: &mut eventsourcing_kit::backend::SqlWrites) -> Result<(), HandlerError> {
        for statement in sql(TABLES, &self.prefix).split(';') {
            writes.execute(statement, []);
        }
        Ok(())
    }

    fn apply(
        &mut self,
        writes: &mut eventsourcing_kit::backend::SqlWrites,
        events: &[StoredEvent],
    ) -> Result<(), HandlerError> {
        let p = &self.prefix;
        for change in changes(events)? {
            match change {
                Change::Open { id, owner, balance } => {
                    writes.execute(&sql(OPEN, p), [id.into(), owner.into(), balance.into()])
                }
                Change::Credit { id, amount } => writes.execute(&sql(CREDIT, p), [amount.into(), id.into()]),
                Change::Place { id, account, amount } => {
                    writes.execute(&sql(PLACE, p), [id.into(), account.into(), amount.into()])
                }
                Change::Status { id, status } => writes.execute(&sql(STATUS, p), [status.into(), id.into()]),
            };
        }
        Ok(())
    }

    fn reset(&mut self, writes: &mut eventsourcing_kit::backend::SqlWrites) -> Result<(), HandlerError> {
        for statement in sql(EMPTY, &self.prefix).split(';') {
            writes.execute(statement, []);
        }
        Ok(())
    }
    /// The same statements on tables in `schema`, where `admin projections verify` rebuilds
    /// streams to compare them with these.
    fn scratch(&self, schema: &str) -> Option<Self> {
        Some(Tables {
            prefix: format!("{schema}."),
        })
    }

    /// The row of an account or an order: each is made by the events of its own stream.
    fn stream_rows(&self, stream: &StreamKey, reads: &mut eventsourcing_kit::backend::SqlReads) {
        let id = stream.aggregate_id.to_string();
        match &*stream.aggregate_type {
            "Account" => reads.query("bank_accounts_v2", &sql(ACCOUNT_ROW, &self.prefix), [id.into()]),
            "Order" => reads.query("bank_orders_v2", &sql(ORDER_ROW, &self.prefix), [id.into()]),
            _ => reads,
        };
    }
}

/// The read model in memory, for `memory:` stores.
#[derive(Clone, Default)]
pub struct Memory {
    accounts: BTreeMap<String, (String, i64)>,
    orders: BTreeMap<String, (String, i64, &'static str)>,
}

impl MemoryProjection for Memory {
    /// The row of an account or an order, as the SQL tables have it.
    fn stream_rows(&self, stream: &StreamKey) -> Option<Vec<Row>> {
        let id = stream.aggregate_id.to_string();
        let row = match &*stream.aggregate_type {
            "Account" => self.accounts.get(&id).map(|(owner, balance)| {
                Row::new(
                    "bank_accounts_v2",
                    json!({"id": id, "owner": owner, "balance_cents": balance}),
                )
            }),
            "Order" => self.orders.get(&id).map(|(account, amount, status)| {
                Row::new(
                    "bank_orders_v2",
                    json!({"id": id, "account_id": account, "amount_cents": amount, "status": status}),
                )
            }),
            _ => None,
        };
        Some(row.into_iter().collect())
    }

    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for change in changes(events)? {
            match change {
                Change::Open { id, owner, balance } => {
                    self.accounts.insert(id, (owner, balance));
                }
                Change::Credit { id, amount } => {
                    if let Some(account) = self.accounts.get_mut(&id) {
                        // As the aggregate's `Apply` does.
                        account.1 = account.1.saturating_add(amount);
                    }
                }
                Change::Place { id, account, amount } => {
                    self.orders.insert(id, (account, amount, "placed"));
                }
                Change::Status { id, status } => {
                    if let Some(order) = self.orders.get_mut(&id) {
                        order.2 = status;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where the queries read.
pub enum Queries {
    Memory(InMemoryReadModel<Memory>),
    #[cfg(feature = "sqlite")]
    Sqlite(eventsourcing_kit::backend::sqlite::Database),
    #[cfg(feature = "postgres")]
    Postgres(eventsourcing_kit::backend::postgres::PgPool, String),
}

/// The projection on the stores' own database, and its queries.
pub fn open(stores: &Stores) -> Result<(Arc<Projection>, Queries), Error> {
    #[cfg(feature = "sqlite")]
    if let Some(subscriptions) = stores.sqlite() {
        let queries = Queries::Sqlite(subscriptions.database().clone());
        return sql_read_model(stores, String::new(), queries);
    }
    #[cfg(feature = "postgres")]
    if let Some(events) = stores.postgres() {
        let prefix = events
            .schema()
            .map_or(String::new(), |schema| format!("\"{schema}\"."));
        let queries = Queries::Postgres(events.pool().clone(), prefix.clone());
        return sql_read_model(stores, prefix, queries);
    }
    let model = InMemoryReadModel::new(Memory::default());
    Ok((projection(stores, model.clone())?, Queries::Memory(model)))
}

/// The projection of the tables in the stores' SQL database, whichever it is.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn sql_read_model(
    stores: &Stores,
    prefix: String,
    queries: Queries,
) -> Result<(Arc<Projection>, Queries), Error> {
    let model = eventsourcing_kit::backend::SqlReadModel::on(stores, Tables { prefix })?;
    Ok((projection(stores, model)?, queries))
}

fn projection(
    stores: &Stores,
    model: impl eventsourcing_kit::projection::ReadModelStore + 'static,
) -> Result<Arc<Projection>, Error> {
    Ok(Arc::new(
        stores
            .projection(NAME, model)?
            .aggregate_type("Account")
            .aggregate_type("Order"),
    ))
}

// The sum of the balances in two parts, each of which an i64 holds for up to 2^32 accounts
// (a balance is from 0 to 2^63 - 1 cents: its high 32 bits are below 2^31, its low 32 bits
// below 2^32), put together as an i128: a plain sum overflows past i64::MAX cents in total.
const SUMMARY: &str = "SELECT count(*), CAST(coalesce(sum(balance_cents >> 32), 0) AS BIGINT),
    CAST(coalesce(sum(balance_cents & 4294967295), 0) AS BIGINT) FROM {p}bank_accounts_v2";
const BY_STATUS: &str =
    "SELECT id, account_id, amount_cents FROM {p}bank_orders_v2 WHERE status = $1 ORDER BY id";
const ACCOUNT_ROW: &str = "SELECT id, owner, balance_cents FROM {p}bank_accounts_v2 WHERE id = $1";
const ORDER_ROW: &str = "SELECT id, account_id, amount_cents, status FROM {p}bank_orders_v2 WHERE id = $1";
const EMPTY: &str = "DELETE FROM {p}bank_accounts_v2; DELETE FROM {p}bank_orders_v2";

/// A statement with its tables in the schema `prefix` names (`"schema".` or nothing).
fn sql(statement: &str, prefix: &str) -> String {
    statement.replace("{p}", prefix)
}

/// How many accounts there are and the sum of their balances, exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub accounts: i64,
    /// Up to `i64::MAX` cents for each account.
    pub total_balance_cents: i128,
}

impl Queries {
    /// How many accounts there are and their total balance.
    pub async fn summary(&self) -> Result<Summary, Error> {
        let (accounts, high, low): (i64, i64, i64) = match self {
            Queries::Memory(model) => {
                let (accounts, total) = model.read(|m| {
                    let total = m.accounts.values().map(|a| i128::from(a.1)).sum();
                    (m.accounts.len() as i64, total)
                });
                return Ok(Summary {
                    accounts,
                    total_balance_cents: total,
                });
            }
            #[cfg(feature = "sqlite")]
            Queries::Sqlite(database) => {
                database
                    .call(|c| c.query_row(&sql(SUMMARY, ""), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
                    .await?
            }
            #[cfg(feature = "postgres")]
            Queries::Postgres(pool, prefix) => {
                eventsourcing_kit::backend::postgres::sqlx::query_as(&sql(SUMMARY, prefix))
                    .fetch_one(pool)
                    .await
                    .map_err(|e| Error::store("postgres", "cannot read the summary", e))?
            }
        };
        Ok(Summary {
            accounts,
            total_balance_cents: (i128::from(high) << 32) + i128::from(low),
        })
    }

    /// The orders with `status`.
    pub async fn orders(&self, status: OrderStatus) -> Result<Value, Error> {
        let status = status_name(status);
        let rows: Vec<(String, String, i64)> = match self {
            Queries::Memory(model) => model.read(|m| {
                m.orders
                    .iter()
                    .filter(|(_, o)| o.2 == status)
                    .map(|(id, o)| (id.clone(), o.0.clone(), o.1))
                    .collect()
            }),
            #[cfg(feature = "sqlite")]
            Queries::Sqlite(database) => {
                database
                    .call(move |c| {
                        let mut statement = c.prepare(&sql(BY_STATUS, ""))?;
                        let rows =
                            statement.query_map([status], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                        rows.collect()
                    })
                    .await?
            }
            #[cfg(feature = "postgres")]
            Queries::Postgres(pool, prefix) => {
                eventsourcing_kit::backend::postgres::sqlx::query_as(&sql(BY_STATUS, prefix))
                    .bind(status)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| Error::store("postgres", "cannot read the orders", e))?
            }
        };
        let orders: Vec<Value> = rows
            .into_iter()
            .map(|(id, account_id, cents)| json!({ "id": id, "account_id": account_id, "amount_cents": cents }))
            .collect();
        Ok(json!({ "status": status, "orders": orders }))
    }
}
