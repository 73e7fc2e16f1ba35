//! One read model for both SQL backends: a [`SqlProjection`] is written once and kept in
//! SQLite or PostgreSQL, whichever the stores are.
//!
//! A projection of a backend's own kind
//! ([`PostgresProjection`](crate::backend::postgres::PostgresProjection),
//! [`SqliteProjection`](crate::backend::sqlite::SqliteProjection)) is handed that backend's
//! transaction. A `SqlProjection` is handed [`SqlWrites`] instead: it says which statements a
//! batch makes, with `$1`, `$2`, ... placeholders and [`SqlValue`] parameters, and the read
//! model runs them, in order, in the transaction that then stores the checkpoint. Exactly
//! once holds as for the backend's own read models (see [`crate::projection`]): the
//! statements and the checkpoint commit together or not at all.
//!
//! The statements are written once, so they must mean the same to both databases. What
//! does:
//!
//! - tables of `TEXT`, `BIGINT`, `DOUBLE PRECISION` and `BYTEA`/`BLOB` columns, ids kept as
//!   text (a [`Uuid`] parameter is its hyphenated text);
//! - `INSERT ... ON CONFLICT (...) DO UPDATE SET n = t.n + excluded.n`, which computes the
//!   new row from the stored one without reading it first;
//! - `CAST($1 AS BIGINT)` where PostgreSQL cannot tell a parameter's type (a `NULL`
//!   parameter is sent as text).
//!
//! A read model that must read rows before deciding what to write is written per backend,
//! with the backend's own projection trait.

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::projection::{ReadModelStore, Row, StreamKey, VerifiableReadModel};
use crate::subscription::{HandlerError, SubscriptionStore};

/// A parameter of a [`SqlWrites`] statement.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    /// `NULL` (sent to PostgreSQL as text: cast it where the column is of another type).
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// A double-precision float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(value: $t) -> Self {
                SqlValue::Integer(value.into())
            }
        }
    )*};
}

integer_values!(i64, i32, i16, u32, u16, bool);

impl From<f64> for SqlValue {
    fn from(value: f64) -> Self {
        SqlValue::Real(value)
    }
}

impl From<&str> for SqlValue {
    fn from(value: &str) -> Self {
        SqlValue::Text(value.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(value: String) -> Self {
        SqlValue::Text(value)
    }
}

impl From<Uuid> for SqlValue {
    fn from(value: Uuid) -> Self {
        SqlValue::Text(value.hyphenated().to_string())
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(value: Vec<u8>) -> Self {
        SqlValue::Blob(value)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(SqlValue::Null, Into::into)
    }
}

/// The statements a [`SqlProjection`] makes for a batch (or a set-up, a reset, a switch), run
/// in order in the read model's transaction.
#[derive(Debug, Default)]
pub struct SqlWrites {
    statements: Vec<(String, Vec<SqlValue>)>,
}

impl SqlWrites {
    /// Adds a statement with `$1`, `$2`, ... placeholders and their parameters
    /// (`[till.into(), amount.into()]`, or `[]` for none).
    pub fn execute(&mut self, sql: &str, params: impl IntoIterator<Item = SqlValue>) -> &mut Self {
        self.statements
            .push((sql.to_owned(), params.into_iter().collect()));
        self
    }

    /// The statements added so far, in order.
    pub fn statements(&self) -> impl Iterator<Item = (&str, &[SqlValue])> {
        self.statements
            .iter()
            .map(|(sql, params)| (sql.as_str(), params.as_slice()))
    }
}

/// The queries that read the rows of one stream in a [`SqlProjection`]'s tables, for
/// [`Projection::verify`](crate::projection::Projection::verify).
#[derive(Debug, Default)]
pub struct SqlReads {
    queries: Vec<(String, String, Vec<SqlValue>)>,
}

impl SqlReads {
    /// Adds a `SELECT` with `$1`, `$2`, ... placeholders and their parameters, whose rows
    /// verify shows under the name `table`.
    pub fn query(&mut self, table: &str, sql: &str, params: impl IntoIterator<Item = SqlValue>) -> &mut Self {
        self.queries
            .push((table.to_owned(), sql.to_owned(), params.into_iter().collect()));
        self
    }

    /// The queries added so far, in order: the table name, the statement, its parameters.
    pub fn queries(&self) -> impl Iterator<Item = (&str, &str, &[SqlValue])> {
        self.queries
            .iter()
            .map(|(table, sql, params)| (table.as_str(), sql.as_str(), params.as_slice()))
    }
}

/// A projection whose read model is SQL tables, written once for SQLite and PostgreSQL; see
/// the [module docs](self). Each method adds the statements of its step to `writes`; a method
/// that fails runs none of them and rolls the transaction back.
pub trait SqlProjection: Send + 'static {
    /// Creates the read model's tables if missing (`CREATE TABLE IF NOT EXISTS`).
    fn setup(&mut self, writes: &mut SqlWrites) -> std::result::Result<(), HandlerError> {
        let _ = writes;
        Ok(())
    }

    /// The statements that apply a batch of events, in feed order.
    fn apply(
        &mut self,
        writes: &mut SqlWrites,
        events: &[StoredEvent],
    ) -> std::result::Result<(), HandlerError>;

    /// The statements that empty the read model, for a rebuild.
    fn reset(&mut self, writes: &mut SqlWrites) -> std::result::Result<(), HandlerError>;

    /// The statements that make this read model the one queries read (for instance a view
    /// over its tables, dropped and created again), for a blue/green rebuild. None by default.
    fn go_live(&mut self, writes: &mut SqlWrites) -> std::result::Result<(), HandlerError> {
        let _ = writes;
        Ok(())
    }

    /// For [`Projection::verify`](crate::projection::Projection::verify): the same projection
    /// with its tables in the schema `schema`, where verifying rebuilds streams into empty
    /// temporary tables, in a transaction it rolls back (`pg_temp` on PostgreSQL, `temp` on
    /// SQLite); `None`, the default, if it cannot be verified, which makes `verify` refuse it.
    /// A projection whose statements put a prefix before its tables' names, as they must to
    /// follow the stores' `?schema=`, gives itself with the prefix `"{schema}."`.
    fn scratch(&self, schema: &str) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = schema;
        None
    }

    /// For verifying: the queries that read the rows the events of `stream` made, in this
    /// projection's tables (the live ones, or the scratch copy's). Columns of text, integer,
    /// floating-point, boolean, bytes, UUID and timestamp types are read; cast others to
    /// text. Leave out rows that do not follow from the events of one stream alone (a total
    /// over every stream). None by default.
    fn stream_rows(&self, stream: &StreamKey, reads: &mut SqlReads) {
        let _ = (stream, reads);
    }
}

/// A [`SqlProjection`]'s read model, in the database of the stores' subscription store.
pub struct SqlReadModel<P> {
    inner: Inner<P>,
    /// Whether the projection gives a scratch copy of itself.
    verifiable: bool,
}

impl<P> std::fmt::Debug for SqlReadModel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.inner {
            #[cfg(feature = "postgres")]
            Inner::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(_) => "sqlite",
        };
        f.debug_struct("SqlReadModel")
            .field("projection", &std::any::type_name::<P>())
            .field("backend", &backend)
            .field("verifiable", &self.verifiable)
            .finish()
    }
}

enum Inner<P> {
    #[cfg(feature = "postgres")]
    Postgres(crate::backend::postgres::PostgresReadModel<Portable<P>>),
    #[cfg(feature = "sqlite")]
    Sqlite(crate::backend::sqlite::SqliteReadModel<Portable<P>>),
}

impl<P: SqlProjection> SqlReadModel<P> {
    /// The read model of `projection` in the database of `stores` (from
    /// [`backend::open`](crate::backend::open)). In-memory stores have no SQL database:
    /// [`Error::InvalidConfiguration`].
    pub fn on(stores: &crate::backend::Stores, projection: P) -> Result<Self> {
        #[cfg(feature = "postgres")]
        if let Some(events) = stores.postgres() {
            return Ok(Self::postgres(events.subscription_store(), projection));
        }
        #[cfg(feature = "sqlite")]
        if let Some(subscriptions) = stores.sqlite() {
            return Ok(Self::sqlite(subscriptions.clone(), projection));
        }
        let _ = projection;
        Err(Error::InvalidConfiguration(format!(
            "a SQL read model needs SQLite or PostgreSQL stores, not {}",
            stores.backend_name()
        )))
    }

    /// The read model of `projection` in the PostgreSQL database of `subscriptions`.
    #[cfg(feature = "postgres")]
    pub fn postgres(
        subscriptions: crate::backend::postgres::PostgresSubscriptionStore,
        projection: P,
    ) -> Self {
        SqlReadModel {
            verifiable: projection.scratch(on_postgres::SCRATCH_SCHEMA).is_some(),
            inner: Inner::Postgres(crate::backend::postgres::PostgresReadModel::new(
                subscriptions,
                Portable(projection),
            )),
        }
    }

    /// The read model of `projection` in the SQLite database of `subscriptions`.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(subscriptions: crate::backend::sqlite::SqliteSubscriptionStore, projection: P) -> Self {
        SqlReadModel {
            verifiable: projection.scratch(on_sqlite::SCRATCH_SCHEMA).is_some(),
            inner: Inner::Sqlite(crate::backend::sqlite::SqliteReadModel::new(
                subscriptions,
                Portable(projection),
            )),
        }
    }
}

/// Dispatches to the backend's read model.
macro_rules! each_backend {
    ($self:expr, $model:ident => $body:expr) => {
        match &$self.inner {
            #[cfg(feature = "postgres")]
            Inner::Postgres($model) => $body,
            #[cfg(feature = "sqlite")]
            Inner::Sqlite($model) => $body,
        }
    };
}

#[async_trait]
impl<P: SqlProjection> ReadModelStore for SqlReadModel<P> {
    fn subscriptions(&self) -> Arc<dyn SubscriptionStore> {
        each_backend!(self, model => model.subscriptions())
    }

    async fn setup(&self) -> std::result::Result<(), HandlerError> {
        each_backend!(self, model => model.setup().await)
    }

    async fn commit(
        &self,
        name: &str,
        owner: Uuid,
        after: Option<u64>,
        events: &[StoredEvent],
        last: u64,
    ) -> std::result::Result<bool, HandlerError> {
        each_backend!(self, model => model.commit(name, owner, after, events, last).await)
    }

    async fn reset(&self, name: &str) -> std::result::Result<(), HandlerError> {
        each_backend!(self, model => model.reset(name).await)
    }

    async fn go_live(&self) -> std::result::Result<(), HandlerError> {
        each_backend!(self, model => model.go_live().await)
    }

    fn verifier(&self) -> Option<&dyn VerifiableReadModel> {
        match self.verifiable {
            true => Some(self),
            false => None,
        }
    }
}

#[async_trait]
impl<P: SqlProjection> VerifiableReadModel for SqlReadModel<P> {
    async fn stream_rows(&self, stream: &StreamKey) -> std::result::Result<Vec<Row>, HandlerError> {
        each_backend!(self, model => model.live_rows(stream).await)
    }

    async fn rebuilt_rows(
        &self,
        stream: &StreamKey,
        events: &[StoredEvent],
    ) -> std::result::Result<Vec<Row>, HandlerError> {
        each_backend!(self, model => model.scratch_rows(stream, events).await)
    }
}

/// The rows of one stream in a backend's read model of a [`SqlProjection`], live and
/// rebuilt in a scratch copy.
#[async_trait]
trait StreamRows {
    async fn live_rows(&self, stream: &StreamKey) -> std::result::Result<Vec<Row>, HandlerError>;

    async fn scratch_rows(
        &self,
        stream: &StreamKey,
        events: &[StoredEvent],
    ) -> std::result::Result<Vec<Row>, HandlerError>;
}

/// The scratch copy of `projection` in `schema`, or why there is none.
fn scratch_of<P: SqlProjection>(projection: &P, schema: &str) -> std::result::Result<P, HandlerError> {
    projection
        .scratch(schema)
        .ok_or_else(|| "the projection gives no scratch copy of itself".into())
}

/// The queries `projection` reads the rows of `stream` with.
fn reads_of<P: SqlProjection>(projection: &P, stream: &StreamKey) -> SqlReads {
    let mut reads = SqlReads::default();
    projection.stream_rows(stream, &mut reads);
    reads
}

/// Bytes as verifying shows them: hexadecimal, as PostgreSQL's `bytea` text.
fn hex(bytes: &[u8]) -> serde_json::Value {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    serde_json::Value::String(format!("\\x{digits}"))
}

/// A [`SqlProjection`] as each backend's own projection: its statements, run in the backend's
/// transaction.
struct Portable<P>(P);

impl<P> Portable<P> {
    fn writes(
        &mut self,
        step: impl FnOnce(&mut P, &mut SqlWrites) -> std::result::Result<(), HandlerError>,
    ) -> std::result::Result<SqlWrites, HandlerError> {
        let mut writes = SqlWrites::default();
        step(&mut self.0, &mut writes)?;
        Ok(writes)
    }
}

#[cfg(feature = "postgres")]
mod on_postgres {
    use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

    use super::*;
    use crate::backend::postgres::{PgTransaction, PostgresProjection, PostgresReadModel};

    /// Where verifying rebuilds streams: the connection's temporary tables.
    pub(super) const SCRATCH_SCHEMA: &str = "pg_temp";

    impl SqlReads {
        async fn run_postgres(
            self,
            connection: &mut sqlx::PgConnection,
        ) -> std::result::Result<Vec<Row>, HandlerError> {
            let mut rows = Vec::new();
            for (table, sql, params) in self.queries {
                let mut query = sqlx::query(&sql).persistent(false);
                for param in params {
                    query = bind(query, param);
                }
                for row in query.fetch_all(&mut *connection).await? {
                    rows.push(Row::new(&table, values(&row)?));
                }
            }
            Ok(rows)
        }
    }

    fn bind(
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        param: SqlValue,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match param {
            SqlValue::Null => query.bind(None::<String>),
            SqlValue::Integer(v) => query.bind(v),
            SqlValue::Real(v) => query.bind(v),
            SqlValue::Text(v) => query.bind(v),
            SqlValue::Blob(v) => query.bind(v),
        }
    }

    /// A row's values by column name, of the types verifying reads.
    fn values(row: &sqlx::postgres::PgRow) -> std::result::Result<serde_json::Value, HandlerError> {
        use serde_json::Value;
        let mut values = serde_json::Map::new();
        for (i, column) in row.columns().iter().enumerate() {
            let value = if row.try_get_raw(i)?.is_null() {
                Value::Null
            } else {
                match column.type_info().name() {
                    "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => Value::from(row.try_get::<String, _>(i)?),
                    "INT2" => Value::from(row.try_get::<i16, _>(i)?),
                    "INT4" => Value::from(row.try_get::<i32, _>(i)?),
                    "INT8" => Value::from(row.try_get::<i64, _>(i)?),
                    "FLOAT4" => Value::from(row.try_get::<f32, _>(i)?),
                    "FLOAT8" => Value::from(row.try_get::<f64, _>(i)?),
                    "BOOL" => Value::from(row.try_get::<bool, _>(i)?),
                    "BYTEA" => hex(&row.try_get::<Vec<u8>, _>(i)?),
                    "UUID" => Value::from(row.try_get::<Uuid, _>(i)?.to_string()),
                    "TIMESTAMPTZ" => Value::from(
                        row.try_get::<sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>, _>(i)?
                            .to_rfc3339(),
                    ),
                    "TIMESTAMP" => Value::from(row.try_get::<sqlx::types::chrono::NaiveDateTime, _>(i)?.to_string()),
                    other => {
                        return Err(format!(
                            "column `{}` is of type {other}, which verifying does not read: cast it to text in the query",
                            column.name()
                        )
                        .into())
                    }
                }
            };
            values.insert(column.name().to_owned(), value);
        }
        Ok(Value::Object(values))
    }

    #[async_trait]
    impl<P: SqlProjection> StreamRows for PostgresReadModel<Portable<P>> {
        async fn live_rows(&self, stream: &StreamKey) -> std::result::Result<Vec<Row>, HandlerError> {
            let reads = reads_of(&self.projection().lock().await.0, stream);
            // Read only: a query that would write fails instead.
            let mut tx = self.pool().begin().await?;
            sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
            let rows = reads.run_postgres(&mut tx).await;
            let _ = tx.rollback().await;
            rows
        }

        async fn scratch_rows(
            &self,
            stream: &StreamKey,
            events: &[StoredEvent],
        ) -> std::result::Result<Vec<Row>, HandlerError> {
            let mut scratch = Portable(scratch_of(&self.projection().lock().await.0, SCRATCH_SCHEMA)?);
            let (pool, stream, events) = (self.pool().clone(), stream.clone(), events.to_vec());
            // In a task of its own, as the read model's transactions are: a caller that stops
            // waiting never leaves it open on a pooled connection. It is always rolled back,
            // so its temporary tables go with it, and so would any write of the live tables.
            tokio::spawn(async move {
                let mut tx = pool.begin().await?;
                let rows = async {
                    scratch.writes(P::setup)?.run_postgres(&mut tx).await?;
                    if !events.is_empty() {
                        scratch
                            .writes(|p, w| p.apply(w, &events))?
                            .run_postgres(&mut tx)
                            .await?;
                    }
                    reads_of(&scratch.0, &stream).run_postgres(&mut tx).await
                }
                .await;
                let _ = tx.rollback().await;
                rows
            })
            .await
            .map_err(|e| HandlerError::from(format!("a verifying transaction panicked: {e}")))?
        }
    }

    impl SqlWrites {
        async fn run_postgres(self, tx: &mut PgTransaction) -> std::result::Result<(), HandlerError> {
            for (sql, params) in self.statements {
                // Not kept prepared: a statement's parameter types are those of its first
                // run, and a portable statement's values may be of other types at each run
                // (an integer, then a NULL).
                let mut query = sqlx::query(&sql).persistent(false);
                for param in params {
                    query = bind(query, param);
                }
                query.execute(&mut **tx).await?;
            }
            Ok(())
        }
    }

    #[async_trait]
    impl<P: SqlProjection> PostgresProjection for Portable<P> {
        async fn setup(&mut self, tx: &mut PgTransaction) -> std::result::Result<(), HandlerError> {
            self.writes(P::setup)?.run_postgres(tx).await
        }

        async fn apply(
            &mut self,
            tx: &mut PgTransaction,
            events: &[StoredEvent],
        ) -> std::result::Result<(), HandlerError> {
            self.writes(|p, w| p.apply(w, events))?.run_postgres(tx).await
        }

        async fn reset(&mut self, tx: &mut PgTransaction) -> std::result::Result<(), HandlerError> {
            self.writes(P::reset)?.run_postgres(tx).await
        }

        async fn go_live(&mut self, tx: &mut PgTransaction) -> std::result::Result<(), HandlerError> {
            self.writes(P::go_live)?.run_postgres(tx).await
        }
    }
}

#[cfg(feature = "sqlite")]
mod on_sqlite {
    use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
    use rusqlite::Transaction;

    use super::*;
    use crate::backend::sqlite::{SqliteProjection, SqliteReadModel};

    /// Where verifying rebuilds streams: the connection's temporary tables.
    pub(super) const SCRATCH_SCHEMA: &str = "temp";

    impl SqlReads {
        fn run_sqlite(
            self,
            connection: &rusqlite::Connection,
        ) -> std::result::Result<Vec<Row>, HandlerError> {
            let mut rows = Vec::new();
            for (table, sql, params) in self.queries {
                let mut statement = connection.prepare(&sqlite_placeholders(&sql))?;
                let names: Vec<String> = statement.column_names().into_iter().map(str::to_owned).collect();
                let mut found = statement.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(row) = found.next()? {
                    let mut values = serde_json::Map::new();
                    for (i, name) in names.iter().enumerate() {
                        let value = match row.get_ref(i)? {
                            ValueRef::Null => serde_json::Value::Null,
                            ValueRef::Integer(v) => v.into(),
                            ValueRef::Real(v) => v.into(),
                            ValueRef::Text(v) => String::from_utf8_lossy(v).into_owned().into(),
                            ValueRef::Blob(v) => hex(v),
                        };
                        values.insert(name.clone(), value);
                    }
                    rows.push(Row::new(&table, serde_json::Value::Object(values)));
                }
            }
            Ok(rows)
        }
    }

    /// The outcome of a call on the database: the store's error, or the projection's.
    fn flatten<T>(
        outcome: Result<std::result::Result<T, HandlerError>>,
    ) -> std::result::Result<T, HandlerError> {
        outcome?
    }

    #[async_trait]
    impl<P: SqlProjection> StreamRows for SqliteReadModel<Portable<P>> {
        async fn live_rows(&self, stream: &StreamKey) -> std::result::Result<Vec<Row>, HandlerError> {
            let reads = {
                let projection = self.projection().lock().unwrap_or_else(|p| p.into_inner());
                reads_of(&projection.0, stream)
            };
            // In a transaction rolled back: a query that would write changes nothing.
            let rows = self
                .database()
                .call(move |connection| {
                    let tx = connection.transaction()?;
                    let rows = reads.run_sqlite(&tx);
                    tx.rollback()?;
                    Ok(rows)
                })
                .await;
            flatten(rows)
        }

        async fn scratch_rows(
            &self,
            stream: &StreamKey,
            events: &[StoredEvent],
        ) -> std::result::Result<Vec<Row>, HandlerError> {
            let mut scratch = {
                let projection = self.projection().lock().unwrap_or_else(|p| p.into_inner());
                Portable(scratch_of(&projection.0, SCRATCH_SCHEMA)?)
            };
            let (stream, events) = (stream.clone(), events.to_vec());
            // One transaction, always rolled back: its temporary tables go with it, and so
            // would any write of the live tables.
            let rows = self
                .database()
                .call(move |connection| {
                    let tx = connection.transaction()?;
                    let rows = (|| {
                        scratch.writes(P::setup)?.run_sqlite(&tx)?;
                        if !events.is_empty() {
                            scratch.writes(|p, w| p.apply(w, &events))?.run_sqlite(&tx)?;
                        }
                        reads_of(&scratch.0, &stream).run_sqlite(&tx)
                    })();
                    tx.rollback()?;
                    Ok(rows)
                })
                .await;
            flatten(rows)
        }
    }

    impl ToSql for SqlValue {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(ToSqlOutput::Borrowed(match self {
                SqlValue::Null => ValueRef::Null,
                SqlValue::Integer(v) => ValueRef::Integer(*v),
                SqlValue::Real(v) => ValueRef::Real(*v),
                SqlValue::Text(v) => ValueRef::Text(v.as_bytes()),
                SqlValue::Blob(v) => ValueRef::Blob(v),
            }))
        }
    }

    impl SqlWrites {
        fn run_sqlite(self, tx: &Transaction<'_>) -> std::result::Result<(), HandlerError> {
            for (sql, params) in self.statements {
                tx.execute(
                    &sqlite_placeholders(&sql),
                    rusqlite::params_from_iter(params.iter()),
                )?;
            }
            Ok(())
        }
    }

    impl<P: SqlProjection> SqliteProjection for Portable<P> {
        fn setup(&mut self, tx: &Transaction<'_>) -> std::result::Result<(), HandlerError> {
            self.writes(P::setup)?.run_sqlite(tx)
        }

        fn apply(
            &mut self,
            tx: &Transaction<'_>,
            events: &[StoredEvent],
        ) -> std::result::Result<(), HandlerError> {
            self.writes(|p, w| p.apply(w, events))?.run_sqlite(tx)
        }

        fn reset(&mut self, tx: &Transaction<'_>) -> std::result::Result<(), HandlerError> {
            self.writes(P::reset)?.run_sqlite(tx)
        }

        fn go_live(&mut self, tx: &Transaction<'_>) -> std::result::Result<(), HandlerError> {
            self.writes(P::go_live)?.run_sqlite(tx)
        }
    }

    /// PostgreSQL's `$1` placeholders as SQLite's `?1`, outside quoted text and names and
    /// outside comments.
    pub(super) fn sqlite_placeholders(sql: &str) -> String {
        // What the scanner is in: code, or text that ends at the given character(s).
        let mut out = String::with_capacity(sql.len());
        let mut inside: Option<&str> = None;
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            match inside {
                Some("*/") if c == '*' && chars.peek() == Some(&'/') => {
                    out.push(chars.next().unwrap_or('/'));
                    inside = None;
                }
                Some("\n") if c == '\n' => inside = None,
                Some("'") if c == '\'' => inside = None,
                Some("\"") if c == '"' => inside = None,
                Some(_) => {}
                None => match c {
                    '\'' => inside = Some("'"),
                    '"' => inside = Some("\""),
                    '-' if chars.peek() == Some(&'-') => inside = Some("\n"),
                    '/' if chars.peek() == Some(&'*') => inside = Some("*/"),
                    '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                        out.pop();
                        out.push('?');
                    }
                    _ => {}
                },
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn placeholders_become_sqlites_outside_quotes() {
            assert_eq!(
                super::sqlite_placeholders("UPDATE t SET a = $2, b = '$1', \"c$1\" = $10 WHERE k = $1"),
                "UPDATE t SET a = ?2, b = '$1', \"c$1\" = ?10 WHERE k = ?1"
            );
            assert_eq!(
                super::sqlite_placeholders(
                    "-- the till's total\nUPDATE t /* it's $9 */ SET a = $2 WHERE k = $1"
                ),
                "-- the till's total\nUPDATE t /* it's $9 */ SET a = ?2 WHERE k = ?1"
            );
        }
    }
}
