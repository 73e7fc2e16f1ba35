//! The service's read side: one projection of accounts and orders into tables of the
//! service's own database, committed with its checkpoint, and the queries that read them.

use std::collections::BTreeMap;
use std::sync::Arc;

use eventsource::backend::Stores;
use eventsource::prelude::*;
use eventsource::projection::{InMemoryReadModel, MemoryProjection, Projection};
use eventsource::subscription::HandlerError;
use serde_json::{json, Value};

use super::account::AccountEvent;
use super::order::{OrderEvent, OrderStatus};

/// The projection's name, which keeps its checkpoint and lease.
pub const NAME: &str = "bank-read-model";

// Statements name the tables `{p}bank_...`: `{p}` is the stores' PostgreSQL schema, if they
// have one (`?schema=` in the URL), and nothing on SQLite.
const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS {p}bank_accounts (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance DOUBLE PRECISION NOT NULL);
    CREATE TABLE IF NOT EXISTS {p}bank_orders (
        id TEXT PRIMARY KEY, account_id TEXT NOT NULL, amount DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL)";

/// What one event changes in the read model, as one statement and its parameters.
enum Change {
    Open {
        id: String,
        owner: String,
        balance: f64,
    },
    Credit {
        id: String,
        amount: f64,
    },
    Place {
        id: String,
        account: String,
        amount: f64,
    },
    Status {
        id: String,
        status: &'static str,
    },
}

const OPEN: &str = "INSERT INTO {p}bank_accounts (id, owner, balance) VALUES ($1, $2, $3)";
// Parameters numbered in the order they appear: SQLite numbers `$N` by first appearance.
const CREDIT: &str = "UPDATE {p}bank_accounts SET balance = balance + $1 WHERE id = $2";
const PLACE: &str =
    "INSERT INTO {p}bank_orders (id, account_id, amount, status) VALUES ($1, $2, $3, 'placed')";
const STATUS: &str = "UPDATE {p}bank_orders SET status = $1 WHERE id = $2";

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
        let id = event.aggregate_id.to_string();
        match &*event.aggregate_type {
            "Account" => changes.push(
                match AccountEvent::decode(&event.event_type, event.event_version, &event.payload)? {
                    AccountEvent::AccountOpened(e) => Change::Open {
                        id,
                        owner: e.owner_name,
                        balance: e.initial_balance,
                    },
                    AccountEvent::MoneyDeposited(e) => Change::Credit { id, amount: e.amount },
                    AccountEvent::MoneyWithdrawn(e) => Change::Credit {
                        id,
                        amount: -e.amount,
                    },
                },
            ),
            "Order" => changes.push(
                match OrderEvent::decode(&event.event_type, event.event_version, &event.payload)? {
                    OrderEvent::OrderPlaced(e) => Change::Place {
                        id,
                        account: e.account_id.to_string(),
                        amount: e.amount,
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

#[cfg(feature = "sqlite")]
impl eventsource::backend::sqlite::SqliteProjection for Tables {
    fn setup(
        &mut self,
        tx: &eventsource::backend::sqlite::rusqlite::Transaction<'_>,
    ) -> Result<(), HandlerError> {
        tx.execute_batch(&sql(TABLES, &self.prefix))?;
        Ok(())
    }

    fn apply(
        &mut self,
        tx: &eventsource::backend::sqlite::rusqlite::Transaction<'_>,
        events: &[StoredEvent],
    ) -> Result<(), HandlerError> {
        use eventsource::backend::sqlite::rusqlite::params;
        for change in changes(events)? {
            let p = &self.prefix;
            match change {
                Change::Open { id, owner, balance } => {
                    tx.execute(&sql(OPEN, p), params![id, owner, balance])?
                }
                Change::Credit { id, amount } => tx.execute(&sql(CREDIT, p), params![amount, id])?,
                Change::Place { id, account, amount } => {
                    tx.execute(&sql(PLACE, p), params![id, account, amount])?
                }
                Change::Status { id, status } => tx.execute(&sql(STATUS, p), params![status, id])?,
            };
        }
        Ok(())
    }

    fn reset(
        &mut self,
        tx: &eventsource::backend::sqlite::rusqlite::Transaction<'_>,
    ) -> Result<(), HandlerError> {
        tx.execute_batch(&sql(EMPTY, &self.prefix))?;
        Ok(())
    }
}

#[cfg(feature = "postgres")]
#[eventsource::async_trait]
impl eventsource::backend::postgres::PostgresProjection for Tables {
    async fn setup(
        &mut self,
        tx: &mut eventsource::backend::postgres::PgTransaction,
    ) -> Result<(), HandlerError> {
        for statement in sql(TABLES, &self.prefix).split(';') {
            eventsource::backend::postgres::sqlx::query(statement)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        tx: &mut eventsource::backend::postgres::PgTransaction,
        events: &[StoredEvent],
    ) -> Result<(), HandlerError> {
        use eventsource::backend::postgres::sqlx::query;
        let p = &self.prefix;
        for change in changes(events)? {
            // The statements' texts live as long as the query that borrows them.
            let (open, credit, place, status);
            let bound = match change {
                Change::Open { id, owner, balance } => {
                    open = sql(OPEN, p);
                    query(&open).bind(id).bind(owner).bind(balance)
                }
                Change::Credit { id, amount } => {
                    credit = sql(CREDIT, p);
                    query(&credit).bind(amount).bind(id)
                }
                Change::Place { id, account, amount } => {
                    place = sql(PLACE, p);
                    query(&place).bind(id).bind(account).bind(amount)
                }
                Change::Status { id, status: to } => {
                    status = sql(STATUS, p);
                    query(&status).bind(to).bind(id)
                }
            };
            bound.execute(&mut **tx).await?;
        }
        Ok(())
    }

    async fn reset(
        &mut self,
        tx: &mut eventsource::backend::postgres::PgTransaction,
    ) -> Result<(), HandlerError> {
        for statement in sql(EMPTY, &self.prefix).split(';') {
            eventsource::backend::postgres::sqlx::query(statement)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// The read model in memory, for `memory:` stores.
#[derive(Clone, Default)]
pub struct Memory {
    accounts: BTreeMap<String, (String, f64)>,
    orders: BTreeMap<String, (String, f64, &'static str)>,
}

impl MemoryProjection for Memory {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for change in changes(events)? {
            match change {
                Change::Open { id, owner, balance } => {
                    self.accounts.insert(id, (owner, balance));
                }
                Change::Credit { id, amount } => {
                    if let Some(account) = self.accounts.get_mut(&id) {
                        account.1 += amount;
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
    Sqlite(eventsource::backend::sqlite::Database),
    #[cfg(feature = "postgres")]
    Postgres(eventsource::backend::postgres::PgPool, String),
}

/// The projection on the stores' own database, and its queries.
pub fn open(stores: &Stores) -> Result<(Arc<Projection>, Queries), Error> {
    #[cfg(feature = "sqlite")]
    if let Some(subscriptions) = stores.sqlite() {
        let database = subscriptions.database().clone();
        let tables = Tables {
            prefix: String::new(),
        };
        let model = eventsource::backend::sqlite::SqliteReadModel::new(subscriptions.clone(), tables);
        return Ok((projection(stores, model)?, Queries::Sqlite(database)));
    }
    #[cfg(feature = "postgres")]
    if let Some(events) = stores.postgres() {
        let prefix = events
            .schema()
            .map_or(String::new(), |schema| format!("\"{schema}\"."));
        let tables = Tables {
            prefix: prefix.clone(),
        };
        let model =
            eventsource::backend::postgres::PostgresReadModel::new(events.subscription_store(), tables);
        return Ok((
            projection(stores, model)?,
            Queries::Postgres(events.pool().clone(), prefix),
        ));
    }
    let model = InMemoryReadModel::new(Memory::default());
    Ok((projection(stores, model.clone())?, Queries::Memory(model)))
}

fn projection(
    stores: &Stores,
    model: impl eventsource::projection::ReadModelStore + 'static,
) -> Result<Arc<Projection>, Error> {
    Ok(Arc::new(
        Projection::new(NAME, stores.events.clone(), model)?
            .aggregate_type("Account")
            .aggregate_type("Order"),
    ))
}

const SUMMARY: &str = "SELECT count(*), coalesce(sum(balance), 0) FROM {p}bank_accounts";
const BY_STATUS: &str = "SELECT id, account_id, amount FROM {p}bank_orders WHERE status = $1 ORDER BY id";
const EMPTY: &str = "DELETE FROM {p}bank_accounts; DELETE FROM {p}bank_orders";

/// A statement with its tables in the schema `prefix` names (`"schema".` or nothing).
fn sql(statement: &str, prefix: &str) -> String {
    statement.replace("{p}", prefix)
}

impl Queries {
    /// How many accounts there are and their total balance.
    pub async fn summary(&self) -> Result<Value, Error> {
        let (accounts, total): (i64, f64) = match self {
            Queries::Memory(model) => {
                model.read(|m| (m.accounts.len() as i64, m.accounts.values().map(|a| a.1).sum()))
            }
            #[cfg(feature = "sqlite")]
            Queries::Sqlite(database) => {
                database
                    .call(|c| c.query_row(&sql(SUMMARY, ""), [], |r| Ok((r.get(0)?, r.get(1)?))))
                    .await?
            }
            #[cfg(feature = "postgres")]
            Queries::Postgres(pool, prefix) => {
                eventsource::backend::postgres::sqlx::query_as(&sql(SUMMARY, prefix))
                    .fetch_one(pool)
                    .await
                    .map_err(|e| Error::store("postgres", "cannot read the summary", e))?
            }
        };
        Ok(json!({ "accounts": accounts, "total_balance": total }))
    }

    /// The orders with `status`.
    pub async fn orders(&self, status: OrderStatus) -> Result<Value, Error> {
        let status = status_name(status);
        let rows: Vec<(String, String, f64)> = match self {
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
                eventsource::backend::postgres::sqlx::query_as(&sql(BY_STATUS, prefix))
                    .bind(status)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| Error::store("postgres", "cannot read the orders", e))?
            }
        };
        let orders: Vec<Value> = rows
            .into_iter()
            .map(|(id, account_id, amount)| json!({ "id": id, "account_id": account_id, "amount": amount }))
            .collect();
        Ok(json!({ "status": status, "orders": orders }))
    }
}
