"""pgqueue.claim of two schema revisions, alternated in one run: plain, keyed
and rate-limited claims.

    .venv/bin/python scripts/claim_ab.py --dsn postgresql://postgres@127.0.0.1:5432/test \\
        --before 0013 --after 0014

Creates two scratch databases on that server (dropped at the end), migrates
one to each revision, and per round empties, on one connection, in each:
20,000 plain jobs claimed 10 at a time, 2,000 keyed jobs (40 keys, limit 2)
claimed 8 at a time, and 2,000 jobs of a rate-limited queue (a limit it never
reaches) claimed 10 at a time, each claim's leases completed with
``pgqueue.complete_many``. The two revisions take turns going first. It
prints the median milliseconds of a claim call of each kind, and after/before.
A change to the claim is shown not to make it slower by this on a quiet
machine; the rounds of one revision vary by about a tenth between runs, so
compare medians of many rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import psycopg

from pgqueue import _migrate
from pgqueue.bench._run import _scratch as scratch_database

KINDS = {
    # kind: (setup statements, queue, claim limit)
    "plain": (
        ["INSERT INTO pgqueue.jobs (queue, task) SELECT 'q', 't' FROM generate_series(1, 20000)"],
        "q",
        10,
    ),
    "keyed": (
        [
            "INSERT INTO pgqueue.jobs (queue, task, concurrency_key, concurrency_limit)"
            " SELECT 'k', 't', 'key' || (i % 40), 2 FROM generate_series(1, 2000) i"
        ],
        "k",
        8,
    ),
    "rated": (
        [
            "SELECT pgqueue.set_rate_limit('r', 1000000, '1 hour')",
            "INSERT INTO pgqueue.jobs (queue, task) SELECT 'r', 't' FROM generate_series(1, 2000)",
        ],
        "r",
        10,
    ),
}


def _drain(dsn: str, kind: str) -> float:
    """Median seconds of one claim call while emptying ``kind``'s jobs."""
    setup, queue, limit = KINDS[kind]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.attempts, pgqueue.jobs CASCADE")
        conn.execute("DELETE FROM pgqueue.queues")
        for statement in setup:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute("ANALYZE pgqueue.jobs")
        times = []
        while True:
            started = time.perf_counter()
            rows = conn.execute(
                "SELECT id, attempts FROM pgqueue.claim('w', %s, %s, '1 minute')", ([queue], limit)
            ).fetchall()
            times.append(time.perf_counter() - started)
            if not rows:
                return statistics.median(times)
            conn.execute(
                "SELECT count(*) FROM pgqueue.complete_many(%s, %s, %s::jsonb[])",
                ([r[0] for r in rows], [r[1] for r in rows], [None] * len(rows)),
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="a server to make scratch databases on")
    parser.add_argument("--before", required=True, help="a schema revision, e.g. 0013")
    parser.add_argument("--after", required=True, help="another, e.g. 0014")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    revisions = (args.before, args.after)
    with contextlib.ExitStack() as stack:
        dsns = {
            rev: stack.enter_context(scratch_database(args.dsn, f"claim_{rev}"))
            for rev in revisions
        }
        for rev in revisions:
            _migrate.upgrade(dsns[rev], rev)
        medians: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            order = revisions if round_ % 2 == 0 else revisions[::-1]
            for rev in order:
                for kind in KINDS:
                    medians.setdefault((rev, kind), []).append(_drain(dsns[rev], kind))
        for kind in KINDS:
            before = statistics.median(medians[(args.before, kind)]) * 1000
            after = statistics.median(medians[(args.after, kind)]) * 1000
            print(
                f"{kind:6} claim: {args.before} {before:.3f} ms, {args.after} {after:.3f} ms"
                f" ({after / before:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
