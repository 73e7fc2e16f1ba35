//! The snapshot store: one row per aggregate and schema version, an upsert that never goes
//! back in version.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::{join_timestamp, query_error, split_timestamp, to_bigint, Layout, PostgresSnapshotStore};
use crate::abilities::SnapshotListing;
use crate::error::{Error, Result};
use crate::snapshot::{validate_snapshot, Snapshot, SnapshotStore, SnapshotVersion};

/// The statements of the snapshot store, built once for its table.
#[derive(Debug)]
pub(super) struct Sql {
    table: String,
    get: String,
    save: String,
    delete: String,
    exists: String,
    delete_by_type: String,
}

impl Sql {
    pub(super) fn new(layout: &Layout) -> Self {
        let snapshots = &layout.snapshots;
        Self {
            table: snapshots.clone(),
            get: format!(
                "SELECT version, state::text AS state, schema_version, created_at, created_at_ns,
                    event_id AS snapshot_event_id
                 FROM {snapshots} WHERE aggregate_id = $1 AND aggregate_type = $2 AND schema_version <= $3
                 ORDER BY schema_version DESC LIMIT 1"
            ),
            // The row lock taken by ON CONFLICT makes racing writers compare against each
            // other's committed version, so the highest version wins whatever the order.
            save: format!(
                "INSERT INTO {snapshots} AS s (aggregate_id, aggregate_type, version, state,
                     schema_version, created_at, created_at_ns, event_id)
                 VALUES ($1, $2, $3, $4::json, $5, $6, $7, $8)
                 ON CONFLICT (aggregate_id, aggregate_type, schema_version) DO UPDATE
                 SET version = EXCLUDED.version, state = EXCLUDED.state,
                     event_id = EXCLUDED.event_id, created_at = EXCLUDED.created_at,
                     created_at_ns = EXCLUDED.created_at_ns
                 WHERE s.version <= EXCLUDED.version"
            ),
            delete: format!("DELETE FROM {snapshots} WHERE aggregate_id = $1 AND aggregate_type = $2"),
            exists: format!(
                "SELECT EXISTS (SELECT 1 FROM {snapshots} WHERE aggregate_id = $1 AND aggregate_type = $2)"
            ),
            delete_by_type: format!(
                "DELETE FROM {snapshots}
                 WHERE aggregate_type = $1 AND ($2::bigint IS NULL OR schema_version < $2)"
            ),
        }
    }
}

#[async_trait]
impl SnapshotStore for PostgresSnapshotStore {
    async fn get_snapshot(
        &self,
        aggregate_id: Uuid,
        aggregate_type: &str,
        schema_version: u32,
    ) -> Result<Option<Snapshot>> {
        let row = sqlx::query(&self.sql.get)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(i64::from(schema_version))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot read the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        row.map(|row| self.decode(&row, aggregate_id, aggregate_type))
            .transpose()
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        let Snapshot {
            aggregate_id,
            aggregate_type,
            ..
        } = snapshot;
        validate_snapshot(snapshot)?;
        let (created_at, created_at_ns) = split_timestamp(snapshot.created_at);
        let written = sqlx::query(&self.sql.save)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .bind(to_bigint(snapshot.version, "snapshot version")?)
            .bind(&snapshot.state)
            .bind(i64::from(snapshot.schema_version))
            .bind(created_at)
            .bind(created_at_ns)
            .bind(snapshot.event_id)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot save the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        Ok(written.rows_affected() > 0)
    }

    async fn delete_snapshot(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        let deleted = sqlx::query(&self.sql.delete)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot delete the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn snapshot_exists(&self, aggregate_id: Uuid, aggregate_type: &str) -> Result<bool> {
        sqlx::query_scalar(&self.sql.exists)
            .bind(aggregate_id)
            .bind(aggregate_type)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot look up the snapshot of {aggregate_type} {aggregate_id}"),
                    e,
                )
            })
    }

    async fn delete_snapshots_by_type(
        &self,
        aggregate_type: &str,
        schema_version_below: Option<u32>,
    ) -> Result<u64> {
        let deleted = sqlx::query(&self.sql.delete_by_type)
            .bind(aggregate_type)
            .bind(schema_version_below.map(i64::from))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                query_error(
                    &format!("cannot delete the snapshots of type {aggregate_type}"),
                    e,
                )
            })?;
        Ok(deleted.rows_affected())
    }
}

#[async_trait]
impl SnapshotListing for PostgresSnapshotStore {
    async fn snapshot_versions(&self, aggregate_type: &str) -> Result<Vec<SnapshotVersion>> {
        let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(&format!(
            "SELECT aggregate_id, schema_version, version FROM {} WHERE aggregate_type = $1",
            self.sql.table
        ))
        .bind(aggregate_type)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot list the snapshots of {aggregate_type}"), e))?;
        rows.into_iter()
            .map(|(aggregate_id, schema_version, version)| {
                let fail = |detail: String| {
                    Error::corrupt(format!("the snapshot of {aggregate_type} {aggregate_id}"), detail)
                };
                Ok(SnapshotVersion {
                    aggregate_id,
                    schema_version: u32::try_from(schema_version)
                        .map_err(|_| fail(format!("schema version {schema_version} is out of range")))?,
                    version: u64::try_from(version)
                        .map_err(|_| fail(format!("version {version} is negative")))?,
                })
            })
            .collect()
    }
}

impl PostgresSnapshotStore {
    /// The snapshot in a row with the columns of the `get` statement.
    pub(super) fn decode(&self, row: &PgRow, aggregate_id: Uuid, aggregate_type: &str) -> Result<Snapshot> {
        let fail = |reason: String| {
            Error::corrupt(
                format!(
                    "snapshot of {aggregate_type} {aggregate_id} in {}",
                    self.sql.table
                ),
                reason,
            )
        };
        let get_err = |e: sqlx::Error| fail(e.to_string());
        let version: i64 = row.try_get("version").map_err(get_err)?;
        let schema_version: i64 = row.try_get("schema_version").map_err(get_err)?;
        let created_at: DateTime<Utc> = row.try_get("created_at").map_err(get_err)?;
        let created_at_ns: i32 = row.try_get("created_at_ns").map_err(get_err)?;
        Ok(Snapshot {
            aggregate_id,
            aggregate_type: aggregate_type.to_owned(),
            version: u64::try_from(version)
                .map_err(|_| fail(format!("version {version} is out of range")))?,
            event_id: row.try_get("snapshot_event_id").map_err(get_err)?,
            state: row.try_get("state").map_err(get_err)?,
            schema_version: u32::try_from(schema_version)
                .map_err(|_| fail(format!("schema version {schema_version} is out of range")))?,
            created_at: join_timestamp(created_at, created_at_ns)
                .ok_or_else(|| fail(format!("created_at_ns {created_at_ns} is out of range")))?,
        })
    }
}
