//! The event store's statements, built once for its table: the SQL text of the appends, the
//! reads and the feed, and the constants that shape positions and the append lock.

use super::Layout;

/// The name of the unique constraint on event ids, as created by the migration.
pub(super) const EVENT_ID_KEY: &str = "eventsource_events_event_id_key";

/// The unique key on a stream's versions, as created by the migration: taken, another writer
/// stored the version first.
pub(super) const STREAM_VERSION_KEY: &str = "eventsource_events_stream_version_key";

/// The primary key of the request index: taken, the request id is recorded already.
pub(super) const REQUEST_KEY: &str = "eventsource_requests_pkey";

/// The first key of the append lock an appending transaction holds (see the schema's step 7;
/// the second key is the events table's oid): "EVNT".
pub(super) const APPEND_LOCK_CLASS: i32 = 0x4556_4e54;

/// A position is the appending transaction's id shifted left by this many bits, plus the
/// event's place in its batch (from 1): positions of one append are consecutive, and those of
/// transactions are ordered by transaction id. A batch holds fewer than 2^20 events; a 64-bit
/// position leaves 43 bits of transaction ids, which lasts 27 years at 10,000 writing
/// transactions a second on the whole server.
pub(super) const POSITION_SHIFT: u32 = 20;

/// The largest batch one append can store.
pub(super) const MAX_BATCH: usize = (1 << POSITION_SHIFT) - 1;

/// The columns a read selects, as [`Reader`] decodes them.
pub(super) const COLUMNS: &str = "position, event_id, event_type, event_version, \
    aggregate_version, occurred_at, occurred_at_ns, correlation_id, causation_id, \
    metadata::text AS metadata, payload::text AS payload, request_id";

/// The columns a load reads: what a replay uses, in the order [`Loader`] decodes them.
pub(super) const LOAD_COLUMNS: &str =
    "aggregate_version, event_id, event_type, event_version, payload::text AS payload";

/// The statements of the event store, built once for its table.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) table: String,
    pub(super) append: String,
    pub(super) append_one: String,
    pub(super) group: String,
    /// The group statement of a group that holds a save over several streams.
    pub(super) group_streams: String,
    pub(super) stream_version: String,
    pub(super) position_of: String,
    pub(super) read_stream: String,
    pub(super) load_stream: String,
    /// The two reads of a stream with its archived events (see `crate::lifecycle`), which a
    /// read falls back to when the live table starts the stream past the next version.
    pub(super) read_archived_stream: String,
    pub(super) load_archived_stream: String,
    pub(super) read_all: String,
    /// The feed's bound now: positions below it are final.
    pub(super) feed_bound: String,
    /// Some slices' events, each after its own position and below a bound.
    pub(super) read_slices: String,
    pub(super) head: String,
    pub(super) holder: String,
    /// The request index: one request's record.
    pub(super) request: String,
    pub(super) record_refusal: String,
    pub(super) forget_refusals: String,
    /// The batch append that records its request.
    pub(super) append_request: String,
    /// The batch appends in the application's transaction, which may have appended before:
    /// positions after those it took.
    pub(super) append_in_transaction: String,
    pub(super) append_request_in_transaction: String,
    /// A save over several streams, and the deletion of its placeholders.
    pub(super) append_streams: String,
    pub(super) delete_placeholders: String,
}

/// The append statement on `events`; with `snapshots`, it also stores a snapshot ($15 to
/// $20) in the same statement, only when the batch goes in.
pub(super) fn append_sql(events: &str, snapshots: Option<&str>, requests: Option<&str>) -> String {
    // One statement, so one transaction: the batch goes in only if the stream is at the
    // expected version ($3) when the statement starts, and the unique constraint on
    // (aggregate_id, aggregate_type, aggregate_version) fails it if a concurrent writer
    // commits the same version first. Arrays carry the batch, so any number of events is
    // one statement with fourteen parameters.
    let mut sql = format!(
        "WITH head AS (
                    SELECT coalesce(max(aggregate_version), 0) AS version FROM {events}
                    WHERE aggregate_id = $1 AND aggregate_type = $2
                ), inserted AS (
                    INSERT INTO {events} (position, event_id, event_type, event_version,
                        aggregate_id, aggregate_type, aggregate_version, occurred_at,
                        occurred_at_ns, correlation_id, causation_id, metadata, payload, request_id)
                    SELECT (pg_current_xact_id()::text::bigint << {POSITION_SHIFT}) + e.n,
                        e.event_id, e.event_type, e.event_version, $1, $2, e.aggregate_version,
                        e.occurred_at, e.occurred_at_ns, e.correlation_id, e.causation_id,
                        e.metadata::json, e.payload::json, e.request_id
                    FROM unnest($4::uuid[], $5::text[], $6::bigint[], $7::bigint[],
                                $8::timestamptz[], $9::integer[], $10::uuid[], $11::uuid[],
                                $12::text[], $13::text[], $14::text[])
                        WITH ORDINALITY AS e(event_id, event_type, event_version,
                            aggregate_version, occurred_at, occurred_at_ns, correlation_id,
                            causation_id, metadata, payload, request_id, n)
                    WHERE (SELECT version FROM head) = $3
                    ORDER BY e.n
                    RETURNING position
                )"
    );
    if let Some(snapshots) = snapshots {
        // The snapshot store's upsert (never replacing a newer snapshot), on the same
        // condition as the batch.
        sql.push_str(&format!(
            ", snapshot AS (
                INSERT INTO {snapshots} AS s (aggregate_id, aggregate_type, version, state,
                    schema_version, created_at, created_at_ns, event_id)
                SELECT $1, $2, $15, $16::json, $17, $18, $19, $20
                WHERE (SELECT version FROM head) = $3
                ON CONFLICT (aggregate_id, aggregate_type, schema_version) DO UPDATE
                SET version = EXCLUDED.version, state = EXCLUDED.state,
                    event_id = EXCLUDED.event_id, created_at = EXCLUDED.created_at,
                    created_at_ns = EXCLUDED.created_at_ns
                WHERE s.version <= EXCLUDED.version
            )"
        ));
    }
    if let Some(requests) = requests {
        // The batch's request id (every event carries it) recorded as executed by the batch,
        // if the batch went in: a request id recorded already fails the statement on the
        // primary key, and nothing of the batch is stored.
        let fingerprint = if snapshots.is_some() { "$21" } else { "$15" };
        sql.push_str(&format!(
            ", request AS (
                INSERT INTO {requests} (request_id, aggregate_type, aggregate_id, fingerprint,
                    version, position)
                SELECT ($14::text[])[1], $2, $1, {fingerprint}::bigint,
                    $3 + cardinality($4::uuid[]), max(position)
                FROM inserted HAVING count(*) > 0
            )"
        ));
    }
    sql.push_str(
        "
                SELECT (SELECT version FROM head), (SELECT count(*) FROM inserted),
                    (SELECT max(position) FROM inserted)",
    );
    sql
}

/// The event type of the placeholder rows of a save over several streams (see
/// [`super::multi`]), which never commit.
const PLACEHOLDER: &str = "eventsource.check";

/// The statement of a save over several streams on `events`. `$1`-`$3`: each stream's id,
/// type and expected version, written ones first; `$4`-`$14`: the events' columns as the
/// append statements bind them, `$15`-`$16` the stream of each; `$17`-`$20`: each checked
/// stream and its placeholder's event id. One row per stream, in
/// order: its version as the statement found it, and the position of its last event stored.
///
/// Each array is read through a sub-select, `unnest((SELECT $1::uuid[]))`, so that the
/// planner cannot count its elements: it then costs the statement the same whatever the save
/// holds, and after five calls the server keeps one generic plan for the connection. Counting
/// them, it would cost each call's own plan for the save's two or three rows, find the generic
/// plan (costed for the default number of rows) dearer than that, and plan the statement again
/// at every call, which took longer than running it.
fn append_streams_sql(events: &str) -> String {
    format!(
        "WITH expected AS (
            SELECT x.n, x.aggregate_id, x.aggregate_type, x.version,
                coalesce((SELECT max(e.aggregate_version) FROM {events} e
                          WHERE e.aggregate_id = x.aggregate_id
                            AND e.aggregate_type = x.aggregate_type), 0) AS actual
            FROM unnest((SELECT $1::uuid[]), (SELECT $2::text[]), (SELECT $3::bigint[]))
                WITH ORDINALITY AS x(aggregate_id, aggregate_type, version, n)
        ), inserted AS (
            INSERT INTO {events} (position, event_id, event_type, event_version, aggregate_id,
                aggregate_type, aggregate_version, occurred_at, occurred_at_ns, correlation_id,
                causation_id, metadata, payload, request_id)
            SELECT (pg_current_xact_id()::text::bigint << {POSITION_SHIFT}) + r.n, r.event_id,
                r.event_type, r.event_version, r.aggregate_id, r.aggregate_type,
                r.aggregate_version, r.occurred_at, r.occurred_at_ns, r.correlation_id,
                r.causation_id, r.metadata::json, r.payload::json, r.request_id
            FROM (
                SELECT e.n, e.event_id, e.event_type, e.event_version, e.aggregate_id,
                    e.aggregate_type, e.aggregate_version, e.occurred_at, e.occurred_at_ns,
                    e.correlation_id, e.causation_id, e.metadata, e.payload, e.request_id
                FROM unnest((SELECT $4::uuid[]), (SELECT $5::text[]), (SELECT $6::bigint[]),
                            (SELECT $15::uuid[]), (SELECT $16::text[]), (SELECT $7::bigint[]),
                            (SELECT $8::timestamptz[]), (SELECT $9::integer[]),
                            (SELECT $10::uuid[]), (SELECT $11::uuid[]), (SELECT $12::text[]),
                            (SELECT $13::text[]), (SELECT $14::text[]))
                    WITH ORDINALITY AS e(event_id, event_type, event_version, aggregate_id,
                        aggregate_type, aggregate_version, occurred_at, occurred_at_ns,
                        correlation_id, causation_id, metadata, payload, request_id, n)
                UNION ALL
                SELECT (SELECT cardinality($4::uuid[])) + c.n, c.placeholder, '{PLACEHOLDER}', 1,
                    c.aggregate_id, c.aggregate_type, c.version + 1, now(), 0, NULL, NULL,
                    NULL, '{{}}', NULL
                FROM unnest((SELECT $17::uuid[]), (SELECT $18::text[]), (SELECT $19::bigint[]),
                            (SELECT $20::uuid[]))
                    WITH ORDINALITY AS c(aggregate_id, aggregate_type, version, placeholder, n)
            ) r
            WHERE NOT EXISTS (SELECT 1 FROM expected WHERE version <> actual)
            -- In the order of the streams, not of the save: two saves over the same streams
            -- wait for each other's keys in one order, never in a cycle.
            ORDER BY r.aggregate_id, r.aggregate_type, r.aggregate_version
            RETURNING position, aggregate_id, aggregate_type
        )
        SELECT x.actual, (SELECT max(i.position) FROM inserted i
                          WHERE i.aggregate_id = x.aggregate_id
                            AND i.aggregate_type = x.aggregate_type)
        FROM expected x ORDER BY x.n"
    )
}

/// The statement that deletes a save's placeholders.
fn delete_placeholders_sql(events: &str) -> String {
    format!("DELETE FROM {events} WHERE event_id = ANY($1::uuid[]) AND event_type = '{PLACEHOLDER}'")
}

/// `append`, an append statement, with the batch's positions after those the transaction
/// took already: a transaction's positions are its id shifted left plus a place from 1, so a
/// second append in one transaction (the application's, saving twice) starts after the last
/// position the first one stored, which the transaction sees.
fn after_own_appends(append: &str, events: &str) -> String {
    let own = format!("(pg_current_xact_id()::text::bigint << {POSITION_SHIFT})");
    let taken = format!(
        "(SELECT coalesce(max(p.position) - {own}, 0) FROM {events} p
          WHERE p.position > {own} AND p.position < {own} + {})",
        1_i64 << POSITION_SHIFT
    );
    let first = format!("{own} + e.n,");
    assert!(
        append.contains(&first),
        "the append statement numbers its rows from its own base"
    );
    append.replacen(&first, &format!("{own} + {taken} + e.n,"), 1)
}

impl Sql {
    pub(super) fn new(layout: &Layout) -> Self {
        let (events, requests, archived) = (&layout.events, &layout.requests, &layout.archived_events);
        let feed_bound = &layout.feed_bound;
        Self {
            table: events.clone(),
            append: append_sql(events, None, None),
            append_request: append_sql(events, None, Some(&layout.requests)),
            append_in_transaction: after_own_appends(&append_sql(events, None, None), events),
            append_request_in_transaction: after_own_appends(
                &append_sql(events, None, Some(&layout.requests)),
                events,
            ),
            append_streams: append_streams_sql(events),
            delete_placeholders: delete_placeholders_sql(events),
            group: group_sql(events),
            group_streams: group_streams_sql(events),
            // One event (the most common batch) without arrays: it goes in only if the stream
            // is at the expected version ($3) when the statement starts, and a concurrent
            // writer that commits version $3 + 1 first leaves it out (no row: a conflict,
            // without an error).
            append_one: format!(
                "INSERT INTO {events} (position, event_id, event_type, event_version,
                    aggregate_id, aggregate_type, aggregate_version, occurred_at,
                    occurred_at_ns, correlation_id, causation_id, metadata, payload, request_id)
                 SELECT (pg_current_xact_id()::text::bigint << {POSITION_SHIFT}) + 1,
                    $4, $5, $6, $1, $2, $3 + 1, $7, $8, $9, $10, $11::json, $12::json, $13
                 WHERE (SELECT coalesce(max(aggregate_version), 0) FROM {events}
                    WHERE aggregate_id = $1 AND aggregate_type = $2) = $3
                 ON CONFLICT (aggregate_id, aggregate_type, aggregate_version) DO NOTHING
                 RETURNING position"
            ),
            stream_version: format!(
                "SELECT coalesce(max(aggregate_version), 0) FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2"
            ),
            // A stream's archived events (see `crate::lifecycle`), then its live ones.
            position_of: format!(
                "SELECT position FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version = $3
                 UNION ALL SELECT position FROM {archived}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version = $3"
            ),
            // The whole stream in one statement, rows streamed as the caller takes them.
            load_stream: format!(
                "SELECT {LOAD_COLUMNS} FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 ORDER BY aggregate_version"
            ),
            read_stream: format!(
                "SELECT {COLUMNS} FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 ORDER BY aggregate_version LIMIT $4"
            ),
            load_archived_stream: format!(
                "SELECT {LOAD_COLUMNS} FROM {archived}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 UNION ALL SELECT {LOAD_COLUMNS} FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 ORDER BY aggregate_version"
            ),
            read_archived_stream: format!(
                "SELECT {COLUMNS} FROM {archived}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 UNION ALL SELECT {COLUMNS} FROM {events}
                 WHERE aggregate_id = $1 AND aggregate_type = $2 AND aggregate_version > $3
                 ORDER BY aggregate_version LIMIT $4"
            ),
            // Only positions below every appending transaction still running are final: one
            // with a lower id than an event already read would otherwise commit later, below
            // it (see the schema's step 7).
            read_all: format!(
                "SELECT {COLUMNS}, aggregate_id, aggregate_type FROM {events}
                 WHERE position > $1 AND position < (SELECT {feed_bound}(pg_current_snapshot()))
                 ORDER BY position LIMIT $2"
            ),
            feed_bound: format!("SELECT {feed_bound}(pg_current_snapshot())"),
            // Each slice ($1) from its own position ($2) on, below the bound ($3), at most $4
            // of each: one index scan per slice.
            read_slices: format!(
                "SELECT e.*, c.slice FROM unnest($1::integer[], $2::bigint[]) AS c(slice, after)
                 CROSS JOIN LATERAL (
                    SELECT {COLUMNS}, aggregate_id, aggregate_type FROM {events}
                    WHERE slice = c.slice AND position > c.after AND position < $3
                    ORDER BY position LIMIT $4
                 ) AS e"
            ),
            request: format!(
                "SELECT aggregate_type, aggregate_id, fingerprint, version, position, refusal,
                    recorded_at FROM {requests} WHERE request_id = $1"
            ),
            record_refusal: format!(
                "INSERT INTO {requests} (request_id, aggregate_type, aggregate_id, fingerprint,
                    refusal, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING"
            ),
            forget_refusals: format!(
                "DELETE FROM {requests}
                 WHERE refusal IS NOT NULL AND recorded_at < $1 AND ($2::text IS NULL OR request_id = $2)"
            ),
            // What the feed shows after $1, and what is stored there but held back. The
            // condition is a range, with an upper end that holds every position: the plan a
            // connection keeps for every $1 (its generic plan) expects a range to hold a few
            // rows and reads the index, where `position > $1` alone is expected to hold a
            // third of the table, which it would scan whole at every call.
            head: format!(
                "WITH bound AS MATERIALIZED (SELECT {feed_bound}(pg_current_snapshot()) AS position)
                 SELECT max(e.position) FILTER (WHERE e.position < b.position),
                     count(*) FILTER (WHERE e.position < b.position),
                     count(*) FILTER (WHERE e.position >= b.position)
                 FROM {events} e, bound b WHERE e.position > $1 AND e.position <= {}",
                i64::MAX
            ),
            // The oldest transaction that announced an append and still runs.
            holder: {
                let class = APPEND_LOCK_CLASS;
                format!(
                    "SELECT a.pid, a.datname::text,
                         extract(epoch FROM clock_timestamp() - a.xact_start)::float8
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE l.locktype = 'advisory' AND l.classid = {class} AND l.objid = '{events}'::regclass
                       AND l.objsubid = 2
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                     ORDER BY a.xact_start LIMIT 1"
                )
            },
        }
    }
}

/// The group statement on `events`: every row whose stream is at its expected version, each
/// at the version after it, positions in the order of the rows (the base plus the row's place
/// from 1, which tells the writer which rows went in).
pub(super) fn group_sql(events: &str) -> String {
    format!(
        "INSERT INTO {events} AS t (position, event_id, event_type, event_version, aggregate_id,
            aggregate_type, aggregate_version, occurred_at, occurred_at_ns, correlation_id,
            causation_id, metadata, payload, request_id)
         SELECT (pg_current_xact_id()::text::bigint << {POSITION_SHIFT}) + e.n, e.event_id,
            e.event_type, e.event_version, e.aggregate_id, e.aggregate_type, e.expected + 1,
            e.occurred_at, e.occurred_at_ns, e.correlation_id, e.causation_id, e.metadata::json,
            e.payload::json, e.request_id
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::bigint[],
                     $7::timestamptz[], $8::integer[], $9::uuid[], $10::uuid[], $11::text[],
                     $12::text[], $13::text[])
            WITH ORDINALITY AS e(event_id, event_type, event_version, aggregate_id,
                aggregate_type, expected, occurred_at, occurred_at_ns, correlation_id,
                causation_id, metadata, payload, request_id, n)
         WHERE (SELECT coalesce(max(v.aggregate_version), 0) FROM {events} v
                WHERE v.aggregate_id = e.aggregate_id AND v.aggregate_type = e.aggregate_type)
               = e.expected
         -- In the order of the streams, as saves over several streams take their keys: two
         -- statements never wait for each other's keys in a cycle. Positions keep the
         -- arrival order (e.n).
         ORDER BY e.aggregate_id, e.aggregate_type, e.n
         ON CONFLICT (aggregate_id, aggregate_type, aggregate_version) DO NOTHING
         RETURNING t.position"
    )
}

/// The group statement on `events` for a group of batches and saves over several streams (see
/// [`super::group`]): `$1`-`$13` as [`group_sql`] binds them, `$14` the member of each row and
/// `$15` the version it takes. A member's rows go in only if every stream of the member is at
/// its expected version when the statement starts. There is no `ON CONFLICT`: the members
/// share no stream, so a version taken first is a concurrent writer's, and the error it
/// raises fails the group rather than leave part of a save in.
///
/// The arrays are read through sub-selects, as in [`append_streams_sql`], so that the server
/// keeps one plan whatever the group's size.
pub(super) fn group_streams_sql(events: &str) -> String {
    format!(
        "WITH r AS MATERIALIZED (
            SELECT e.*, coalesce((SELECT max(v.aggregate_version) FROM {events} v
                                  WHERE v.aggregate_id = e.aggregate_id
                                    AND v.aggregate_type = e.aggregate_type), 0) AS actual
            FROM unnest((SELECT $1::uuid[]), (SELECT $2::text[]), (SELECT $3::bigint[]),
                        (SELECT $4::uuid[]), (SELECT $5::text[]), (SELECT $6::bigint[]),
                        (SELECT $7::timestamptz[]), (SELECT $8::integer[]), (SELECT $9::uuid[]),
                        (SELECT $10::uuid[]), (SELECT $11::text[]), (SELECT $12::text[]),
                        (SELECT $13::text[]), (SELECT $14::integer[]), (SELECT $15::bigint[]))
                WITH ORDINALITY AS e(event_id, event_type, event_version, aggregate_id,
                    aggregate_type, expected, occurred_at, occurred_at_ns, correlation_id,
                    causation_id, metadata, payload, request_id, member, aggregate_version, n)
        )
        INSERT INTO {events} AS t (position, event_id, event_type, event_version, aggregate_id,
            aggregate_type, aggregate_version, occurred_at, occurred_at_ns, correlation_id,
            causation_id, metadata, payload, request_id)
        SELECT (pg_current_xact_id()::text::bigint << {POSITION_SHIFT}) + r.n, r.event_id,
            r.event_type, r.event_version, r.aggregate_id, r.aggregate_type, r.aggregate_version,
            r.occurred_at, r.occurred_at_ns, r.correlation_id, r.causation_id, r.metadata::json,
            r.payload::json, r.request_id
        FROM r
        WHERE NOT EXISTS (SELECT 1 FROM r o WHERE o.member = r.member AND o.actual <> o.expected)
        -- In the order of the streams, as the other appends take their keys.
        ORDER BY r.aggregate_id, r.aggregate_type, r.aggregate_version
        RETURNING t.position"
    )
}
