//! The SQLite snapshot store.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::OptionalExtension;
use uuid::Uuid;

use super::prefix::Prefix;
use super::{parse_timestamp, schema, signed, store_error, timestamp_text, unsigned, Database};
use crate::abilities::SnapshotListing;
use crate::error::{Error, Result};
use crate::snapshot::{validate_snapshot, Snapshot, SnapshotStore, SnapshotVersion};

// The version guard is in the statement, so two racing writers cannot leave the older one
// stored. A stored version that is not a non-negative integer is corrupt and gives way.
const UPSERT: &str = "INSERT INTO {p}snapshots
        (aggregate_id, aggregate_type, version, state, schema_version, created_at, event_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (aggregate_id, aggregate_type, schema_version) DO UPDATE SET
        version = excluded.version,
        event_id = excluded.event_id,
        state = excluded.state,
        created_at = excluded.created_at
    WHERE excluded.version >= {p}snapshots.version
        OR typeof({p}snapshots.version) <> 'integer'
        OR {p}snapshots.version < 0";

// A schema version stored as anything but an integer compares above every integer in
// SQLite, so it is never returned: it is not a snapshot any reader can use.
const GET: &str = "SELECT version, state, schema_version, created_at, event_id FROM {p}snapshots
    WHERE aggregate_id = ?1 AND aggregate_type = ?2 AND schema_version <= ?3
    ORDER BY schema_version DESC LIMIT 1";

const DELETE: &str = "DELETE FROM {p}snapshots WHERE aggregate_id = ?1 AND aggregate_type = ?2";

const EXISTS: &str = "SELECT 1 FROM {p}snapshots WHERE aggregate_id = ?1 AND aggregate_type = ?2";

const DELETE_TYPE: &str = "DELETE FROM {p}snapshots WHERE aggregate_type = ?1";

const DELETE_TYPE_BELOW: &str = "DELETE FROM {p}snapshots WHERE aggregate_type = ?1 AND schema_version < ?2";

const VERSIONS: &str =
    "SELECT aggregate_id, schema_version, version FROM {p}snapshots WHERE aggregate_type = ?1";

/// The snapshot store's statements on the table of its prefix, built once when it opens.
struct Sql {
    upsert: String,
    get: String,
    delete: String,
    exists: String,
    delete_type: String,
    delete_type_below: String,
    versions: String,
}

impl Sql {
    fn new(prefix: &Prefix) -> Self {
        Self {
            upsert: prefix.sql(UPSERT),
            get: prefix.sql(GET),
            delete: prefix.sql(DELETE),
            exists: prefix.sql(EXISTS),
            delete_type: prefix.sql(DELETE_TYPE),
            delete_type_below: prefix.sql(DELETE_TYPE_BELOW),
            versions: prefix.sql(VERSIONS),
        }
    }
}

/// Picks one of the store's statements.
type Statement = fn(&Sql) -> &str;

/// A snapshot store in a SQLite database.
///
/// Cheap to clone: clones share the connections. It can share one database with a
/// [`SqliteEventStore`](super::SqliteEventStore): see [`open`](super::open).
#[derive(Clone)]
pub struct SqliteSnapshotStore {
    database: Database,
    sql: Arc<Sql>,
}

impl std::fmt::Debug for SqliteSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSnapshotStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl SqliteSnapshotStore {
    /// Opens the store on a file, created if missing, or on `:memory:`, creating its table if
    /// missing. On a file its commits are not synced to disk one by one (see
    /// [`open`](super::open)).
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the file cannot be opened or is no SQLite
    /// database; [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration) for tables
    /// that are not this library's or of a newer layout.
    ///
    /// # Cancel safety
    ///
    /// Dropped, nothing is left open. Creating the tables, or bringing them up to date, runs on
    /// the database's thread to its end.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::on(super::snapshot_database(path.as_ref()).await?).await
    }

    /// The store on a database of the program's own, creating its table if missing, with
    /// the database's table prefix ([`Database::with_prefix`]).
    ///
    /// Creates or upgrades the tables (see the [module docs](super#storage)); a table named
    /// `events` or `snapshots` (after the prefix) that is not this library's is
    /// [`Error::InvalidConfiguration`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the file cannot be opened or is no SQLite
    /// database; [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration) for tables
    /// that are not this library's or of a newer layout.
    ///
    /// # Cancel safety
    ///
    /// Dropped, nothing is left open. Creating the tables, or bringing them up to date, runs on
    /// the database's thread to its end.
    pub async fn on(database: Database) -> Result<Self> {
        schema::migrate(&database).await?;
        let sql = Arc::new(Sql::new(database.table_prefix()));
        Ok(Self { database, sql })
    }

    /// The database the store runs on.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Runs one write statement, returning how many rows it changed.
    async fn change(
        &self,
        statement: Statement,
        params: Vec<rusqlite::types::Value>,
        failure: String,
    ) -> Result<usize> {
        let sql = self.sql.clone();
        self.database
            .write(move |connection| {
                let mut statement = connection
                    .prepare_cached(statement(&sql))
                    .map_err(|e| store_error(failure.clone(), e))?;
                statement
                    .execute(rusqlite::params_from_iter(params))
                    .map_err(|e| store_error(failure, e))
            })
            .await
    }
}

/// A snapshot row's columns, as stored.
struct Row {
    version: Value,
    state: Value,
    schema_version: Value,
    created_at: Value,
    event_id: Value,
}

/// One stored value, owned.
type Value = rusqlite::types::Value;

#[async_trait]
impl SnapshotStore for SqliteSnapshotStore {
    async fn get_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        schema_version: u32,
    ) -> Result<Option<Snapshot>> {
        let key = (
            aggregate_id.hyphenated().to_string(),
            aggregate_type.to_owned(),
            i64::from(schema_version),
        );
        let sql = self.sql.clone();
        let row = self
            .database
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&sql.get)?;
                statement
                    .query_row((&key.0, &key.1, key.2), |row| {
                        Ok(Row {
                            version: row.get(0)?,
                            state: row.get(1)?,
                            schema_version: row.get(2)?,
                            created_at: row.get(3)?,
                            event_id: row.get(4)?,
                        })
                    })
                    .optional()
            })
            .await
            .map_err(|e| {
                store_error(
                    format!("cannot read the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        let Some(row) = row else { return Ok(None) };

        let what = || format!("the SQLite snapshot of {aggregate_type} {aggregate_id}");
        let integer = |value: &Value, column: &str| match ValueRef::from(value) {
            ValueRef::Integer(n) => Ok(n),
            other => Err(Error::corrupt(
                what(),
                format!("column `{column}` holds {:?}, not an integer", other.data_type()),
            )),
        };
        let text = |value: Value, column: &str| match value {
            Value::Text(text) => Ok(text),
            other => Err(Error::corrupt(
                what(),
                format!("column `{column}` holds {:?}, not text", other.data_type()),
            )),
        };
        let version = integer(&row.version, "version")?;
        let schema_version = integer(&row.schema_version, "schema_version")?;
        let created_at = text(row.created_at, "created_at")?;
        let event_id = match row.event_id {
            Value::Null => None,
            other => {
                let text = text(other, "event_id")?;
                Some(Uuid::parse_str(&text).map_err(|e| {
                    Error::corrupt(
                        what(),
                        format!("column `event_id` holds {text:?}, not a uuid: {e}"),
                    )
                })?)
            }
        };
        Ok(Some(Snapshot {
            aggregate_id,
            aggregate_type: aggregate_type.to_owned(),
            version: unsigned(version, "version", what)?,
            event_id,
            state: text(row.state, "state")?,
            schema_version: unsigned(schema_version, "schema_version", what)?,
            created_at: parse_timestamp(&created_at, "created_at", what)?,
        }))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        validate_snapshot(snapshot)?;
        let what = || {
            format!(
                "snapshot of {} {}",
                snapshot.aggregate_type, snapshot.aggregate_id
            )
        };
        let params = vec![
            Value::Text(snapshot.aggregate_id.hyphenated().to_string()),
            Value::Text(snapshot.aggregate_type.clone()),
            Value::Integer(signed(snapshot.version, "snapshot version")?),
            Value::Text(snapshot.state.clone()),
            Value::Integer(i64::from(snapshot.schema_version)),
            Value::Text(timestamp_text(&snapshot.created_at, what)?),
            snapshot
                .event_id
                .map_or(Value::Null, |id| Value::Text(id.hyphenated().to_string())),
        ];
        let written = self
            .change(|sql| &sql.upsert, params, format!("cannot save the {}", what()))
            .await?;
        Ok(written > 0)
    }

    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        let deleted = self
            .change(
                |sql| &sql.delete,
                vec![
                    Value::Text(aggregate_id.hyphenated().to_string()),
                    Value::Text(aggregate_type.to_owned()),
                ],
                format!("cannot delete the snapshot of {aggregate_type} {aggregate_id}"),
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        let key = (aggregate_id.hyphenated().to_string(), aggregate_type.to_owned());
        let sql = self.sql.clone();
        self.database
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&sql.exists)?;
                statement.exists((&key.0, &key.1))
            })
            .await
            .map_err(|e| {
                store_error(
                    format!("cannot look up the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })
    }

    async fn delete_snapshots_by_type(
        &self,
        aggregate_type: &str,
        schema_version_below: Option<u32>,
    ) -> Result<u64> {
        let failure = format!("cannot delete the snapshots of {aggregate_type}");
        let ty = Value::Text(aggregate_type.to_owned());
        let deleted = match schema_version_below {
            Some(below) => {
                self.change(
                    |sql| &sql.delete_type_below,
                    vec![ty, Value::Integer(i64::from(below))],
                    failure,
                )
                .await?
            }
            None => self.change(|sql| &sql.delete_type, vec![ty], failure).await?,
        };
        Ok(deleted as u64)
    }
}

#[async_trait]
impl SnapshotListing for SqliteSnapshotStore {
    async fn snapshot_versions(&self, aggregate_type: &str) -> Result<Vec<SnapshotVersion>> {
        let (ty, sql) = (aggregate_type.to_owned(), self.sql.clone());
        let rows: Vec<(String, i64, i64)> = self
            .database
            .read(move |connection| {
                connection
                    .prepare_cached(&sql.versions)?
                    .query_map([&ty], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect()
            })
            .await
            .map_err(|e| store_error(format!("cannot list the snapshots of {aggregate_type}"), e))?;
        rows.into_iter()
            .map(|(id, schema_version, version)| {
                let what = || format!("the SQLite snapshot of {aggregate_type} {id}");
                Ok(SnapshotVersion {
                    aggregate_id: Uuid::parse_str(&id)
                        .map_err(|e| Error::corrupt(what(), format!("aggregate_id {id:?}: {e}")))?,
                    schema_version: unsigned(schema_version, "schema_version", what)?,
                    version: unsigned(version, "version", what)?,
                })
            })
            .collect()
    }
}
