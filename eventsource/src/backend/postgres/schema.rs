//! The tables and indexes, and the migration that creates them.

use sqlx::PgPool;

use super::{query_error, Layout};
use crate::error::Result;

/// The key of the advisory lock that serializes migrations across processes: "eventsrc".
const MIGRATION_LOCK: i64 = 0x6576_656e_7473_7263;

/// Creates the schema, the tables and the indexes that are missing, in one transaction.
///
/// `CREATE ... IF NOT EXISTS` alone is not safe against a concurrent run (two sessions can
/// both find a table missing, and the second fails on the catalog's unique index), so the
/// transaction first takes an advisory lock: concurrent migrations run one after another,
/// and every one after the first finds nothing to do.
pub(super) async fn migrate(pool: &PgPool, layout: &Layout) -> Result<()> {
    let fail = |e| query_error("cannot migrate the PostgreSQL schema", e);
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    for statement in statements(layout) {
        sqlx::query(&statement)
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

fn statements(layout: &Layout) -> Vec<String> {
    let Layout {
        schema,
        events,
        snapshots,
    } = layout;
    // "already exists, skipping" notices would be logged at every start-up.
    let mut statements = vec!["SET LOCAL client_min_messages TO warning".to_owned()];
    if let Some(schema) = schema {
        statements.push(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""));
    }
    statements.push(format!(
        "CREATE TABLE IF NOT EXISTS {events} (
            position          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id          UUID        NOT NULL,
            event_type        TEXT        NOT NULL,
            event_version     BIGINT      NOT NULL,
            aggregate_id      UUID        NOT NULL,
            aggregate_type    TEXT        NOT NULL,
            aggregate_version BIGINT      NOT NULL,
            occurred_at       TIMESTAMPTZ NOT NULL,
            occurred_at_ns    INTEGER     NOT NULL DEFAULT 0,
            correlation_id    UUID,
            causation_id      UUID,
            metadata          JSONB,
            payload           JSONB       NOT NULL,
            CONSTRAINT eventsource_events_event_id_key UNIQUE (event_id),
            CONSTRAINT eventsource_events_stream_version_key
                UNIQUE (aggregate_id, aggregate_type, aggregate_version),
            CONSTRAINT eventsource_events_aggregate_version_check CHECK (aggregate_version >= 1),
            CONSTRAINT eventsource_events_occurred_at_ns_check
                CHECK (occurred_at_ns BETWEEN 0 AND 999)
        )"
    ));
    statements.push(format!(
        "CREATE TABLE IF NOT EXISTS {snapshots} (
            aggregate_id   UUID        NOT NULL,
            aggregate_type TEXT        NOT NULL,
            version        BIGINT      NOT NULL,
            state          JSONB       NOT NULL,
            schema_version BIGINT      NOT NULL,
            created_at     TIMESTAMPTZ NOT NULL,
            created_at_ns  INTEGER     NOT NULL DEFAULT 0,
            CONSTRAINT eventsource_snapshots_pkey PRIMARY KEY (aggregate_id, aggregate_type),
            CONSTRAINT eventsource_snapshots_created_at_ns_check
                CHECK (created_at_ns BETWEEN 0 AND 999)
        )"
    ));
    statements.push(format!(
        "CREATE INDEX IF NOT EXISTS eventsource_snapshots_type_schema_idx
            ON {snapshots} (aggregate_type, schema_version)"
    ));
    statements
}
