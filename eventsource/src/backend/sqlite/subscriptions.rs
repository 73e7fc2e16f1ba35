//! The SQLite subscription store: checkpoints, leases and dead letters beside the events.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::OptionalExtension;
use uuid::Uuid;

use super::prefix::Prefix;
use super::{parse_timestamp, schema, store_error, timestamp_text, unsigned, Database};
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::subscription::{
    validate_name, validate_stored_name, DeadLetter, SubscriptionStatus, SubscriptionStore,
};

/// The lease goes to `owner` if nobody holds it, `owner` does, or the holder's ran out.
const ACQUIRE: &str = "INSERT INTO {p}eventsource_subscriptions (name, owner, lease_until)
    VALUES (?1, ?2, ?3)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
    WHERE {p}eventsource_subscriptions.owner IS NULL
        OR {p}eventsource_subscriptions.owner = excluded.owner
        OR {p}eventsource_subscriptions.lease_until < ?4";

const RELEASE: &str = "UPDATE {p}eventsource_subscriptions SET owner = NULL, lease_until = NULL
    WHERE name = ?1 AND owner = ?2";

const CHECKPOINT: &str = "SELECT position FROM {p}eventsource_subscriptions WHERE name = ?1";

const SAVE: &str = "UPDATE {p}eventsource_subscriptions SET position = ?3
    WHERE name = ?1 AND owner = ?2 AND lease_until > ?4";

/// A read model's commit: the checkpoint moves from `?4` only, for the lease's owner.
const ADVANCE: &str = "UPDATE {p}eventsource_subscriptions SET position = ?3
    WHERE name = ?1 AND owner = ?2 AND position IS ?4";

/// The checkpoint of a name, and those of its consumer group's state (`NAME#...`).
const RESET: &str = "UPDATE {p}eventsource_subscriptions SET position = NULL
    WHERE name = ?1 OR substr(name, 1, length(?1) + 1) = ?1 || '#'";

const DEAD_LETTER: &str = "INSERT INTO {p}eventsource_dead_letters
        (subscription, position, event_id, event_type, error, failed_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const DEAD_LETTERS: &str = "SELECT position, event_id, event_type, error, failed_at
    FROM {p}eventsource_dead_letters WHERE subscription = ?1 ORDER BY id LIMIT ?3 OFFSET ?2";

const REMOVE_DEAD_LETTER: &str =
    "DELETE FROM {p}eventsource_dead_letters WHERE subscription = ?1 AND event_id = ?2";

const REDACT_DEAD_LETTER: &str =
    "UPDATE {p}eventsource_dead_letters SET error = ?4 WHERE subscription = ?1 AND event_id = ?2 AND error = ?3";

const SUBSCRIPTIONS: &str = "SELECT s.name, s.position, CASE WHEN s.lease_until > ?1 THEN s.owner END,
        (SELECT count(*) FROM {p}eventsource_dead_letters d WHERE d.subscription = s.name),
        s.owner IS NOT NULL AND s.lease_until <= ?1
    FROM {p}eventsource_subscriptions s ORDER BY s.name";

/// The subscription store's statements on the tables of its prefix, built once when it
/// opens; a [`SqliteReadModel`](super::SqliteReadModel) runs `advance` and `reset`.
pub(super) struct Sql {
    acquire: String,
    release: String,
    checkpoint: String,
    save: String,
    pub(super) advance: String,
    pub(super) reset: String,
    dead_letter: String,
    dead_letters: String,
    remove_dead_letter: String,
    redact_dead_letter: String,
    subscriptions: String,
}

impl Sql {
    fn new(prefix: &Prefix) -> Self {
        Self {
            acquire: prefix.sql(ACQUIRE),
            release: prefix.sql(RELEASE),
            checkpoint: prefix.sql(CHECKPOINT),
            save: prefix.sql(SAVE),
            advance: prefix.sql(ADVANCE),
            reset: prefix.sql(RESET),
            dead_letter: prefix.sql(DEAD_LETTER),
            dead_letters: prefix.sql(DEAD_LETTERS),
            remove_dead_letter: prefix.sql(REMOVE_DEAD_LETTER),
            redact_dead_letter: prefix.sql(REDACT_DEAD_LETTER),
            subscriptions: prefix.sql(SUBSCRIPTIONS),
        }
    }
}

/// Picks one of the store's statements.
type Statement = fn(&Sql) -> &str;

/// A subscription store in a SQLite database, usually the events' own.
///
/// Lease times are the wall clock of the machine in milliseconds: every process sharing a file
/// runs on one machine, so they agree on it.
#[derive(Clone)]
pub struct SqliteSubscriptionStore {
    database: Database,
    sql: Arc<Sql>,
}

impl std::fmt::Debug for SqliteSubscriptionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSubscriptionStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl SqliteSubscriptionStore {
    /// Opens the store on a file, created if missing, or on `:memory:`.
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
        Self::on(Database::open(path).await?).await
    }

    /// The database the store runs on: a read model's tables go there, beside the checkpoints.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The store on a database of the program's own, such as the event store's
    /// ([`SqliteEventStore::database`](super::SqliteEventStore::database)), creating or
    /// upgrading the tables, with the database's table prefix ([`Database::with_prefix`]).
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

    /// The statements on the store's tables.
    pub(super) fn sql(&self) -> &Arc<Sql> {
        &self.sql
    }

    async fn change(&self, statement: Statement, params: Vec<Value>, what: String) -> Result<usize> {
        let sql = self.sql.clone();
        self.database
            .write(move |connection| {
                connection
                    .prepare_cached(statement(&sql))
                    .and_then(|mut statement| statement.execute(rusqlite::params_from_iter(params)))
                    .map_err(|e| store_error(what, e))
            })
            .await
    }
}

type Value = rusqlite::types::Value;

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn text(value: impl ToString) -> Value {
    Value::Text(value.to_string())
}

#[async_trait]
impl SubscriptionStore for SqliteSubscriptionStore {
    async fn acquire(&self, name: &str, owner: Uuid, ttl: Duration) -> Result<bool> {
        validate_name(name)?;
        let now = SystemTime::now();
        let params = vec![
            text(name),
            text(owner),
            Value::Integer(millis(now).saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64)),
            Value::Integer(millis(now)),
        ];
        let changed = self
            .change(
                |sql| &sql.acquire,
                params,
                format!("cannot take the lease of subscription {name}"),
            )
            .await?;
        Ok(changed > 0)
    }

    async fn release(&self, name: &str, owner: Uuid) -> Result<()> {
        validate_stored_name(name)?;
        self.change(
            |sql| &sql.release,
            vec![text(name), text(owner)],
            format!("cannot give up the lease of subscription {name}"),
        )
        .await
        .map(drop)
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        validate_stored_name(name)?;
        let (key, sql) = (name.to_owned(), self.sql.clone());
        let stored: Option<Option<i64>> = self
            .database
            .read(move |connection| {
                connection
                    .prepare_cached(&sql.checkpoint)?
                    .query_row([&key], |row| row.get(0))
                    .optional()
            })
            .await
            .map_err(|e| store_error(format!("cannot read the checkpoint of subscription {name}"), e))?;
        let what = || format!("the checkpoint of subscription {name}");
        stored
            .flatten()
            .map(|p| unsigned(p, "position", what))
            .transpose()
    }

    async fn save_checkpoint(&self, name: &str, owner: Uuid, position: u64) -> Result<bool> {
        validate_stored_name(name)?;
        let position = i64::try_from(position).map_err(|_| {
            Error::InvalidInput(format!("checkpoint {position} is beyond what SQLite can store"))
        })?;
        let params = vec![
            text(name),
            text(owner),
            Value::Integer(position),
            Value::Integer(millis(SystemTime::now())),
        ];
        let changed = self
            .change(
                |sql| &sql.save,
                params,
                format!("cannot store the checkpoint of subscription {name}"),
            )
            .await?;
        Ok(changed > 0)
    }

    async fn reset(&self, name: &str) -> Result<()> {
        validate_stored_name(name)?;
        self.change(
            |sql| &sql.reset,
            vec![text(name)],
            format!("cannot reset subscription {name}"),
        )
        .await
        .map(drop)
    }

    async fn dead_letter(&self, name: &str, event: &StoredEvent, error: &str) -> Result<()> {
        validate_name(name)?;
        let failed_at = timestamp_text(&chrono::Utc::now(), || format!("a dead letter of {name}"))?;
        let params = vec![
            text(name),
            Value::Integer(i64::try_from(event.position).unwrap_or(i64::MAX)),
            text(event.event_id.hyphenated()),
            text(&event.event_type),
            text(error),
            Value::Text(failed_at),
        ];
        self.change(
            |sql| &sql.dead_letter,
            params,
            format!("cannot record a dead letter of subscription {name}"),
        )
        .await
        .map(drop)
    }

    async fn remove_dead_letters(&self, name: &str, event_ids: &[Uuid]) -> Result<u64> {
        validate_stored_name(name)?;
        let (key, ids, sql) = (name.to_owned(), event_ids.to_vec(), self.sql.clone());
        let what = format!("cannot remove dead letters of subscription {name}");
        self.database
            .write(move |connection| {
                let remove = || -> rusqlite::Result<u64> {
                    let tx = connection.transaction()?;
                    let mut removed = 0;
                    {
                        let mut delete = tx.prepare_cached(&sql.remove_dead_letter)?;
                        for id in ids {
                            removed += delete.execute((&key, id.hyphenated().to_string()))? as u64;
                        }
                    }
                    tx.commit()?;
                    Ok(removed)
                };
                remove().map_err(|e| store_error(what, e))
            })
            .await
    }

    async fn redact_dead_letter(
        &self,
        name: &str,
        event_id: Uuid,
        error: &str,
        redacted: &str,
    ) -> Result<u64> {
        validate_stored_name(name)?;
        let params = vec![
            text(name),
            text(event_id.hyphenated()),
            text(error),
            text(redacted),
        ];
        let changed = self
            .change(
                |sql| &sql.redact_dead_letter,
                params,
                format!("cannot redact a dead letter of subscription {name}"),
            )
            .await?;
        Ok(changed as u64)
    }

    async fn dead_letters(&self, name: &str, skip: usize, limit: usize) -> Result<Vec<DeadLetter>> {
        validate_stored_name(name)?;
        let (key, sql) = (name.to_owned(), self.sql.clone());
        let (skip, limit) = (
            i64::try_from(skip).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        let rows: Vec<(i64, String, String, String, String)> = self
            .database
            .read(move |connection| {
                connection
                    .prepare_cached(&sql.dead_letters)?
                    .query_map(rusqlite::params![key, skip, limit], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
                    })?
                    .collect()
            })
            .await
            .map_err(|e| store_error(format!("cannot read the dead letters of subscription {name}"), e))?;
        let what = || format!("a dead letter of subscription {name}");
        rows.into_iter()
            .map(|(position, event_id, event_type, error, failed_at)| {
                Ok(DeadLetter {
                    subscription: name.to_owned(),
                    position: unsigned(position, "position", what)?,
                    event_id: Uuid::parse_str(&event_id)
                        .map_err(|e| Error::corrupt(what(), format!("event_id {event_id:?}: {e}")))?,
                    event_type,
                    error,
                    failed_at: parse_timestamp(&failed_at, "failed_at", what)?,
                })
            })
            .collect()
    }
    async fn subscriptions(&self) -> Result<Vec<SubscriptionStatus>> {
        let (now, sql) = (millis(SystemTime::now()), self.sql.clone());
        let rows: Vec<(String, Option<i64>, Option<String>, i64, Option<bool>)> = self
            .database
            .read(move |connection| {
                connection
                    .prepare_cached(&sql.subscriptions)?
                    .query_map([now], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
                    })?
                    .collect()
            })
            .await
            .map_err(|e| store_error("cannot list the subscriptions", e))?;
        rows.into_iter()
            .map(|(name, position, owner, dead_letters, abandoned)| {
                let what = || format!("subscription {name}");
                Ok(SubscriptionStatus {
                    checkpoint: position.map(|p| unsigned(p, "position", what)).transpose()?,
                    owner: owner
                        .map(|o| {
                            Uuid::parse_str(&o)
                                .map_err(|e| Error::corrupt(what(), format!("owner {o:?}: {e}")))
                        })
                        .transpose()?,
                    dead_letters: unsigned(dead_letters, "dead letters", what)?,
                    abandoned: abandoned.unwrap_or(false),
                    name,
                })
            })
            .collect()
    }
}
