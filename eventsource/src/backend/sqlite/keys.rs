//! The SQLite key store: the keys of data subjects beside the events.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::OptionalExtension;
use uuid::Uuid;

use super::prefix::Prefix;
use super::{parse_timestamp, schema, store_error, timestamp_text, Database};
use crate::error::{Error, Result};
use crate::personal::{
    other_key, validate_subject, Forgetting, KeyState, KeyStore, SubjectKey, SubjectRecord,
};

const MAKE_KEY: &str = "INSERT OR IGNORE INTO {p}eventsource_subject_keys (subject, key, created_at)
    VALUES (?1, ?2, ?3)";

const LINK: &str =
    "INSERT OR IGNORE INTO {p}eventsource_subject_streams (subject, aggregate_type, aggregate_id)
    VALUES (?1, ?2, ?3)";

const STATE: &str =
    "SELECT key, forgetting_since, forgotten_at FROM {p}eventsource_subject_keys WHERE subject = ?1";

const BEGIN_FORGETTING: &str = "UPDATE {p}eventsource_subject_keys
    SET forgetting_since = coalesce(forgetting_since, ?2) WHERE subject = ?1";

const FINISH_FORGETTING: &str = "UPDATE {p}eventsource_subject_keys
    SET key = NULL, forgotten_at = coalesce(forgotten_at, ?2)
    WHERE subject = ?1 AND forgetting_since IS NOT NULL";

const STREAMS: &str = "SELECT aggregate_type, aggregate_id FROM {p}eventsource_subject_streams
    WHERE subject = ?1 ORDER BY aggregate_type, aggregate_id";

const EXPORT: &str = "SELECT subject, key, forgetting_since, forgotten_at FROM {p}eventsource_subject_keys
    WHERE subject > ?1 ORDER BY subject LIMIT ?2";

const IMPORT_FORGETTING: &str = "UPDATE {p}eventsource_subject_keys
    SET forgetting_since = coalesce(forgetting_since, ?2) WHERE subject = ?1 AND ?2 IS NOT NULL";

const UNFINISHED: &str = "SELECT subject FROM {p}eventsource_subject_keys
    WHERE forgetting_since IS NOT NULL AND forgotten_at IS NULL ORDER BY subject";

/// The key store's statements on the tables of its prefix.
struct Sql {
    make_key: String,
    link: String,
    state: String,
    begin_forgetting: String,
    finish_forgetting: String,
    streams: String,
    unfinished: String,
    export: String,
    import_forgetting: String,
}

impl Sql {
    fn new(prefix: &Prefix) -> Self {
        Sql {
            make_key: prefix.sql(MAKE_KEY),
            link: prefix.sql(LINK),
            state: prefix.sql(STATE),
            begin_forgetting: prefix.sql(BEGIN_FORGETTING),
            finish_forgetting: prefix.sql(FINISH_FORGETTING),
            streams: prefix.sql(STREAMS),
            unfinished: prefix.sql(UNFINISHED),
            export: prefix.sql(EXPORT),
            import_forgetting: prefix.sql(IMPORT_FORGETTING),
        }
    }
}

/// The keys of data subjects (see [`crate::personal`]) in a SQLite database, the events' own:
/// the tables `eventsource_subject_keys` and `eventsource_subject_streams`. Cheap to clone.
#[derive(Clone)]
pub struct SqliteKeyStore {
    database: Database,
    sql: Arc<Sql>,
}

impl std::fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// A subject's row: its key, when its forgetting began and when it finished.
type Row = (Option<Vec<u8>>, Option<String>, Option<String>);

impl SqliteKeyStore {
    /// The key store on a database of the program's own, such as the event store's
    /// ([`SqliteEventStore::database`](super::SqliteEventStore::database)), creating or
    /// upgrading the tables.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the database fails;
    /// [`Error::InvalidConfiguration`](crate::Error::InvalidConfiguration) for tables that are
    /// not this library's or of a newer layout.
    ///
    /// # Cancel safety
    ///
    /// Dropped, nothing is left open. Creating the tables, or bringing them up to date, runs on
    /// the database's thread to its end.
    pub async fn on(database: Database) -> Result<Self> {
        schema::migrate(&database).await?;
        Ok(Self::migrated(database))
    }

    /// The key store on a database whose tables are of the current layout.
    pub(crate) fn migrated(database: Database) -> Self {
        let sql = Arc::new(Sql::new(database.table_prefix()));
        SqliteKeyStore { database, sql }
    }

    async fn read<T: Send + 'static>(
        &self,
        what: String,
        read: impl Fn(&rusqlite::Connection, &Sql) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let sql = self.sql.clone();
        self.database
            .read(move |connection| read(connection, &sql))
            .await
            .map_err(|e| store_error(what, e))
    }

    async fn write<T: Send + 'static>(
        &self,
        what: String,
        write: impl FnOnce(&rusqlite::Transaction<'_>, &Sql) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let sql = self.sql.clone();
        self.database
            .write(move |connection| {
                let run = || {
                    let transaction = connection.transaction()?;
                    let outcome = write(&transaction, &sql)?;
                    transaction.commit()?;
                    Ok(outcome)
                };
                run().map_err(|e: rusqlite::Error| store_error(what, e))
            })
            .await
    }
}

fn row(connection: &rusqlite::Connection, sql: &Sql, subject: &str) -> rusqlite::Result<Option<Row>> {
    connection
        .prepare_cached(&sql.state)?
        .query_row([subject], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
}

fn state_of(subject: &str, row: &Row) -> Result<KeyState> {
    match row {
        (Some(key), None, _) => Ok(KeyState::Active(SubjectKey::from_stored(key, subject)?)),
        _ => Ok(KeyState::Forgotten),
    }
}

fn now() -> Result<String> {
    timestamp_text(&Utc::now(), || "the clock".to_owned())
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn key_for_writing(
        &self,
        subject: &str,
        aggregate_type: &str,
        aggregate_id: Uuid,
        new_key: &SubjectKey,
    ) -> Result<KeyState> {
        validate_subject(subject)?;
        let (owned, key, at) = (subject.to_owned(), new_key.as_bytes().to_vec(), now()?);
        let (aggregate_type, id) = (aggregate_type.to_owned(), aggregate_id.to_string());
        let stored = self
            .write(
                format!("cannot make the key of subject {subject}"),
                move |tx, sql| {
                    tx.prepare_cached(&sql.make_key)?
                        .execute(rusqlite::params![owned, key, at])?;
                    tx.prepare_cached(&sql.link)?
                        .execute(rusqlite::params![owned, aggregate_type, id])?;
                    row(tx, sql, &owned)
                },
            )
            .await?;
        let stored = stored
            .ok_or_else(|| Error::corrupt("the key store", format!("the key of {subject} vanished")))?;
        state_of(subject, &stored)
    }

    async fn keys_for_reading(&self, subjects: &[&str]) -> Result<Vec<Option<KeyState>>> {
        let owned: Vec<String> = subjects.iter().map(|s| (*s).to_owned()).collect();
        let rows = self
            .read(
                "cannot read the keys of data subjects".to_owned(),
                move |connection, sql| {
                    owned
                        .iter()
                        .map(|s| row(connection, sql, s))
                        .collect::<rusqlite::Result<Vec<_>>>()
                },
            )
            .await?;
        subjects
            .iter()
            .zip(rows)
            .map(|(subject, row)| row.map(|row| state_of(subject, &row)).transpose())
            .collect()
    }

    async fn begin_forgetting(&self, subject: &str) -> Result<Forgetting> {
        validate_subject(subject)?;
        let (owned, at) = (subject.to_owned(), now()?);
        let stored = self
            .write(
                format!("cannot begin forgetting subject {subject}"),
                move |tx, sql| {
                    tx.prepare_cached(&sql.make_key)?.execute(rusqlite::params![
                        owned,
                        None::<Vec<u8>>,
                        at
                    ])?;
                    tx.prepare_cached(&sql.begin_forgetting)?
                        .execute(rusqlite::params![owned, at])?;
                    row(tx, sql, &owned)
                },
            )
            .await?;
        let (key, since, finished) = stored
            .ok_or_else(|| Error::corrupt("the key store", format!("the key of {subject} vanished")))?;
        let what = || format!("the key of subject {subject}");
        let since = since.ok_or_else(|| Error::corrupt(what(), "its forgetting did not begin"))?;
        Ok(Forgetting::new(
            key.map(|k| SubjectKey::from_stored(&k, subject)).transpose()?,
            parse_timestamp(&since, "forgetting_since", what)?,
            finished
                .map(|at| parse_timestamp(&at, "forgotten_at", what))
                .transpose()?,
        ))
    }

    async fn streams_of(&self, subject: &str) -> Result<Vec<(String, Uuid)>> {
        let owned = subject.to_owned();
        let rows = self
            .read(
                format!("cannot list the streams of subject {subject}"),
                move |connection, sql| {
                    connection
                        .prepare_cached(&sql.streams)?
                        .query_map([&owned], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                },
            )
            .await?;
        rows.into_iter()
            .map(|(ty, id)| {
                let id = Uuid::parse_str(&id).map_err(|e| {
                    Error::corrupt(
                        format!("the streams of subject {subject}"),
                        format!("{id:?} is no uuid: {e}"),
                    )
                })?;
                Ok((ty, id))
            })
            .collect()
    }

    async fn finish_forgetting(&self, subject: &str) -> Result<()> {
        let (owned, at) = (subject.to_owned(), now()?);
        let changed = self
            .write(
                format!("cannot finish forgetting subject {subject}"),
                move |tx, sql| {
                    tx.prepare_cached(&sql.finish_forgetting)?
                        .execute(rusqlite::params![owned, at])
                },
            )
            .await?;
        match changed {
            0 => Err(crate::backend::memory::not_forgetting(subject)),
            _ => Ok(()),
        }
    }

    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<SubjectRecord>> {
        let (after, limit) = (
            after.unwrap_or("").to_owned(),
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        let rows = self
            .read(
                "cannot list the subjects of the key store".to_owned(),
                move |connection, sql| {
                    let subjects: Vec<(String, Option<Vec<u8>>, Option<String>, Option<String>)> = connection
                        .prepare_cached(&sql.export)?
                        .query_map(rusqlite::params![after, limit], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut rows = Vec::with_capacity(subjects.len());
                    for (subject, key, since, at) in subjects {
                        let streams: Vec<(String, String)> = connection
                            .prepare_cached(&sql.streams)?
                            .query_map([&subject], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect::<rusqlite::Result<_>>()?;
                        rows.push((subject, key, since, at, streams));
                    }
                    Ok(rows)
                },
            )
            .await?;
        rows.into_iter()
            .map(|(subject, key, since, at, streams)| {
                let what = || format!("the key of subject {subject}");
                let streams = streams
                    .into_iter()
                    .map(|(ty, id)| {
                        Uuid::parse_str(&id)
                            .map(|id| (ty, id))
                            .map_err(|e| Error::corrupt(what(), format!("stream id {id:?} is no uuid: {e}")))
                    })
                    .collect::<Result<_>>()?;
                Ok(SubjectRecord::new(
                    subject.clone(),
                    key.map(|k| SubjectKey::from_stored(&k, &subject)).transpose()?,
                    since
                        .map(|t| parse_timestamp(&t, "forgetting_since", what))
                        .transpose()?,
                    at.map(|t| parse_timestamp(&t, "forgotten_at", what))
                        .transpose()?,
                    streams,
                ))
            })
            .collect()
    }

    async fn import(&self, record: &SubjectRecord) -> Result<()> {
        validate_subject(&record.subject)?;
        let text = |at: Option<chrono::DateTime<Utc>>| {
            at.map(|at| timestamp_text(&at, || format!("the key of subject {}", record.subject)))
                .transpose()
        };
        let (since, finished, now) = (text(record.forgetting_since)?, text(record.forgotten_at)?, now()?);
        let subject = record.subject.clone();
        let key = record.key.as_ref().map(|k| k.as_bytes().to_vec());
        let streams: Vec<(String, String)> = record
            .streams
            .iter()
            .map(|(ty, id)| (ty.clone(), id.to_string()))
            .collect();
        let same = self
            .write(
                format!("cannot import subject {}", record.subject),
                move |tx, sql| {
                    tx.prepare_cached(&sql.make_key)?
                        .execute(rusqlite::params![subject, key, now])?;
                    let here: Option<Vec<u8>> = row(tx, sql, &subject)?.and_then(|(k, _, _)| k);
                    if let (Some(here), Some(there)) = (&here, &key) {
                        if here != there {
                            return Ok(false);
                        }
                    }
                    tx.prepare_cached(&sql.import_forgetting)?
                        .execute(rusqlite::params![subject, since])?;
                    if finished.is_some() {
                        tx.prepare_cached(&sql.finish_forgetting)?
                            .execute(rusqlite::params![subject, finished])?;
                    }
                    for (ty, id) in &streams {
                        tx.prepare_cached(&sql.link)?
                            .execute(rusqlite::params![subject, ty, id])?;
                    }
                    Ok(true)
                },
            )
            .await?;
        match same {
            true => Ok(()),
            false => Err(other_key(&record.subject)),
        }
    }

    async fn unfinished(&self) -> Result<Vec<String>> {
        self.read(
            "cannot list the forgettings unfinished".to_owned(),
            |connection, sql| {
                connection
                    .prepare_cached(&sql.unfinished)?
                    .query_map([], |r| r.get(0))?
                    .collect()
            },
        )
        .await
    }
}
