//! The tables and indexes, and the numbered migrations that create and upgrade them.
//!
//! The layout's version is recorded in the table `eventsource_migrations` (in the stores'
//! schema), one row per step applied. [`migrate`] applies the missing steps in one
//! transaction that first takes an advisory lock: concurrent runs (several instances starting
//! at once) queue up, every step runs once, and a failed step leaves the database as it was.

use sqlx::PgPool;

use super::{query_error, Layout};
use crate::error::{Error, Result};
use crate::slice::SliceCount;

/// The key of the advisory lock that serializes migrations across processes: "eventsrc".
const MIGRATION_LOCK: i64 = 0x6576_656e_7473_7263;

/// One upgrade of the layout, applied once, in order.
struct Step {
    version: i64,
    description: &'static str,
    statements: fn(&Layout) -> Vec<String>,
}

/// Every step of the layout. A database made before versions were recorded (the 0.1 layout)
/// has the tables of step 1: its `CREATE ... IF NOT EXISTS` finds them, and the later steps
/// upgrade them.
const STEPS: &[Step] = &[
    Step {
        version: 1,
        description: "events and snapshots",
        statements: tables,
    },
    Step {
        version: 2,
        description: "snapshots name the event they follow; JSON kept as written",
        statements: bound_snapshots_and_exact_json,
    },
    Step {
        version: 3,
        description: "positions in commit order",
        statements: positions_in_commit_order,
    },
    Step {
        version: 4,
        description: "subscriptions: checkpoints, leases and dead letters",
        statements: subscriptions,
    },
    Step {
        version: 5,
        description: "events carry the request id of their command",
        statements: request_ids,
    },
    Step {
        version: 6,
        description: "one snapshot per aggregate and schema version",
        statements: snapshots_per_schema_version,
    },
    Step {
        version: 7,
        description: "appends announce themselves: the feed waits for appending transactions only",
        statements: feed_bound_by_appenders,
    },
    Step {
        version: 8,
        description: "request ids are text, and the request index keeps each one's first outcome",
        statements: request_index,
    },
    Step {
        version: 9,
        description: "every event in its stream's slice",
        statements: slices,
    },
    Step {
        version: 10,
        description: "the store's settings: its number of slices",
        statements: settings,
    },
    Step {
        version: 11,
        description: "the keys of data subjects, and the streams that hold their personal data",
        statements: subject_keys,
    },
    Step {
        version: 12,
        description: "the archive: events moved out of the live table behind a snapshot",
        statements: archive,
    },
];

/// The version of the step that gave every event its slice: the number of slices is fixed
/// from then on.
const SLICED: i64 = 9;

/// The layout version this library reads and writes.
pub(super) const LATEST: i64 = STEPS[STEPS.len() - 1].version;

/// Brings the tables to the [`LATEST`] layout, creating the schema and tables if missing,
/// with the layout's configured number of slices if they are new; returns the number of
/// slices the store has.
pub(super) async fn migrate(pool: &PgPool, layout: &Layout) -> Result<SliceCount> {
    let fail = |e| query_error("cannot migrate the PostgreSQL schema", e);
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    for statement in setup(layout) {
        execute(&mut tx, &statement).await.map_err(fail)?;
    }
    let current: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(max(version), 0) FROM {}",
        layout.migrations
    ))
    .fetch_one(&mut *tx)
    .await
    .map_err(fail)?;
    check_not_newer(current)?;
    for (step, statements) in upgrade(layout, current) {
        let fail = |e| match step {
            Some(step) => query_error(
                &format!(
                    "cannot apply the PostgreSQL migration {} ({})",
                    step.version, step.description
                ),
                e,
            ),
            None => query_error("cannot replace the feed's functions", e),
        };
        for statement in statements {
            execute(&mut tx, &statement).await.map_err(fail)?;
        }
    }
    let slices = recorded_slices(&mut tx, layout).await?;
    tx.commit().await.map_err(fail)?;
    Ok(slices)
}

/// What [`migrate`] would run on tables of layout `current`, as one SQL script for review or
/// for a team's own migration tool: the transaction, its lock, and every statement, each
/// step recorded as it is applied. A script is for tables of the layout it was made for: run
/// on tables that have a step recorded already, its record of that step fails on the
/// primary key and the whole transaction rolls back.
pub(super) fn script(layout: &Layout, current: i64) -> Result<Vec<String>> {
    check_not_newer(current)?;
    let mut script = vec![
        "BEGIN".to_owned(),
        format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"),
    ];
    script.extend(setup(layout));
    script.extend(
        upgrade(layout, current)
            .into_iter()
            .flat_map(|(_, statements)| statements),
    );
    script.push("COMMIT".to_owned());
    Ok(script)
}

/// The steps after `current`, with their description and version.
pub(super) fn pending(current: i64) -> impl Iterator<Item = (i64, &'static str)> {
    STEPS
        .iter()
        .filter(move |step| step.version > current)
        .map(|step| (step.version, step.description))
}

fn check_not_newer(current: i64) -> Result<()> {
    if current > LATEST {
        return Err(Error::InvalidConfiguration(format!(
            "the PostgreSQL tables have the eventsource layout {current}, newer than the layout \
             {LATEST} of this version of the library; upgrade the program"
        )));
    }
    Ok(())
}

/// The schema and the record of migrations, if missing.
fn setup(layout: &Layout) -> Vec<String> {
    // "already exists, skipping" notices would be logged at every start-up.
    let mut setup = vec!["SET LOCAL client_min_messages TO warning".to_owned()];
    if let Some(schema) = &layout.schema {
        setup.push(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""));
    }
    setup.push(format!(
        "CREATE TABLE IF NOT EXISTS {} (
            version     BIGINT      PRIMARY KEY,
            description TEXT        NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
        layout.migrations
    ));
    setup
}

/// The statements of each step after `current`, each step's followed by its record; then
/// the feed's functions of this version, where step 7 ran under an earlier one.
fn upgrade(layout: &Layout, current: i64) -> Vec<(Option<&'static Step>, Vec<String>)> {
    // Slices stored before the number was recorded were computed with the default.
    let created = Layout {
        slices: Some(match current >= SLICED {
            true => SliceCount::DEFAULT,
            false => layout.slices.unwrap_or_default(),
        }),
        ..layout.clone()
    };
    let mut upgrade: Vec<(Option<&'static Step>, Vec<String>)> = STEPS
        .iter()
        .filter(|step| step.version > current)
        .map(|step| {
            let mut statements = (step.statements)(&created);
            statements.push(format!(
                "INSERT INTO {} (version, description) VALUES ({}, '{}')",
                layout.migrations,
                step.version,
                step.description.replace('\'', "''")
            ));
            (Some(step), statements)
        })
        .collect();
    if current >= 7 {
        upgrade.push((None, feed_routines(layout)));
    }
    upgrade
}

/// The number of slices the store has, as step 10 recorded it; [`Error::InvalidConfiguration`]
/// if the layout is configured with another.
pub(super) async fn slice_count(pool: &PgPool, layout: &Layout) -> Result<SliceCount> {
    let mut connection = pool
        .acquire()
        .await
        .map_err(|e| query_error("cannot read the number of slices", e))?;
    recorded_slices(&mut connection, layout).await
}

async fn recorded_slices(connection: &mut sqlx::PgConnection, layout: &Layout) -> Result<SliceCount> {
    let value: Option<String> = sqlx::query_scalar(&format!(
        "SELECT value FROM {} WHERE name = 'slices'",
        layout.settings
    ))
    .fetch_optional(&mut *connection)
    .await
    .map_err(|e| {
        query_error(
            "cannot read the number of slices (has the store been migrated?)",
            e,
        )
    })?;
    let table = format!("the PostgreSQL table {}", layout.settings);
    let store = match &layout.schema {
        Some(schema) => format!("the PostgreSQL store in schema {schema}"),
        None => "the PostgreSQL store".to_owned(),
    };
    SliceCount::recorded(value, &table)?.confirm(layout.slices, &store)
}

/// Step 12: the events of archived streams (see `crate::lifecycle`), with the columns of
/// the events table but the slice (which it computes), read by stream only.
fn archive(layout: &Layout) -> Vec<String> {
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {} (
            position          BIGINT      NOT NULL,
            event_id          UUID        NOT NULL,
            event_type        TEXT        NOT NULL,
            event_version     BIGINT      NOT NULL,
            aggregate_id      UUID        NOT NULL,
            aggregate_type    TEXT        NOT NULL,
            aggregate_version BIGINT      NOT NULL,
            occurred_at       TIMESTAMPTZ NOT NULL,
            occurred_at_ns    INTEGER     NOT NULL,
            correlation_id    UUID,
            causation_id      UUID,
            metadata          JSON,
            payload           JSON        NOT NULL,
            request_id        TEXT,
            PRIMARY KEY (aggregate_id, aggregate_type, aggregate_version)
        )",
        layout.archived_events
    )]
}

/// Step 11: a key per data subject (deleted when the subject is forgotten, the row kept as
/// its tombstone), and the streams that hold each subject's personal values.
fn subject_keys(layout: &Layout) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                subject          TEXT        PRIMARY KEY,
                key              BYTEA,
                created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
                forgetting_since TIMESTAMPTZ,
                forgotten_at     TIMESTAMPTZ
            )",
            layout.subject_keys
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                subject        TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                aggregate_id   UUID NOT NULL,
                PRIMARY KEY (subject, aggregate_type, aggregate_id)
            )",
            layout.subject_streams
        ),
    ]
}

/// Step 10: the store's settings, a name and a value each; the number of slices the events
/// were given by step 9.
fn settings(layout: &Layout) -> Vec<String> {
    let settings = &layout.settings;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {settings} (
                name  TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )"
        ),
        format!(
            "INSERT INTO {settings} (name, value) VALUES ('slices', '{}') ON CONFLICT (name) DO NOTHING",
            layout.slices.unwrap_or_default().get()
        ),
    ]
}

/// Step 3: a position is taken from the appending transaction's id (see
/// `sql::POSITION_SHIFT`), no longer from an identity column, so that the feed can tell
/// which positions are final. Rows already stored keep theirs, all below the new ones.
fn positions_in_commit_order(layout: &Layout) -> Vec<String> {
    let events = &layout.events;
    let shift = super::sql::POSITION_SHIFT;
    vec![
        format!("ALTER TABLE {events} ALTER COLUMN position DROP IDENTITY IF EXISTS"),
        format!(
            "ALTER TABLE {events} ALTER COLUMN position
                SET DEFAULT (pg_current_xact_id()::text::bigint << {shift})"
        ),
        format!(
            "DO $$ BEGIN
                IF (SELECT coalesce(max(position), 0) FROM {events})
                    >= (pg_current_xact_id()::text::bigint << {shift}) THEN
                    RAISE EXCEPTION 'stored positions are beyond the transaction ids of this server';
                END IF;
            END $$"
        ),
    ]
}

/// Step 4: a row per subscription (checkpoint and lease), and the events given up on.
fn subscriptions(layout: &Layout) -> Vec<String> {
    let Layout {
        subscriptions,
        dead_letters,
        ..
    } = layout;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {subscriptions} (
                name        TEXT        PRIMARY KEY,
                position    BIGINT,
                owner       UUID,
                lease_until TIMESTAMPTZ
            )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {dead_letters} (
                id           BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                subscription TEXT        NOT NULL,
                position     BIGINT      NOT NULL,
                event_id     UUID        NOT NULL,
                event_type   TEXT        NOT NULL,
                error        TEXT        NOT NULL,
                failed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
            )"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS eventsource_dead_letters_subscription_idx
                ON {dead_letters} (subscription, id)"
        ),
    ]
}

/// Step 5: the idempotency key of the command that recorded each event, found by stream.
fn request_ids(layout: &Layout) -> Vec<String> {
    let events = &layout.events;
    vec![
        format!("ALTER TABLE {events} ADD COLUMN IF NOT EXISTS request_id UUID"),
        format!(
            "CREATE INDEX IF NOT EXISTS eventsource_events_request_idx
                ON {events} (aggregate_id, aggregate_type, request_id) WHERE request_id IS NOT NULL"
        ),
    ]
}

/// Step 8: request ids of any text, looked up over the whole store in a table of their own
/// that also keeps refusals; the events' request ids fill it. Changing the column's type
/// rewrites the events table once.
fn request_index(layout: &Layout) -> Vec<String> {
    let (events, requests) = (&layout.events, &layout.requests);
    let old_index = match &layout.schema {
        Some(schema) => format!("\"{schema}\".eventsource_events_request_idx"),
        None => "eventsource_events_request_idx".to_owned(),
    };
    vec![
        format!("DROP INDEX IF EXISTS {old_index}"),
        format!("ALTER TABLE {events} ALTER COLUMN request_id TYPE TEXT USING request_id::text"),
        format!(
            "CREATE TABLE IF NOT EXISTS {requests} (
                request_id     TEXT        PRIMARY KEY,
                aggregate_type TEXT        NOT NULL,
                aggregate_id   UUID        NOT NULL,
                fingerprint    BIGINT,
                version        BIGINT,
                position       BIGINT,
                refusal        TEXT,
                recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
                CHECK ((version IS NOT NULL AND position IS NOT NULL AND refusal IS NULL)
                    OR (version IS NULL AND position IS NULL AND refusal IS NOT NULL))
            )"
        ),
        format!(
            "INSERT INTO {requests} (request_id, aggregate_type, aggregate_id, version, position,
                recorded_at)
             SELECT DISTINCT ON (request_id) request_id, aggregate_type, aggregate_id,
                aggregate_version, position, occurred_at
             FROM {events} WHERE request_id IS NOT NULL
             ORDER BY request_id, position DESC
             ON CONFLICT (request_id) DO NOTHING"
        ),
    ]
}

/// Step 9: each event's slice (see [`SliceCount::slice_of`]), a column the database
/// computes from the stream, so that writers of any version store it, and an index to read
/// the feed by slice. Adding the column rewrites the events table once.
fn slices(layout: &Layout) -> Vec<String> {
    let events = &layout.events;
    vec![
        format!(
            "ALTER TABLE {events} ADD COLUMN IF NOT EXISTS slice INTEGER NOT NULL
                GENERATED ALWAYS AS (
                    ('x' || substr(md5(aggregate_type || ':' || aggregate_id::text), 1, 8))::bit(32)::integer
                    & {mask}
                ) STORED",
            mask = layout.slices.unwrap_or_default().get() - 1
        ),
        format!("CREATE INDEX IF NOT EXISTS eventsource_events_slice_idx ON {events} (slice, position)"),
    ]
}

fn snapshots_per_schema_version(layout: &Layout) -> Vec<String> {
    let snapshots = &layout.snapshots;
    vec![
        format!("ALTER TABLE {snapshots} DROP CONSTRAINT eventsource_snapshots_pkey"),
        format!(
            "ALTER TABLE {snapshots} ADD CONSTRAINT eventsource_snapshots_pkey
                PRIMARY KEY (aggregate_id, aggregate_type, schema_version)"
        ),
    ]
}

/// Step 7: the feed is held back by transactions that append events, and by no other.
///
/// A position is final once no transaction that could still store events below it is
/// running (see `sql::POSITION_SHIFT`). Before this step the feed waited for every
/// transaction of the server with an id (`pg_snapshot_xmin`), so a session idle in a
/// transaction in any database froze every subscription. Now each statement that inserts
/// events first takes the layout's append lock in shared mode (a statement trigger, which
/// runs before the statement's first row gets its transaction id), and the feed's bound is the
/// oldest transaction of the reader's snapshot that may have stored events the snapshot does
/// not show: one that holds the lock, or one that ended after the snapshot was taken and left
/// events behind. A transaction that already has an id when it first inserts events could be
/// passed over by a reader before it announced itself, so the trigger refuses it unless it
/// took the lock earlier.
fn feed_bound_by_appenders(layout: &Layout) -> Vec<String> {
    let mut statements = vec![format!(
        "DROP TRIGGER IF EXISTS eventsource_announce_append ON {}",
        layout.events
    )];
    statements.extend(feed_routines(layout));
    statements.push(format!(
        "CREATE TRIGGER eventsource_announce_append BEFORE INSERT ON {} \
         FOR EACH STATEMENT EXECUTE FUNCTION {}()",
        layout.events, layout.announce_append
    ));
    statements
}

/// The functions of step 7, as this version of the library writes them. They are code, not
/// data: [`migrate`] replaces them on every run once the layout has them, so an upgrade of
/// the library brings its fixes to them without a layout step.
///
/// The append lock is `pg_advisory_xact_lock_shared(APPEND_LOCK_CLASS, <the events table's
/// oid>)`: the table's identity, however its name is spelled. A transaction records in the
/// setting `eventsource.announced` the tables it announced an append to before it had an id,
/// which is what the trigger asks of a transaction that has one.
fn feed_routines(layout: &Layout) -> Vec<String> {
    let Layout {
        events,
        feed_bound,
        announce_append,
        begin_append,
        ..
    } = layout;
    let class = super::sql::APPEND_LOCK_CLASS;
    let shift = super::sql::POSITION_SHIFT;
    vec![
        format!(
            "CREATE OR REPLACE FUNCTION {begin_append}() RETURNS void
             LANGUAGE plpgsql AS $fn$
             DECLARE
                 tables text := coalesce(current_setting('eventsource.announced', true), '');
                 events_table oid := '{events}'::regclass;
             BEGIN
                 IF position(',' || events_table || ',' IN tables) > 0 THEN
                     RETURN;
                 END IF;
                 IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
                     RAISE EXCEPTION 'an append must be announced before the transaction''s first write'
                         USING ERRCODE = '55000';
                 END IF;
                 PERFORM pg_advisory_xact_lock_shared({class}, events_table::int4);
                 PERFORM set_config('eventsource.announced',
                     CASE WHEN tables = '' THEN ',' ELSE tables END || events_table || ',', true);
             END
             $fn$"
        ),
        // The common case (a statement of its own, no id yet) in as few steps as it takes.
        format!(
            "CREATE OR REPLACE FUNCTION {announce_append}() RETURNS trigger
             LANGUAGE plpgsql AS $fn$
             DECLARE
                 tables text := coalesce(current_setting('eventsource.announced', true), '');
             BEGIN
                 IF pg_current_xact_id_if_assigned() IS NULL THEN
                     PERFORM pg_advisory_xact_lock_shared({class}, TG_RELID::int4);
                     PERFORM set_config('eventsource.announced',
                         CASE WHEN tables = '' THEN ',' ELSE tables END || TG_RELID || ',', true);
                 ELSIF position(',' || TG_RELID || ',' IN tables) = 0 THEN
                     RAISE EXCEPTION 'events are inserted by a transaction that wrote before it announced the append'
                         USING ERRCODE = '55000',
                               HINT = 'begin the transaction with SELECT {begin_append}()';
                 END IF;
                 RETURN NULL;
             END
             $fn$"
        ),
        // The bound for a reader whose statement runs on `snapshot`: the snapshot's running
        // transactions are read off one view of the lock table (none when there are none).
        // One that holds the append lock holds the feed back; one that has no lock of its own
        // id is either about to take it (it has its id a moment before) and counts as running,
        // or has ended: if it committed, it holds the feed back if it left events, looked up
        // under a snapshot of its own taken after that view (a volatile function's statement
        // takes one at READ COMMITTED; at a stricter level it cannot see them, and holds).
        format!(
            "CREATE OR REPLACE FUNCTION {feed_bound}(snapshot pg_snapshot) RETURNS bigint
             LANGUAGE plpgsql VOLATILE AS $fn$
             DECLARE
                 bound bigint := pg_snapshot_xmax(snapshot)::text::bigint;
                 events_table oid := '{events}'::regclass;
                 holding bigint;
                 committed bigint[];
                 left_events bigint;
             BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_snapshot_xip(snapshot)) THEN
                     RETURN bound << {shift};
                 END IF;
                 WITH locks AS MATERIALIZED (
                     SELECT locktype, transactionid, virtualtransaction FROM pg_locks
                     WHERE (locktype = 'transactionid' AND mode = 'ExclusiveLock')
                        OR (locktype = 'advisory' AND classid = {class} AND objid = events_table
                            AND objsubid = 2
                            AND database = (SELECT oid FROM pg_database
                                            WHERE datname = current_database()))
                 ), running AS (
                     SELECT x, x::text::bigint AS id,
                         EXISTS (SELECT 1 FROM locks t
                                 WHERE t.locktype = 'transactionid' AND t.transactionid = x::xid) AS live,
                         EXISTS (SELECT 1 FROM locks t JOIN locks a
                                     ON a.virtualtransaction = t.virtualtransaction
                                 WHERE t.locktype = 'transactionid' AND t.transactionid = x::xid
                                   AND a.locktype = 'advisory') AS announced
                     FROM pg_snapshot_xip(snapshot) AS x
                 ), known AS (
                     SELECT id, live, announced,
                         CASE WHEN live THEN NULL ELSE pg_xact_status(x) END AS status
                     FROM running
                 )
                 SELECT min(id) FILTER (WHERE announced OR (NOT live AND status = 'in progress')),
                     array_agg(id) FILTER (WHERE NOT live AND status = 'committed')
                 INTO holding, committed FROM known;
                 IF committed IS NOT NULL THEN
                     IF current_setting('transaction_isolation') <> 'read committed' THEN
                         SELECT min(e.id) INTO left_events FROM unnest(committed) AS e(id);
                     ELSE
                         SELECT min(e.id) INTO left_events FROM unnest(committed) AS e(id)
                         WHERE EXISTS (SELECT 1 FROM {events}
                                       WHERE position >= (e.id << {shift})
                                         AND position < ((e.id + 1) << {shift}));
                     END IF;
                 END IF;
                 RETURN least(bound, holding, left_events) << {shift};
             END
             $fn$"
        ),
    ]
}

async fn execute(tx: &mut sqlx::PgConnection, statement: &str) -> sqlx::Result<()> {
    sqlx::query(statement)
        .persistent(false)
        .execute(tx)
        .await
        .map(drop)
}

/// Step 2: each snapshot names the event at its version, and payloads, metadata and states
/// are `json`, which keeps the text as written (`jsonb` turns `-0.0` into `0.0` and refuses
/// `\u0000`) and costs no conversion on each read. The type change rewrites both tables.
fn bound_snapshots_and_exact_json(layout: &Layout) -> Vec<String> {
    let Layout {
        events, snapshots, ..
    } = layout;
    vec![
        format!("ALTER TABLE {snapshots} ADD COLUMN IF NOT EXISTS event_id UUID"),
        format!("ALTER TABLE {snapshots} ALTER COLUMN state TYPE json USING state::json"),
        format!(
            "ALTER TABLE {events}
                ALTER COLUMN payload TYPE json USING payload::json,
                ALTER COLUMN metadata TYPE json USING metadata::json"
        ),
    ]
}

/// Step 1: the tables and indexes of the 0.1 layout.
fn tables(layout: &Layout) -> Vec<String> {
    let Layout {
        events, snapshots, ..
    } = layout;
    let mut statements = vec![];
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
