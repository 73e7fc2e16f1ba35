//! The SQLite snapshot store.

use std::path::Path;

use async_trait::async_trait;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{parse_timestamp, schema, signed, timestamp_text, unsigned, BACKEND};
use crate::error::{Error, Result};
use crate::snapshot::{Snapshot, SnapshotStore};

// The version guard is in the statement, so two racing writers cannot leave the older one
// stored. A stored version that is not a non-negative integer is corrupt and gives way.
const UPSERT: &str = "INSERT INTO snapshots
        (aggregate_id, aggregate_type, version, state, schema_version, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE SET
        version = excluded.version,
        state = excluded.state,
        schema_version = excluded.schema_version,
        created_at = excluded.created_at
    WHERE excluded.version >= snapshots.version
        OR typeof(snapshots.version) <> 'integer'
        OR snapshots.version < 0";

/// A snapshot store in a SQLite database.
///
/// Cheap to clone: clones share the pool. It can share one pool, and one file, with a
/// [`SqliteEventStore`](super::SqliteEventStore): see [`open`](super::open).
#[derive(Clone, Debug)]
pub struct SqliteSnapshotStore {
    pool: SqlitePool,
}

impl SqliteSnapshotStore {
    /// Opens the store on a file, created if missing, or on `:memory:`, creating its table if
    /// missing. On a file its commits are not synced to disk one by one (see
    /// [`open`](super::open)).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_pool(super::snapshot_pool(path.as_ref()).await?).await
    }

    /// The store on a pool of the program's own, creating its table if missing.
    ///
    /// On an in-memory database the pool must keep a single connection (or use a named
    /// shared-cache database) so that all its connections see one database.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        schema::SNAPSHOTS.create(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl SnapshotStore for SqliteSnapshotStore {
    async fn get_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<Option<Snapshot>> {
        let id = aggregate_id.hyphenated().to_string();
        let row = sqlx::query(
            "SELECT version, state, schema_version, created_at FROM snapshots
            WHERE aggregate_id = ?1 AND aggregate_type = ?2",
        )
        .bind(id.as_str())
        .bind(aggregate_type)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| {
            Error::store(
                BACKEND,
                format!("cannot read the snapshot of {aggregate_type} {aggregate_id}"),
                e,
            )
        })?;
        let Some(row) = row else { return Ok(None) };

        let what = || format!("the SQLite snapshot of {aggregate_type} {aggregate_id}");
        let column = |name: &'static str| {
            move |e: sqlx::Error| Error::corrupt(what(), format!("column `{name}`: {e}"))
        };
        let version: i64 = row.try_get(0).map_err(column("version"))?;
        let state: String = row.try_get(1).map_err(column("state"))?;
        let schema_version: i64 = row.try_get(2).map_err(column("schema_version"))?;
        let created_at: &str = row.try_get(3).map_err(column("created_at"))?;
        Ok(Some(Snapshot {
            aggregate_id,
            aggregate_type: aggregate_type.to_owned(),
            version: unsigned(version, "version", what)?,
            state,
            schema_version: unsigned(schema_version, "schema_version", what)?,
            created_at: parse_timestamp(created_at, "created_at", what)?,
        }))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        let what = || {
            format!(
                "snapshot of {} {}",
                snapshot.aggregate_type, snapshot.aggregate_id
            )
        };
        let written = sqlx::query(UPSERT)
            .bind(snapshot.aggregate_id.hyphenated().to_string())
            .bind(snapshot.aggregate_type.as_str())
            .bind(signed(snapshot.version, "snapshot version")?)
            .bind(snapshot.state.as_str())
            .bind(i64::from(snapshot.schema_version))
            .bind(timestamp_text(&snapshot.created_at, what)?)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::store(BACKEND, format!("cannot save the {}", what()), e))?;
        Ok(written.rows_affected() > 0)
    }

    #[tracing::instrument(name = "eventsource.snapshot.delete", level = "debug", skip_all,
        fields(aggregate.id = %aggregate_id, aggregate.type = aggregate_type))]
    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM snapshots WHERE aggregate_id = ?1 AND aggregate_type = ?2")
            .bind(aggregate_id.hyphenated().to_string())
            .bind(aggregate_type)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                Error::store(
                    BACKEND,
                    format!("cannot delete the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM snapshots WHERE aggregate_id = ?1 AND aggregate_type = ?2")
                .bind(aggregate_id.hyphenated().to_string())
                .bind(aggregate_type)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| {
                    Error::store(
                        BACKEND,
                        format!("cannot look up the snapshot of {aggregate_type} {aggregate_id}"),
                        e,
                    )
                })?;
        Ok(found.is_some())
    }

    #[tracing::instrument(name = "eventsource.snapshot.delete_by_type", level = "debug", skip_all,
        fields(aggregate.type = aggregate_type, schema_version_below = ?schema_version_below))]
    async fn delete_snapshots_by_type(
        &self,
        aggregate_type: &str,
        schema_version_below: Option<u32>,
    ) -> Result<u64> {
        let query = match schema_version_below {
            Some(below) => {
                sqlx::query("DELETE FROM snapshots WHERE aggregate_type = ?1 AND schema_version < ?2")
                    .bind(aggregate_type)
                    .bind(i64::from(below))
            }
            None => sqlx::query("DELETE FROM snapshots WHERE aggregate_type = ?1").bind(aggregate_type),
        };
        let deleted = query.execute(&self.pool).await.map_err(|e| {
            Error::store(
                BACKEND,
                format!("cannot delete the snapshots of {aggregate_type}"),
                e,
            )
        })?;
        Ok(deleted.rows_affected())
    }
}
