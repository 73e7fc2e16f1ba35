#!/usr/bin/env python3
"""One sitting of the PostgreSQL performance claims, as ratios to what they are compared with.

Each round measures our cells and what each is compared with, one after the other on the same
machine and server, in reverse order every other round so that no side always runs first:

- replay:   a load without a snapshot of an N-event stream, against psql's `\\copy` of the
            same rows (the five columns a replay reads) to /dev/null: ours / \\copy, in time;
- save:     a one-event save (on a stream of 1,000 events, the load benchmark's median),
            against pgbench's one-row INSERT at one client (the mean time of a commit over
            its run): what a commit costs on this server;
- snapshot: a one-event save with its sync snapshot, against a one-event save alone
            (both from the same run of the load benchmark): in time;
- writers:  64 writers saving one event each on their own accounts (the throughput
            benchmark), against pgbench's one-row INSERT at 64 clients
            (benches/pgbench_insert.sh --shape bare): ours / pgbench, in saves per second;
- hot:      64 callers running commands on 4 accounts, with the command queue against retry
            alone (the throughput benchmark's two hot-account cells), in commands per second;
- peer:     with --peer DIR (the cqrs-es/postgres-es benchmark, as ../shared/reference/cqrs-es
            holds it): postgres-es's full replay of N events and one-event save at 1,000
            events, over ours: how many times faster ours is.

`--contention` repeats every round under a load of the script's own making, each in turn:
`none`; `cpu`, one busy process per core; `disk`, a process writing and fsyncing 8 MiB at a
time to a temporary file. The table gives, per cell and contention, each round's
ratio, their median and their range, and the medians of the two sides' absolute figures as an
illustration.

    benches/sitting.py [--rounds 3] [--contention none,cpu,disk] [--size 100000]
        [--seconds 5] [--cells replay,save,snapshot,writers,hot,peer] [--peer DIR] [--url URL]

URL is a libpq URL (default $EVENTSOURCE_TEST_POSTGRES_URL, else
postgres://postgres@127.0.0.1:5432/test); the script works in schemas of its own
(`sitting_<pid>`, and `cqrsbench_<pid>` for the peer), dropped at the end. It builds the
benchmark examples in release mode first (and the peer, in a directory of its own), then
prints a markdown table.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVE_SIZE = 1000


def options():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contention", default="none,cpu,disk")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--cells", default="replay,save,snapshot,writers,hot,peer")
    parser.add_argument("--peer", default=os.path.join(REPOSITORY, "..", "shared", "reference", "cqrs-es"))
    parser.add_argument(
        "--url",
        default=os.environ.get("EVENTSOURCE_TEST_POSTGRES_URL") or "postgres://postgres@127.0.0.1:5432/test",
    )
    args = parser.parse_args()
    args.contention = args.contention.split(",")
    args.cells = args.cells.split(",")
    for mode in args.contention:
        if mode not in HOGS:
            parser.error(f"unknown contention {mode}: none, cpu or disk")
    for cell in args.cells:
        if cell not in ("replay", "save", "snapshot", "writers", "hot", "peer"):
            parser.error(f"unknown cell {cell}: replay, save, snapshot, writers, hot or peer")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.size <= 50:
        parser.error("--size must be above 50: the load benchmark snapshots the stream at N-50")
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    if "peer" in args.cells and not os.path.isfile(os.path.join(args.peer, "Cargo.toml")):
        print(f"no peer benchmark in {args.peer}: the peer cells are left out", file=sys.stderr)
        args.cells.remove("peer")
    return args


def with_query(url, query):
    return url + ("&" if "?" in url else "?") + query


def run(command, **kwargs):
    """Runs a command, its output captured; fails the sitting with its stderr if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def build():
    """Builds our benchmarks; the directory of their binaries."""
    print("building the benchmarks (release)...", file=sys.stderr)
    run(
        ["cargo", "build", "--release", "--all-features",
         "--example", "load_benchmark", "--example", "throughput_benchmark"],
        cwd=REPOSITORY,
    )
    metadata = json.loads(run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPOSITORY))
    return os.path.join(metadata["target_directory"], "release", "examples")


def build_peer(peer):
    """Builds the peer's benchmark where its run.sh would; the binary."""
    work = os.environ.get("CQRSBENCH_DIR") or os.path.join(tempfile.gettempdir(), "cqrsbench")
    os.makedirs(work, exist_ok=True)
    shutil.copy(os.path.join(peer, "Cargo.toml"), work)
    shutil.copytree(os.path.join(peer, "src"), os.path.join(work, "src"), dirs_exist_ok=True)
    print(f"building the peer's benchmark in {work}...", file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}
    run(["cargo", "build", "--release", "-q"], cwd=work, env=env)
    return os.path.join(work, "target", "release", "cqrsbench")


# ---------------------------------------------------------------------------------------
# Contention of the script's own making


# Each hog stops by itself once the sitting is gone, however it ended.
CPU_BUSY = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


def cpu_hog(_directory):
    busy = [sys.executable, "-c", CPU_BUSY, str(os.getpid())]
    return [subprocess.Popen(busy) for _ in range(os.cpu_count() or 2)]


DISK_WRITER = """
import os, sys
path = os.path.join(sys.argv[1], "hog")
parent = int(sys.argv[2])
chunk = os.urandom(8 << 20)
with open(path, "wb") as f:
    while os.getppid() == parent:
        for _ in range(32):
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        f.seek(0)
        f.truncate()
"""


def disk_hog(directory):
    return [subprocess.Popen([sys.executable, "-c", DISK_WRITER, directory, str(os.getpid())])]


HOGS = {"none": lambda _directory: [], "cpu": cpu_hog, "disk": disk_hog}


def stop(hogs):
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


# ---------------------------------------------------------------------------------------
# Our side and its comparisons


def table_cells(markdown, first_column):
    """The rows of a markdown table whose first cell is `first_column`, as lists of cells."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_column:
            rows.append(cells)
    return rows


def median_ms(cell):
    """`1.56 (1.27–2.04)` -> 1.56."""
    return float(cell.split()[0])


def ours_load(binaries, url, size):
    """Our full replay at `size`, our save and save with a sync snapshot at SAVE_SIZE (ms)."""
    out = run([os.path.join(binaries, "load_benchmark"), "--stores", "postgres",
               "--sizes", f"{SAVE_SIZE},{size}", "--runs", "21", "--postgres", url])
    rows = {int(r[1]): r for r in table_cells(out, "postgres")}
    return {
        "replay": median_ms(rows[size][2]),
        "save": median_ms(rows[SAVE_SIZE][5]),
        "save+snapshot": median_ms(rows[SAVE_SIZE][6]),
    }


def copy_ms(base_url, schema, size):
    """psql's \\copy of the replay's columns of the newest `size`-event stream: median of 3 (ms)."""
    table = f'"{schema}".eventsource_events'
    stream = run(["psql", base_url, "-Atc",
                  f"SELECT aggregate_id FROM {table} WHERE aggregate_version = {size} "
                  "ORDER BY position DESC LIMIT 1"]).strip()
    copy = (f"\\copy (SELECT aggregate_version, event_id, event_type, event_version, payload "
            f"FROM {table} WHERE aggregate_id = '{stream}' AND aggregate_type = 'Account' "
            f"AND aggregate_version <= {size} ORDER BY aggregate_version) TO '/dev/null'")
    times = []
    for _ in range(3):
        out = run(["psql", base_url, "-c", "\\timing on", "-c", copy])
        times.append(float(re.findall(r"Time: ([0-9.]+) ms", out)[-1]))
    return statistics.median(times)


def ours_writers(binaries, base_url, seconds, cells):
    """Saves (or commands) per second of each of the throughput benchmark's `cells`."""
    out = run([os.path.join(binaries, "throughput_benchmark"), "--postgres-only",
               "--seconds", str(seconds), "--cells", ",".join(cells), "--postgres", base_url])
    rows = table_cells(out, "postgres")
    for row in rows:
        # Counted out of the rate, which is of saves that succeeded; a command on the hot
        # accounts may give up after its 50 attempts without the queue.
        if row[8] != "0":
            print(f"{row[8]} saves failed in the throughput benchmark's cell {row[1:4]}", file=sys.stderr)
    return [float(row[4]) for row in rows]


def pgbench(base_url, seconds, clients):
    """pgbench's commits per second of a bare one-row INSERT at `clients` clients."""
    out = run(["bash", os.path.join(REPOSITORY, "benches", "pgbench_insert.sh"), "--url", base_url,
               "--seconds", str(seconds), "--clients", str(clients), "--shape", "bare"])
    return float(table_cells(out, str(clients))[0][1])


def per_commit_ms(commits_per_second):
    return 1000 / commits_per_second if commits_per_second else math.nan


def peer_cells(binary, base_url, schema, size):
    """postgres-es's full replay at `size` and save at SAVE_SIZE (ms)."""
    with tempfile.TemporaryDirectory() as out:
        run([binary, "--backends", "pg", "--sizes", f"{SAVE_SIZE},{size}", "--runs", "7",
             "--save-runs", "15", "--build", "bulk", "--pg-url", base_url, "--schema", schema,
             "--out-dir", out])
        with open(os.path.join(out, "results.jsonl")) as f:
            results = {r["n"]: r for r in map(json.loads, f) if "n" in r}
    return {
        "replay": results[size]["load_no_snapshot"]["median_ms"],
        "save": results[SAVE_SIZE]["save1_no_snapshot"]["median_ms"],
    }


# ---------------------------------------------------------------------------------------
# The sitting


def one_round(args, binaries, peer, schema, flip):
    """Every cell once, each of our measurements beside what it is compared with; figures by
    name. The measurements of one group run one after the other, in reverse order every other
    round, so that no side always runs first."""
    url = with_query(args.url, f"schema={schema}")
    cells = set(args.cells)
    figures = {}

    def in_turn(steps):
        steps = [step for step in steps if step is not None]
        for step in reversed(steps) if flip else steps:
            figures.update(step())

    if {"replay", "save", "snapshot", "peer"} & cells:
        # \copy reads the newest stream of N events the load benchmark made: in the first
        # round, which does not flip, the one it has just made.
        in_turn([
            lambda: {f"ours {k}": v for k, v in ours_load(binaries, url, args.size).items()},
            (lambda: {"copy": copy_ms(args.url, schema, args.size)}) if "replay" in cells else None,
            (lambda: {"commit": per_commit_ms(pgbench(args.url, args.seconds, 1))}) if "save" in cells else None,
            (lambda: {f"peer {k}": v for k, v in
                      peer_cells(peer, args.url, f"cqrsbench_{os.getpid()}", args.size).items()})
            if "peer" in cells else None,
        ])
    if "writers" in cells:
        in_turn([
            lambda: {"ours writers": ours_writers(binaries, args.url, args.seconds, ["own:64"])[0]},
            lambda: {"pgbench": pgbench(args.url, args.seconds, 64)},
        ])
    if "hot" in cells:
        in_turn([
            lambda: {"ours hot": ours_writers(binaries, args.url, args.seconds, ["hot"])[0]},
            lambda: {"ours hot queued": ours_writers(binaries, args.url, args.seconds, ["hot-queued"])[0]},
        ])
    return figures


# (the cell, how the ratio reads, our figure, the figure compared with, the ratio of the two)
RATIOS = [
    ("replay", "full replay of N events / psql \\copy of its rows (time; below 1: ours is faster)",
     "ours replay", "copy", lambda ours, other: ours / other),
    ("save", "one-event save / pgbench one-row INSERT at 1 client (time; the commit's floor)",
     "ours save", "commit", lambda ours, other: ours / other),
    ("snapshot", "save with its sync snapshot / save alone (time)",
     "ours save+snapshot", "ours save", lambda ours, other: ours / other),
    ("writers", "64 writers, saves/s / pgbench one-row INSERT at 64 clients, commits/s",
     "ours writers", "pgbench", lambda ours, other: ours / other),
    ("hot", "64 callers on 4 accounts, commands/s with the command queue / with retry alone",
     "ours hot queued", "ours hot", lambda ours, other: ours / other),
    ("peer", "postgres-es full replay of N events / ours (how many times faster ours is)",
     "ours replay", "peer replay", lambda ours, other: other / ours),
    ("peer", f"postgres-es one-event save at {SAVE_SIZE} events / ours (how many times faster ours is)",
     "ours save", "peer save", lambda ours, other: other / ours),
]


def drop_schemas(base_url):
    pid = os.getpid()
    subprocess.run(["psql", base_url, "-qc",
                    f"DROP SCHEMA IF EXISTS sitting_{pid} CASCADE; DROP SCHEMA IF EXISTS cqrsbench_{pid} CASCADE"],
                   capture_output=True)


def main():
    args = options()
    binaries = build()
    peer = build_peer(args.peer) if "peer" in args.cells else None
    schema = f"sitting_{os.getpid()}"
    hog_directory = tempfile.mkdtemp(prefix="sitting-hog-")
    # A SIGTERM unwinds as Ctrl-C does: the hogs stop, the schemas and the file go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    rounds = {mode: [] for mode in args.contention}
    started = time.time()
    try:
        for number in range(args.rounds):
            for mode in args.contention:
                print(f"round {number + 1} of {args.rounds}, contention {mode}...", file=sys.stderr)
                hogs = HOGS[mode](hog_directory)
                try:
                    time.sleep(1 if hogs else 0)
                    figures = one_round(args, binaries, peer, schema, flip=number % 2 == 1)
                finally:
                    stop(hogs)
                figures["load average"] = os.getloadavg()[0]
                rounds[mode].append(figures)
                print(json.dumps({"round": number + 1, "contention": mode, **figures}), file=sys.stderr)
    finally:
        shutil.rmtree(hog_directory, ignore_errors=True)
        drop_schemas(args.url)
    report(args, rounds, time.time() - started)


def report(args, rounds, elapsed):
    loads = [r["load average"] for mode in rounds.values() for r in mode]
    print(f"{args.rounds} rounds, N = {args.size:,}, {args.seconds} s a throughput cell, "
          f"{elapsed / 60:.0f} minutes; 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
          f"(the script's own contention included), {os.cpu_count()} cores\n")
    print("| ratio | contention | each round | median | range | ours (median) | compared with (median) |")
    print("|---|---|---|---|---|---|---|")
    for cell, what, ours_key, other_key, ratio in RATIOS:
        if cell not in args.cells:
            continue
        for mode, figures in rounds.items():
            pairs = [(f[ours_key], f[other_key]) for f in figures]
            ratios = [ratio(ours, other) if ours and other else math.nan for ours, other in pairs]
            print(f"| {what} | {mode} | {', '.join(f'{r:.2f}' for r in ratios)} | "
                  f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f} | "
                  f"{statistics.median(o for o, _ in pairs):.4g} | {statistics.median(t for _, t in pairs):.4g} |")
    print("\nTimes in ms; writers in saves (commits) per second.")


if __name__ == "__main__":
    main()
