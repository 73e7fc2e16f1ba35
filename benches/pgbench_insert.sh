#!/usr/bin/env bash
# The PostgreSQL server's own ceiling for the saves of examples/throughput_benchmark.rs:
# pgbench running a one-row INSERT per transaction, the row shaped like an event row (a uuid,
# a text type, a bigint version, a timestamptz and a 58-byte JSON payload, with a primary key
# on the uuid and the version), at 1, 16 and 64 clients.
#
#   benches/pgbench_insert.sh [--url URL] [--seconds N] [--clients 1,16,64] [--shape bare|events]
#
# --shape events inserts instead into a copy of the library's own events table (LIKE
# eventsource_events INCLUDING ALL: its columns, checks and three unique indexes), a row
# with every column a save writes: the ceiling of an append of one event. The events table
# must exist on the URL's search path (any migrated database).
#
# URL is a libpq connection URI (default: $EVENTSOURCE_TEST_POSTGRES_URL, else
# postgres://postgres@127.0.0.1:5432/test). Each client count runs for N seconds (default 5)
# with -j 2 (or fewer when there are fewer clients), -n and -M prepared. The script creates
# its table, named after its process id, and drops it on exit. It prints a markdown table of
# commits per second (pgbench's tps, without the initial connection time) and average
# latency per client count.

set -euo pipefail

url="${EVENTSOURCE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
seconds=5
clients="1,16,64"
shape=bare

while [[ $# -gt 0 ]]; do
    case "$1" in
        --url) url="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --clients) clients="$2"; shift 2 ;;
        --shape) shape="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# The newest installed server version's pgbench, else the one on the PATH.
pgbench_binary() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$found" ]]; then
        echo "$found"
    else
        command -v pgbench
    fi
}

pgbench=$(pgbench_binary)
table="eventsource_pgbench_$$"
script=$(mktemp --suffix=.sql)

cleanup() {
    psql "$url" -q -v ON_ERROR_STOP=1 -c "DROP TABLE IF EXISTS $table" >/dev/null || true
    rm -f "$script"
}
trap cleanup EXIT

case "$shape" in
bare)
    psql "$url" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE TABLE $table (
    aggregate_id UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    version      BIGINT      NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    payload      JSON        NOT NULL,
    PRIMARY KEY (aggregate_id, version)
)
SQL
    cat >"$script" <<SQL
INSERT INTO $table (aggregate_id, event_type, version, occurred_at, payload)
VALUES (gen_random_uuid(), 'MoneyDeposited', 1, now(),
        '{"amount":100,"currency":"EUR","reference":"pgbench-0001"}');
SQL
    ;;
events)
    psql "$url" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE TABLE $table (LIKE eventsource_events INCLUDING ALL)
SQL
    cat >"$script" <<SQL
INSERT INTO $table (position, event_id, event_type, event_version, aggregate_id,
    aggregate_type, aggregate_version, occurred_at, occurred_at_ns, payload)
VALUES ((pg_current_xact_id()::text::bigint << 20) + 1, gen_random_uuid(), 'MoneyDeposited', 1,
        gen_random_uuid(), 'Account', 1, now(), 0,
        '{"amount":100,"currency":"EUR","reference":"pgbench-0001"}');
SQL
    ;;
*) echo "unknown shape $shape (bare or events)" >&2; exit 2 ;;
esac
# One pgbench run: prints "commits/s average-latency-ms".
run() {
    local clients="$1" jobs=2 output
    ((clients < jobs)) && jobs="$clients"
    output=$("$pgbench" -n -M prepared -f "$script" -c "$clients" -j "$jobs" -T "$seconds" "$url" 2>&1) || {
        echo "$output" >&2
        return 1
    }
    local tps latency
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$output")
    latency=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$output")
    echo "$tps $latency"
}

echo "| clients | commits/s | latency average ms |"
echo "|---|---|---|"
for c in ${clients//,/ }; do
    result=$(run "$c")
    read -r tps latency <<<"$result"
    printf '| %s | %.0f | %.3f |\n' "$c" "$tps" "$latency"
done
