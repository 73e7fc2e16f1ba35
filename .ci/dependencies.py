#!/usr/bin/env python3
"""Checks the dependency tree of the published crates, offline, from the lock file:

- every licence is one the project accepts (an expression is accepted when one of its
  alternatives is made only of accepted licences);
- no crate is built in two versions, but those listed in .ci/duplicates.txt, each with why;
- no crate needs a newer Rust than the workspace's declared `rust-version`.

Only what a user's build compiles counts: the normal and build dependencies of the
workspace's library crates, with every feature, on x86_64 Linux; dev-dependencies (tests,
benchmarks, examples) do not reach users.
"""

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACCEPTED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause", "BSD-3-Clause",
    "ISC", "Zlib", "Unicode-3.0", "Unlicense", "BSL-1.0", "CDLA-Permissive-2.0", "0BSD",
}
PUBLISHED = {"eventsourcing-kit", "eventsourcing-kit-derive"}


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version=1", "--all-features", "--locked", "--offline",
         "--filter-platform", "x86_64-unknown-linux-gnu"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def accepted(expression):
    """Whether a licence expression (`A OR B`, `A AND B`, `A/B`, parentheses) is satisfiable
    with accepted licences only."""
    tokens = re.findall(r"\(|\)|[^\s()]+(?:\s+WITH\s+[^\s()]+)?", expression.replace("/", " OR "))
    position = 0

    def alternatives():  # OR of conjunctions
        nonlocal position
        result = conjunction()
        while position < len(tokens) and tokens[position] == "OR":
            position += 1
            result = conjunction() or result
        return result

    def conjunction():  # AND of terms
        nonlocal position
        result = term()
        while position < len(tokens) and tokens[position] == "AND":
            position += 1
            result = term() and result
        return result

    def term():
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "(":
            result = alternatives()
            position += 1  # the closing parenthesis
            return result
        return re.sub(r"\s+", " ", token) in ACCEPTED

    return alternatives()


def main():
    meta = metadata()
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    roots = [p["id"] for p in meta["packages"] if p["name"] in PUBLISHED and p["source"] is None]
    seen, stack = set(), list(roots)
    while stack:
        node = nodes[stack.pop()]
        if node["id"] in seen:
            continue
        seen.add(node["id"])
        for dep in node["deps"]:
            if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    built = [packages[i] for i in seen if packages[i]["source"] is not None]

    problems = []
    for p in built:
        licence = p.get("license")
        if not licence or not accepted(licence):
            problems.append(f"{p['name']} {p['version']}: licence {licence!r} is not accepted")

    allowed = {}
    for line in (ROOT / ".ci" / "duplicates.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            allowed[name] = why.strip()
    versions = {}
    for p in built:
        versions.setdefault(p["name"], set()).add(p["version"])
    for name, found in sorted(versions.items()):
        if len(found) > 1 and name not in allowed:
            problems.append(f"{name} is built in {len(found)} versions: {', '.join(sorted(found))}")

    declared = tuple(int(x) for x in re.search(
        r'rust-version\s*=\s*"([\d.]+)"', (ROOT / "Cargo.toml").read_text()).group(1).split("."))
    for p in built:
        if p.get("rust_version"):
            needs = tuple(int(x) for x in p["rust_version"].split("."))
            if needs > declared + (0,) * (len(needs) - len(declared)):
                problems.append(f"{p['name']} {p['version']} needs Rust {p['rust_version']}, "
                                f"above the declared {'.'.join(map(str, declared))}")

    print(f"dependencies: {len(built)} crates built for users, "
          f"{sum(len(v) > 1 for v in versions.values())} in two versions (allowed: {', '.join(sorted(allowed)) or 'none'})")
    for problem in problems:
        print("dependencies:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
