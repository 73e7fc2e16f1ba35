//! The PostgreSQL subscription store: a row per subscription, leases on the server's clock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{query_error, to_bigint, PostgresSubscriptionStore};
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::subscription::{
    validate_name, validate_stored_name, DeadLetter, SubscriptionStatus, SubscriptionStore,
};

impl PostgresSubscriptionStore {
    /// Moves the checkpoint from `after` to `position` through `executor` (a read model's
    /// transaction), if `owner` holds the name; whether it did. The row lock taken here holds
    /// off a takeover until the transaction ends.
    pub(super) async fn advance_checkpoint_on<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        name: &str,
        owner: Uuid,
        after: Option<u64>,
        position: u64,
    ) -> Result<bool> {
        validate_stored_name(name)?;
        let after = after.map(|p| to_bigint(p, "checkpoint")).transpose()?;
        let moved = sqlx::query(&format!(
            "UPDATE {} SET position = $3
             WHERE name = $1 AND owner = $2 AND position IS NOT DISTINCT FROM $4",
            self.layout.subscriptions
        ))
        .bind(name)
        .bind(owner)
        .bind(to_bigint(position, "checkpoint")?)
        .bind(after)
        .execute(executor)
        .await
        .map_err(|e| query_error(&format!("cannot store the checkpoint of subscription {name}"), e))?;
        Ok(moved.rows_affected() > 0)
    }

    /// Bounds the transaction of `executor` (a read model's) by `owner`'s lease on `name`: the
    /// server ends it, rolling it back, if it sits idle between two statements longer than
    /// half as long again as the lease has left (at least 1 s). A consumer frozen inside its
    /// transaction (a paused process, a machine that vanished) then holds its row locks about
    /// one lease at most, so the standby that takes the lease over is not stalled behind them,
    /// while a live one, which renews its lease every third of it, has at least a whole lease
    /// between two statements. Nothing is set if `owner` does not hold the name: the commit
    /// is refused at its end all the same.
    pub(super) async fn bound_by_lease_on<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        name: &str,
        owner: Uuid,
    ) -> Result<()> {
        sqlx::query(&format!(
            "SELECT set_config('idle_in_transaction_session_timeout',
                 greatest(ceil(extract(epoch FROM lease_until - clock_timestamp()) * 1500), 1000)::bigint::text,
                 true)
             FROM {} WHERE name = $1 AND owner = $2 AND lease_until IS NOT NULL",
            self.layout.subscriptions
        ))
        .bind(name)
        .bind(owner)
        .execute(executor)
        .await
        .map_err(|e| query_error(&format!("cannot bound the transaction of subscription {name}"), e))
        .map(drop)
    }

    /// Forgets the checkpoint, and those of the consumer group's state, through `executor`.
    pub(super) async fn reset_on<'e>(&self, executor: impl sqlx::PgExecutor<'e>, name: &str) -> Result<()> {
        validate_stored_name(name)?;
        sqlx::query(&format!(
            "UPDATE {} SET position = NULL WHERE name = $1 OR starts_with(name, $1 || '#')",
            self.layout.subscriptions
        ))
        .bind(name)
        .execute(executor)
        .await
        .map_err(|e| query_error(&format!("cannot reset subscription {name}"), e))
        .map(drop)
    }
}

#[async_trait]
impl SubscriptionStore for PostgresSubscriptionStore {
    async fn acquire(&self, name: &str, owner: Uuid, ttl: Duration) -> Result<bool> {
        validate_name(name)?;
        let table = &self.layout.subscriptions;
        // The row lock of ON CONFLICT orders racing owners: the second sees the first's lease.
        let taken = sqlx::query(&format!(
            "INSERT INTO {table} AS s (name, owner, lease_until)
             VALUES ($1, $2, now() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
             WHERE s.owner IS NULL OR s.owner = EXCLUDED.owner OR s.lease_until < now()"
        ))
        .bind(name)
        .bind(owner)
        .bind(ttl.as_millis().min(i64::MAX as u128) as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot take the lease of subscription {name}"), e))?;
        Ok(taken.rows_affected() > 0)
    }

    async fn release(&self, name: &str, owner: Uuid) -> Result<()> {
        validate_stored_name(name)?;
        sqlx::query(&format!(
            "UPDATE {} SET owner = NULL, lease_until = NULL WHERE name = $1 AND owner = $2",
            self.layout.subscriptions
        ))
        .bind(name)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot give up the lease of subscription {name}"), e))
        .map(drop)
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        validate_stored_name(name)?;
        let stored: Option<Option<i64>> = sqlx::query_scalar(&format!(
            "SELECT position FROM {} WHERE name = $1",
            self.layout.subscriptions
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot read the checkpoint of subscription {name}"), e))?;
        stored
            .flatten()
            .map(|p| {
                u64::try_from(p).map_err(|_| {
                    Error::corrupt(
                        format!("the checkpoint of subscription {name}"),
                        format!("{p} is negative"),
                    )
                })
            })
            .transpose()
    }

    async fn save_checkpoint(&self, name: &str, owner: Uuid, position: u64) -> Result<bool> {
        validate_stored_name(name)?;
        // Committed without waiting for the disk (see the module docs, "What is atomic"): a
        // checkpoint lost in a crash of the server hands events over again, which at least
        // once allows, and the next commit that waits makes it durable.
        let saved = sqlx::query(&format!(
            "UPDATE {} SET position = $3 WHERE name = $1 AND owner = $2 AND lease_until > now()
                AND set_config('synchronous_commit', 'off', true) = 'off'",
            self.layout.subscriptions
        ))
        .bind(name)
        .bind(owner)
        .bind(to_bigint(position, "checkpoint")?)
        .execute(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot store the checkpoint of subscription {name}"), e))?;
        Ok(saved.rows_affected() > 0)
    }

    async fn reset(&self, name: &str) -> Result<()> {
        self.reset_on(&self.pool, name).await
    }

    async fn dead_letter(&self, name: &str, event: &StoredEvent, error: &str) -> Result<()> {
        validate_name(name)?;
        sqlx::query(&format!(
            "INSERT INTO {} (subscription, position, event_id, event_type, error)
             VALUES ($1, $2, $3, $4, $5)",
            self.layout.dead_letters
        ))
        .bind(name)
        .bind(to_bigint(event.position, "position")?)
        .bind(event.event_id)
        .bind(&*event.event_type)
        .bind(error.replace('\0', "\u{fffd}"))
        .execute(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot record a dead letter of subscription {name}"), e))
        .map(drop)
    }

    async fn remove_dead_letters(&self, name: &str, event_ids: &[Uuid]) -> Result<u64> {
        validate_stored_name(name)?;
        let removed = sqlx::query(&format!(
            "DELETE FROM {} WHERE subscription = $1 AND event_id = ANY($2)",
            self.layout.dead_letters
        ))
        .bind(name)
        .bind(event_ids)
        .execute(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot remove dead letters of subscription {name}"), e))?;
        Ok(removed.rows_affected())
    }

    async fn redact_dead_letter(
        &self,
        name: &str,
        event_id: Uuid,
        error: &str,
        redacted: &str,
    ) -> Result<u64> {
        validate_stored_name(name)?;
        let changed = sqlx::query(&format!(
            "UPDATE {} SET error = $4 WHERE subscription = $1 AND event_id = $2 AND error = $3",
            self.layout.dead_letters
        ))
        .bind(name)
        .bind(event_id)
        .bind(error)
        .bind(redacted)
        .execute(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot redact a dead letter of subscription {name}"), e))?;
        Ok(changed.rows_affected())
    }

    async fn dead_letters(&self, name: &str, skip: usize, limit: usize) -> Result<Vec<DeadLetter>> {
        validate_stored_name(name)?;
        let rows: Vec<(i64, Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT position, event_id, event_type, error, failed_at FROM {}
             WHERE subscription = $1 ORDER BY id OFFSET $2 LIMIT $3",
            self.layout.dead_letters
        ))
        .bind(name)
        .bind(i64::try_from(skip).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error(&format!("cannot read the dead letters of subscription {name}"), e))?;
        rows.into_iter()
            .map(|(position, event_id, event_type, error, failed_at)| {
                Ok(DeadLetter {
                    subscription: name.to_owned(),
                    position: u64::try_from(position).map_err(|_| {
                        Error::corrupt(
                            format!("a dead letter of subscription {name}"),
                            "negative position",
                        )
                    })?,
                    event_id,
                    event_type,
                    error,
                    failed_at,
                })
            })
            .collect()
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionStatus>> {
        let rows: Vec<(String, Option<i64>, Option<Uuid>, i64, bool)> = sqlx::query_as(&format!(
            "SELECT s.name, s.position, CASE WHEN s.lease_until > now() THEN s.owner END,
                (SELECT count(*) FROM {} d WHERE d.subscription = s.name),
                coalesce(s.owner IS NOT NULL AND s.lease_until <= now(), false)
             FROM {} s ORDER BY s.name",
            self.layout.dead_letters, self.layout.subscriptions
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| query_error("cannot list the subscriptions", e))?;
        rows.into_iter()
            .map(|(name, position, owner, dead_letters, abandoned)| {
                let checkpoint = position
                    .map(|p| {
                        u64::try_from(p).map_err(|_| {
                            Error::corrupt(
                                format!("the checkpoint of subscription {name}"),
                                format!("{p} is negative"),
                            )
                        })
                    })
                    .transpose()?;
                Ok(SubscriptionStatus {
                    name,
                    checkpoint,
                    owner,
                    dead_letters: dead_letters.unsigned_abs(),
                    abandoned,
                })
            })
            .collect()
    }
}
