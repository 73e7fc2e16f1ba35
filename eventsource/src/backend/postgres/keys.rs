//! The PostgreSQL key store: the keys of data subjects beside the events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{query_error, PostgresKeyStore};
use crate::error::{Error, Result};
use crate::personal::{
    other_key, validate_subject, Forgetting, KeyState, KeyStore, SubjectKey, SubjectRecord,
};

/// A subject's row: its key, when its forgetting began and when it finished.
type Row = (Option<Vec<u8>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// How often a key is asked for again when a writer racing on a new subject made it between
/// this statement's snapshot and its insert: once is enough, the row is committed by then.
const RACES: usize = 3;

fn state_of(subject: &str, row: &Row) -> Result<KeyState> {
    match row {
        (Some(key), None, _) => Ok(KeyState::Active(SubjectKey::from_stored(key, subject)?)),
        _ => Ok(KeyState::Forgotten),
    }
}

#[async_trait]
impl KeyStore for PostgresKeyStore {
    async fn key_for_writing(
        &self,
        subject: &str,
        aggregate_type: &str,
        aggregate_id: Uuid,
        new_key: &SubjectKey,
    ) -> Result<KeyState> {
        validate_subject(subject)?;
        let (keys, streams) = (&self.layout.subject_keys, &self.layout.subject_streams);
        // One round trip: the key made unless there is one, the stream linked, and the key
        // read back. A key committed by another writer after this statement began is not
        // seen by its read: then nothing is returned and the statement runs again.
        let sql = format!(
            "WITH made AS (
                INSERT INTO {keys} (subject, key) VALUES ($1, $2)
                ON CONFLICT (subject) DO NOTHING
                RETURNING key, forgetting_since, forgotten_at
            ), linked AS (
                INSERT INTO {streams} (subject, aggregate_type, aggregate_id) VALUES ($1, $3, $4)
                ON CONFLICT DO NOTHING
            )
            SELECT key, forgetting_since, forgotten_at FROM made
            UNION ALL
            SELECT key, forgetting_since, forgotten_at FROM {keys} WHERE subject = $1
            LIMIT 1"
        );
        for _ in 0..RACES {
            let row: Option<Row> = sqlx::query_as(&sql)
                .bind(subject)
                .bind(new_key.as_bytes().as_slice())
                .bind(aggregate_type)
                .bind(aggregate_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| query_error(&format!("cannot make the key of subject {subject}"), e))?;
            if let Some(row) = row {
                return state_of(subject, &row);
            }
        }
        Err(Error::store_permanent(
            super::BACKEND,
            format!("the key of subject {subject} was neither made nor found"),
            std::io::Error::other("key store race"),
        ))
    }

    async fn keys_for_reading(&self, subjects: &[&str]) -> Result<Vec<Option<KeyState>>> {
        let rows: Vec<(
            String,
            Option<Vec<u8>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(&format!(
            "SELECT subject, key, forgetting_since, forgotten_at FROM {} WHERE subject = ANY($1)",
            self.layout.subject_keys
        ))
        .bind(subjects)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error("cannot read the keys of data subjects", e))?;
        subjects
            .iter()
            .map(|subject| {
                rows.iter()
                    .find(|(s, ..)| s == subject)
                    .map(|(_, key, since, at)| state_of(subject, &(key.clone(), *since, *at)))
                    .transpose()
            })
            .collect()
    }

    async fn begin_forgetting(&self, subject: &str) -> Result<Forgetting> {
        validate_subject(subject)?;
        let row: Row = sqlx::query_as(&format!(
            "INSERT INTO {} AS k (subject, key, forgetting_since) VALUES ($1, NULL, now())
             ON CONFLICT (subject) DO UPDATE SET forgetting_since = coalesce(k.forgetting_since, now())
             RETURNING key, forgetting_since, forgotten_at",
            self.layout.subject_keys
        ))
        .bind(subject)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot begin forgetting subject {subject}"), e))?;
        let (key, since, finished) = row;
        let since = since.ok_or_else(|| {
            Error::corrupt(
                format!("the key of subject {subject}"),
                "its forgetting did not begin",
            )
        })?;
        Ok(Forgetting::new(
            key.map(|k| SubjectKey::from_stored(&k, subject)).transpose()?,
            since,
            finished,
        ))
    }

    async fn streams_of(&self, subject: &str) -> Result<Vec<(String, Uuid)>> {
        sqlx::query_as(&format!(
            "SELECT aggregate_type, aggregate_id FROM {} WHERE subject = $1 ORDER BY aggregate_type, aggregate_id",
            self.layout.subject_streams
        ))
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot list the streams of subject {subject}"), e))
    }

    async fn finish_forgetting(&self, subject: &str) -> Result<()> {
        let finished = sqlx::query(&format!(
            "UPDATE {} SET key = NULL, forgotten_at = coalesce(forgotten_at, now())
             WHERE subject = $1 AND forgetting_since IS NOT NULL",
            self.layout.subject_keys
        ))
        .bind(subject)
        .execute(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot finish forgetting subject {subject}"), e))?;
        match finished.rows_affected() {
            0 => Err(crate::backend::memory::not_forgetting(subject)),
            _ => Ok(()),
        }
    }

    async fn export(&self, after: Option<&str>, limit: usize) -> Result<Vec<SubjectRecord>> {
        let fail = |e| query_error("cannot list the subjects of the key store", e);
        let rows: Vec<(
            String,
            Option<Vec<u8>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(&format!(
            "SELECT subject, key, forgetting_since, forgotten_at FROM {}
                 WHERE subject COLLATE \"C\" > $1 ORDER BY subject COLLATE \"C\" LIMIT $2",
            self.layout.subject_keys
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(fail)?;
        let subjects: Vec<&str> = rows.iter().map(|(s, ..)| s.as_str()).collect();
        let streams: Vec<(String, String, Uuid)> = sqlx::query_as(&format!(
            "SELECT subject, aggregate_type, aggregate_id FROM {} WHERE subject = ANY($1)
             ORDER BY subject, aggregate_type, aggregate_id",
            self.layout.subject_streams
        ))
        .bind(&subjects)
        .fetch_all(&self.pool)
        .await
        .map_err(fail)?;
        rows.into_iter()
            .map(|(subject, key, since, at)| {
                let held = streams
                    .iter()
                    .filter(|(s, ..)| *s == subject)
                    .map(|(_, ty, id)| (ty.clone(), *id))
                    .collect();
                let key = key.map(|k| SubjectKey::from_stored(&k, &subject)).transpose()?;
                Ok(SubjectRecord::new(subject, key, since, at, held))
            })
            .collect()
    }

    async fn import(&self, record: &SubjectRecord) -> Result<()> {
        validate_subject(&record.subject)?;
        let subject = record.subject.as_str();
        let fail = |e| query_error(&format!("cannot import subject {subject}"), e);
        let mut tx = self.pool.begin().await.map_err(fail)?;
        let key = record.key.as_ref().map(|k| k.as_bytes().to_vec());
        let here: Option<Vec<u8>> = sqlx::query_scalar(&format!(
            "WITH made AS (
                INSERT INTO {keys} (subject, key) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING
                RETURNING key
            )
            SELECT key FROM made UNION ALL SELECT key FROM {keys} WHERE subject = $1 LIMIT 1",
            keys = self.layout.subject_keys
        ))
        .bind(subject)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .map_err(fail)?;
        if let (Some(here), Some(there)) = (&here, &key) {
            if here != there {
                return Err(other_key(subject));
            }
        }
        sqlx::query(&format!(
            "UPDATE {} SET forgetting_since = coalesce(forgetting_since, $2),
                 key = CASE WHEN $3::timestamptz IS NULL THEN key END,
                 forgotten_at = coalesce(forgotten_at, $3)
             WHERE subject = $1",
            self.layout.subject_keys
        ))
        .bind(subject)
        .bind(record.forgetting_since)
        .bind(record.forgotten_at)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        let (types, ids): (Vec<&str>, Vec<Uuid>) =
            record.streams.iter().map(|(t, id)| (t.as_str(), *id)).unzip();
        sqlx::query(&format!(
            "INSERT INTO {} (subject, aggregate_type, aggregate_id)
             SELECT $1, t, i FROM unnest($2::text[], $3::uuid[]) AS s(t, i)
             ON CONFLICT DO NOTHING",
            self.layout.subject_streams
        ))
        .bind(subject)
        .bind(&types)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn unfinished(&self) -> Result<Vec<String>> {
        sqlx::query_scalar(&format!(
            "SELECT subject FROM {} WHERE forgetting_since IS NOT NULL AND forgotten_at IS NULL ORDER BY subject",
            self.layout.subject_keys
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error("cannot list the forgettings unfinished", e))
    }
}
