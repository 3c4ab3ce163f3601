"""``pgqueue bench``: pgqueue side by side with its peers and the raw-SQL ceiling.

Every system (pgqueue, and PgQueuer and procrastinate when installed) runs in
its own scratch database on the chosen server, created and dropped here, so
real jobs are never touched. The raw-SQL ceilings get one too. All figures
come from the same run on the same server, so the ratios are what to read;
absolute numbers move with the machine and whatever else it is doing.

How each figure is taken (the same code path for every system):

- single enqueue: sequential one-job enqueue calls through the system's own
  client, each its own transaction (after a short untimed warm-up);
- bulk enqueue: the system's bulk call in chunks of 1,000 jobs;
- both in rounds: in each round every system (and the raw-SQL ceiling) takes
  its turn, in an order that changes from round to round; each figure is the
  median of its rounds, and a ratio of two enqueue figures the median of
  their rounds' ratios. Measured once per system, one system after the
  other, a ratio rested on one short moment of each;
- drain: a backlog of N no-op jobs, ANALYZEd, worked by 1 or 2 real worker
  processes; jobs/s between the first and the last task start, timed inside
  the workers (process start-up and exit excluded alike), and checked against
  the database's own count of successfully finished jobs;
- latency: one idle worker process; a job enqueued every 20 ms; the time from
  the enqueue call to the task body starting (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import glob
import json
import logging
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .._connect import resolve_dsn
from . import _constrained
from ._systems import ENQUEUE_CHUNK, SYSTEMS, Client, Config, Procrastinate, System, _version

NOT_INSTALLED = "not installed"
RAW = "raw SQL"
SETTINGS = (
    "synchronous_commit",
    "fsync",
    "shared_buffers",
    "wal_level",
    "max_wal_size",
    "max_connections",
)
METRICS = (  # key, column title, unit
    ("single_enqueue", "enqueue 1", "jobs/s"),
    ("bulk_enqueue", "bulk", "jobs/s"),
    ("drain_1", "drain 1 proc", "jobs/s"),
    ("drain_2", "drain 2 proc", "jobs/s"),
    ("latency_p50_ms", "start p50", "ms"),
    ("latency_p95_ms", "p95", "ms"),
    ("latency_p99_ms", "p99", "ms"),
)
COLUMN = 13
LOWER_IS_BETTER = {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms"}


@dataclass(frozen=True)
class Plan:
    jobs: int
    single: int  # single enqueue calls per round
    samples: int
    backlog: bool
    spacing: float = 0.02
    settle: float = 0.5  # idle time before the latency samples
    rounds: int = 5  # of the enqueue figures, every system in turn
    backlogs: tuple[int, ...] = (10_000, 1_000_000)
    backlog_drain: int = 10_000
    constrained: _constrained.Sizes = _constrained.FULL


@dataclass
class Progress:
    """One stderr line per step: ``[ 3/40] step``, with the elapsed time."""

    total: int
    enabled: bool
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 20
        filled = int(width * (self.done - 1) / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - self.started
        print(
            f"  [{bar}] {self.done:>2}/{self.total} {elapsed:6.1f}s  {label}",
            file=sys.stderr,
            flush=True,
        )


# -- scratch databases ------------------------------------------------------------------


@contextlib.contextmanager
def _scratch(server_dsn: str, label: str) -> Iterator[str]:
    name = f"pgqueue_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# -- measurements -----------------------------------------------------------------------


async def _single_enqueue(client: Client, n: int) -> float:
    for _ in range(min(20, n)):  # warm-up: open pools, prepare statements
        await client.enqueue_one()
    started = time.perf_counter()
    for _ in range(n):
        await client.enqueue_one()
    return n / (time.perf_counter() - started)


async def _bulk_enqueue(client: Client, n: int) -> float:
    started = time.perf_counter()
    await client.enqueue_many(n)
    return n / (time.perf_counter() - started)


def _probe_records(out: str) -> list[dict[str, Any]]:
    records = []
    for path in glob.glob(os.path.join(out, "*.json")):
        with open(path) as f:
            records.append(json.load(f))
    return records


def _rate(records: list[dict[str, Any]]) -> tuple[int, float]:
    count = sum(int(r["count"]) for r in records)
    first = min(float(r["first"]) for r in records)
    last = max(float(r["last"]) for r in records)
    return count, count / max(last - first, 1e-6)


def _env(dsn: str, out: str) -> dict[str, str]:
    return {**os.environ, "PGQUEUE_DSN": dsn, "PGQUEUE_BENCH_OUT": out}


def _drain(system: System, config: Config, dsn: str, processes: int, jobs: int) -> float:
    """Real worker processes empty a backlog of ``jobs`` no-op jobs."""
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-") as out:
        command = system.worker_command(config, drain=True)
        workers = [
            subprocess.Popen(
                command, env=_env(dsn, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            for _ in range(processes)
        ]
        for worker in workers:
            _, err = worker.communicate(timeout=3600)
            if worker.returncode != 0:
                raise RuntimeError(
                    f"{system.name} bench worker failed ({worker.returncode}): "
                    f"{err.decode(errors='replace')[-2000:]}"
                )
        records = _probe_records(out)
    finished = system.finished(dsn)
    count, rate = _rate(records) if records else (0, 0.0)
    if finished != jobs or count != jobs:
        raise RuntimeError(
            f"{system.name} ({config.label}): {jobs} jobs enqueued, {count} task runs, "
            f"{finished} finished in the database"
        )
    return rate


def _spawn(command: list[str], dsn: str, out: str) -> subprocess.Popen[bytes]:
    """A long-running worker process (fork + exec: it does not block)."""
    return subprocess.Popen(
        command, env=_env(dsn, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _read_stamps(out: str) -> dict[int, float]:
    stamps: dict[int, float] = {}
    for path in glob.glob(os.path.join(out, "stamps-*.txt")):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    stamps[int(parts[0])] = float(parts[1])
    return stamps


async def _wait_for_stamps(out: str, wanted: set[int], timeout: float) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    while True:
        stamps = _read_stamps(out)
        if wanted <= stamps.keys():
            return stamps
        if time.monotonic() > deadline:
            missing = len(wanted - stamps.keys())
            raise RuntimeError(f"{missing} latency samples never started within {timeout:.0f}s")
        await asyncio.sleep(0.05)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def _latency(
    system: System, config: Config, dsn: str, client: Client, plan: Plan
) -> dict[str, float]:
    """enqueue call -> task body start, with one idle worker process, in ms."""
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-") as out:
        worker = _spawn(system.worker_command(config, drain=False), dsn, out)
        try:
            # Warm-up job: the worker is up, listening and idle once it ran.
            await client.enqueue_one(sample=0)
            await _wait_for_stamps(out, {0}, timeout=60)
            await asyncio.sleep(plan.settle)
            sent: dict[int, float] = {}
            for sample in range(1, plan.samples + 1):
                sent[sample] = time.time()
                await client.enqueue_one(sample=sample)
                await asyncio.sleep(plan.spacing)
            stamps = await _wait_for_stamps(out, set(sent), timeout=60)
        finally:
            _stop(worker)
    values = [(stamps[s] - sent[s]) * 1000 for s in sent]
    return {
        "latency_p50_ms": _percentile(values, 0.50),
        "latency_p95_ms": _percentile(values, 0.95),
        "latency_p99_ms": _percentile(values, 0.99),
    }


class _RawClient(Client):
    """The raw-SQL ceilings of the enqueue shapes, on one connection: a one-row
    INSERT per call, and ``INSERT … SELECT unnest(…)`` per chunk of 1,000."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.execute("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb)")

    async def enqueue_one(self, sample: int | None = None) -> None:
        self.conn.execute("INSERT INTO bench_raw (payload) VALUES (%s::jsonb)", ("{}",))

    async def enqueue_many(self, n: int) -> None:
        for offset in range(0, n, ENQUEUE_CHUNK):
            self.conn.execute(
                "INSERT INTO bench_raw (payload) SELECT unnest(%s::jsonb[])",
                (["{}"] * min(ENQUEUE_CHUNK, n - offset),),
            )

    def reset(self) -> None:
        self.conn.execute("TRUNCATE bench_raw")

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Entrant:
    """One row of the enqueue rounds: a system's client and how to empty its
    tables."""

    name: str
    client: Client
    reset: Callable[[], None]


def _round_order(entrants: list[_Entrant], turn: int) -> list[_Entrant]:
    """Round ``turn``'s order: rotated one place every second round, and
    reversed in odd rounds. So no entrant always goes first, nor always right
    after the same other one (whose bulk enqueue and TRUNCATE it follows)."""
    shift = (turn // 2) % len(entrants)
    order = entrants[shift:] + entrants[:shift]
    return order[::-1] if turn % 2 else order


async def _enqueue_rounds(
    entrants: list[_Entrant], plan: Plan, progress: Progress
) -> dict[str, dict[str, Any]]:
    """Single and bulk enqueue of every entrant in ``plan.rounds`` rounds, every
    entrant taking its turn in each, in the order :func:`_round_order` gives.
    Each figure is the median of its rounds; the rounds' own figures are kept
    beside it."""
    single: dict[str, list[float]] = {e.name: [] for e in entrants}
    bulk: dict[str, list[float]] = {e.name: [] for e in entrants}
    for turn in range(plan.rounds):
        progress.step(
            f"enqueue round {turn + 1}/{plan.rounds}: {plan.single:,} single and "
            f"{plan.jobs:,} bulk enqueues of each system in turn"
        )
        for entrant in _round_order(entrants, turn):
            single[entrant.name].append(await _single_enqueue(entrant.client, plan.single))
            await asyncio.to_thread(entrant.reset)
            bulk[entrant.name].append(await _bulk_enqueue(entrant.client, plan.jobs))
            await asyncio.to_thread(entrant.reset)
    return {
        e.name: {
            "single_enqueue": statistics.median(single[e.name]),
            "bulk_enqueue": statistics.median(bulk[e.name]),
            "single_enqueue_rounds": single[e.name],
            "bulk_enqueue_rounds": bulk[e.name],
        }
        for e in entrants
    }


async def _measure_system(
    system: System, dsn: str, plan: Plan, progress: Progress
) -> list[dict[str, Any]]:
    """A system's drains and start latency for each configuration (and, for
    pgqueue, the keyed and rate-limited drains and the backlogs), in its
    scratch database ``dsn``; its enqueue figures come from the rounds."""
    client = await system.client(dsn)
    try:
        return await _drains_and_latency(system, dsn, client, plan, progress)
    finally:
        await client.close()


async def _drains_and_latency(
    system: System, dsn: str, client: Client, plan: Plan, progress: Progress
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"system": system.name, "config": c.label, "version": system.version(), "status": "ok"}
        for c in system.configs
    ]
    for row, config in zip(rows, system.configs, strict=True):
        for processes in (1, 2):
            await asyncio.to_thread(system.reset, dsn)
            await client.enqueue_many(plan.jobs)
            await asyncio.to_thread(system.analyze, dsn)
            progress.step(
                f"{system.name} ({config.label}): drain {plan.jobs:,} jobs, "
                f"{processes} process{'es' if processes > 1 else ''}"
            )
            row[f"drain_{processes}"] = await asyncio.to_thread(
                _drain, system, config, dsn, processes, plan.jobs
            )
        await asyncio.to_thread(system.reset, dsn)
        progress.step(f"{system.name} ({config.label}): enqueue -> start latency")
        row.update(await _latency(system, config, dsn, client, plan))
    if system.name == "pgqueue":
        await asyncio.to_thread(system.reset, dsn)
        sizes = plan.constrained
        progress.step(
            f"pgqueue: keyed drain ({sizes.keyed_jobs} jobs) and "
            f"rate-limited drain ({sizes.rated_jobs} jobs)"
        )
        rows[0]["constrained"] = await _constrained.measure(dsn, sizes)
    if plan.backlog and system.name == "pgqueue":
        backlog, checkpointed = await _backlog(system, dsn, plan, progress)
        rows[0]["backlog"] = backlog
        rows[0]["backlog_checkpointed"] = checkpointed
    return rows


# -- backlog (pgqueue only) ---------------------------------------------------------------


def _settle(conn: psycopg.Connection[Any]) -> bool:
    """Settle a freshly loaded backlog as one that built up over time would be:
    vacuumed (hint bits, visibility map) and checkpointed, so the drain does not
    pay for the load's dirty pages and WAL (a 1M-row INSERT starts a checkpoint
    that would run during the drain). False when the role may not CHECKPOINT
    (the report says so)."""
    conn.execute("VACUUM ANALYZE pgqueue.jobs")
    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


async def _backlog(
    system: System, dsn: str, plan: Plan, progress: Progress
) -> tuple[dict[str, float], bool]:
    """Drain the first ``plan.backlog_drain`` jobs of backlogs of different sizes
    (1 worker process, the first configuration): does a deep table slow claims?
    Also returns whether every backlog was checkpointed before its drain."""
    results: dict[str, float] = {}
    checkpointed = True
    config = system.configs[0]
    for size in plan.backlogs:
        progress.step(f"pgqueue: drain {plan.backlog_drain:,} jobs of a {size:,}-job backlog")
        await asyncio.to_thread(system.reset, dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO pgqueue.jobs (task, queue) SELECT 'noop', 'bench'"
                " FROM generate_series(1, %s)",
                (size,),
            )
            checkpointed = _settle(conn) and checkpointed
        with tempfile.TemporaryDirectory(prefix="pgqueue-bench-") as out:
            worker = _spawn(system.worker_command(config, drain=False), dsn, out)
            try:
                deadline = time.monotonic() + 600
                while system.finished(dsn) < min(plan.backlog_drain, size):
                    if time.monotonic() > deadline or worker.poll() is not None:
                        raise RuntimeError("backlog drain did not finish")
                    await asyncio.sleep(0.1)
            finally:
                _stop(worker)
            _, rate = _rate(_probe_records(out))
        results[f"backlog_{size}"] = rate
    await asyncio.to_thread(system.reset, dsn)
    return results, checkpointed


# -- raw SQL ceilings -------------------------------------------------------------------


def _raw_drain(conn: psycopg.Connection[Any], n: int, batch: int = 100) -> float:
    """The ceiling for the drain's shape: claim a batch with SKIP LOCKED, mark
    it done, on one connection, on a bare table."""
    conn.execute(
        "CREATE TABLE bench_raw_jobs (id bigserial PRIMARY KEY, status text NOT NULL,"
        " created_at timestamptz DEFAULT now(), done_at timestamptz)"
    )
    conn.execute("CREATE INDEX ON bench_raw_jobs (id) WHERE status = 'pending'")
    conn.execute(
        "INSERT INTO bench_raw_jobs (status) SELECT 'pending' FROM generate_series(1, %s)", (n,)
    )
    conn.execute("ANALYZE bench_raw_jobs")
    started = time.perf_counter()
    while True:
        cur = conn.execute(
            "WITH c AS (SELECT id FROM bench_raw_jobs WHERE status = 'pending' ORDER BY id"
            " LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE bench_raw_jobs j SET status = 'running' FROM c WHERE j.id = c.id"
            " RETURNING j.id",
            (batch,),
        )
        ids = [r[0] for r in cur.fetchall()]
        if not ids:
            break
        conn.execute(
            "UPDATE bench_raw_jobs SET status = 'done', done_at = now() WHERE id = ANY(%s)", (ids,)
        )
    return n / (time.perf_counter() - started)


# -- report -----------------------------------------------------------------------------


def _machine(server: str) -> dict[str, Any]:
    with psycopg.connect(server, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = {}
        for name in SETTINGS:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            settings[name] = row[0] if row else None
    return {
        "postgresql": version[0] if version else None,
        "settings": settings,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _versions() -> dict[str, str]:
    names = ("pgqueue", "psycopg", "procrastinate", "pgqueuer", "asyncpg", "uvloop")
    return {name: _version(name) for name in names}


def _label(row: dict[str, Any]) -> str:
    return f"{row['system']} ({row['config']})"


ENQUEUE_KEYS = ("single_enqueue", "bulk_enqueue")


def _value(rows: list[dict[str, Any]], row: dict[str, Any], key: str) -> Any:
    """A row's figure; enqueue figures (and their rounds) are measured per
    system, not per configuration (they do not depend on the worker's
    settings), and stored on its first row."""
    value = row.get(key)
    if value is None and key.startswith(ENQUEUE_KEYS):
        first = next(r for r in rows if r["system"] == row["system"])
        value = first.get(key)
    return value


def _ratio(
    rows: list[dict[str, Any]], row: dict[str, Any], other: dict[str, Any], key: str
) -> float | None:
    """``row``'s figure over ``other``'s. Enqueue figures are compared round by
    round, each pair measured within the same round, and the median of those
    ratios taken: the machine's drift from round to round then largely
    cancels out, where a ratio of the two medians would carry it."""
    mine_rounds = _value(rows, row, f"{key}_rounds")
    theirs_rounds = _value(rows, other, f"{key}_rounds")
    if (
        mine_rounds
        and theirs_rounds
        and len(mine_rounds) == len(theirs_rounds)
        and all(theirs_rounds)
    ):
        return float(
            statistics.median(m / t for m, t in zip(mine_rounds, theirs_rounds, strict=True))
        )
    mine, theirs = _value(rows, row, key), _value(rows, other, key)
    return float(mine) / float(theirs) if mine and theirs else None


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pgqueue's main configuration divided by every other row, per metric
    (for latency a ratio below 1 means pgqueue is faster)."""
    ours = rows[0]
    ratios = []
    for other in rows[1:]:
        entry: dict[str, Any] = {"versus": _label(other)}
        if other["status"] != "ok":
            entry["status"] = other["status"]
        else:
            for key, _, _ in METRICS:
                if (value := _ratio(rows, ours, other, key)) is not None:
                    entry[key] = value
        ratios.append(entry)
    return ratios


BRIDGED, PLAIN = "procrastinate + bridge", "procrastinate"
BRIDGE_GOAL = 0.8


def _bridge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each procrastinate + bridge row divided by plain procrastinate's row of
    the same settings, per metric (the bridge's cost: below 1 = slower; for
    latency, above 1 = slower)."""
    plain = {r["config"]: r for r in _find(rows, PLAIN)}
    entries = []
    for row in _find(rows, BRIDGED):
        other = plain.get(row["config"])
        if other is None:
            continue
        entry: dict[str, Any] = {"config": row["config"]}
        for key, _, _ in METRICS:
            if (value := _ratio(rows, row, other, key)) is not None:
                entry[key] = value
        entries.append(entry)
    return entries


def _find(rows: list[dict[str, Any]], system: str, default: bool | None = None) -> list[Any]:
    return [
        r
        for r in rows
        if r["system"] == system
        and r["status"] == "ok"
        and (default is None or r["config"].startswith("defaults") == default)
    ]


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, each with the measured value and whether it is met."""
    ours = rows[0]
    raw = _find(rows, RAW)
    pq_best = _find(rows, "PgQueuer", default=False)
    pq_default = _find(rows, "PgQueuer", default=True)
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: float, at_most: bool = False) -> None:
        if value is None:
            targets.append({"target": name, "status": "peer not installed"})
            return
        met = value <= goal if at_most else value >= goal
        targets.append({"target": name, "value": value, "goal": goal, "met": met})

    def ratio(key: str, other: list[Any]) -> float | None:
        return _ratio(rows, ours, other[0], key) if other else None

    add("drain 1 process >= 2x PgQueuer at batch 100", ratio("drain_1", pq_best), 2.0)
    add("drain 1 process >= 5x PgQueuer at its defaults", ratio("drain_1", pq_default), 5.0)
    add("drain 1 process >= 0.5x raw SQL ceiling", ratio("drain_1", raw), 0.5)
    best_pq_p50 = min((r["latency_p50_ms"] for r in pq_best + pq_default), default=None)
    add(
        "start latency p50 <= 0.8x PgQueuer's (its better configuration)",
        ours["latency_p50_ms"] / best_pq_p50 if best_pq_p50 else None,
        0.8,
        at_most=True,
    )
    for row in _find(rows, "pgqueue"):
        p99 = row["latency_p99_ms"]
        add(f"start latency p99 <= 10 ms ({row['config']})", p99, 10.0, at_most=True)
    pq_any = pq_best or pq_default
    add("single enqueue >= 1.2x PgQueuer's", ratio("single_enqueue", pq_any), 1.2)
    add("single enqueue >= 0.6x raw single-row INSERT", ratio("single_enqueue", raw), 0.6)
    add("bulk enqueue >= 1.5x PgQueuer's bulk", ratio("bulk_enqueue", pq_any), 1.5)
    keyed = ours.get("constrained", {}).get("keyed")
    if keyed is not None:
        add(
            f"a key at limit {keyed['limit']} with a backlog keeps its slots busy"
            f" >= {_constrained.KEY_GOAL:.0%}",
            keyed["slots_busy"],
            _constrained.KEY_GOAL,
        )

    # The bridge's cost per job: procrastinate with it over procrastinate without
    # it, at the same settings (concurrency 100), both measured in this run.
    settings = Procrastinate.configs[0].label
    tuned = next((e for e in _bridge(rows) if e["config"] == settings), {})
    add(
        f"procrastinate bridge: bridged drain / plain drain, 1 process ({settings})"
        f" >= {BRIDGE_GOAL:g}x",
        tuned.get("drain_1"),
        BRIDGE_GOAL,
    )
    add(
        f"procrastinate bridge: bridged single enqueue / plain >= {BRIDGE_GOAL:g}x",
        tuned.get("single_enqueue"),
        BRIDGE_GOAL,
    )
    return targets


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in LOWER_IS_BETTER:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _print_report(report: dict[str, Any]) -> None:
    machine = report["machine"]
    settings = ", ".join(f"{k}={v}" for k, v in machine["settings"].items())
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    plan = report["parameters"]
    print(f"pgqueue bench, {report['date']}")
    print(f"  PostgreSQL {machine['postgresql']}: {settings}")
    print(f"  {machine['cpus']} CPUs, Python {machine['python']}; {versions}")
    print(
        f"  drains of {plan['jobs']:,} no-op jobs; enqueues in {plan['enqueue_rounds']} rounds,"
        f" each system in turn ({plan['single_enqueue_calls_per_round']:,} single calls and "
        f"{plan['jobs']:,} jobs in bulk per round; medians); "
        f"{plan['latency_samples']} latency samples"
    )
    print()
    width = max(len(_label(r)) for r in report["results"]) + 2
    header = "".join(f"{title:>{COLUMN}}" for _, title, _ in METRICS)
    units = "".join(f"{unit:>{COLUMN}}" for _, _, unit in METRICS)
    print(f"{'':<{width}}{header}")
    print(f"{'':<{width}}{units}")
    for row in report["results"]:
        if row["status"] != "ok":
            print(f"{_label(row):<{width}}{row['status']:>{COLUMN}}")
            continue
        cells = "".join(f"{_fmt(key, row.get(key)):>{COLUMN}}" for key, _, _ in METRICS)
        print(f"{_label(row):<{width}}{cells}")
    print()
    ours = _label(report["results"][0])
    print(f"{ours} / each (latency: below 1 = pgqueue faster)")
    for entry in report["ratios"]:
        if "status" in entry:
            print(f"{entry['versus']:<{width}}{entry['status']:>{COLUMN}}")
            continue
        cells = "".join(
            f"{(format(entry[key], '.2f') + 'x') if key in entry else '-':>{COLUMN}}"
            for key, _, _ in METRICS
        )
        print(f"{entry['versus']:<{width}}{cells}")
    backlog = report["results"][0].get("backlog")
    if backlog:
        print()
        print("pgqueue, 1 worker process, draining the first jobs of a deep backlog (jobs/s):")
        for key, value in backlog.items():
            print(f"  backlog of {int(key.split('_')[1]):>9,} jobs: {value:>10,.0f}")
        if not report["results"][0].get("backlog_checkpointed", True):
            print("  (not checkpointed before the drains: the role may not run CHECKPOINT)")
    if report.get("bridge"):
        print()
        print(f"{BRIDGED} / {PLAIN}, same settings (the bridge's cost; latency: above 1 = slower)")
        for entry in report["bridge"]:
            cells = "".join(
                f"{(format(entry[key], '.2f') + 'x') if key in entry else '-':>{COLUMN}}"
                for key, _, _ in METRICS
            )
            print(f"{entry['config']:<{width}}{cells}")
    constrained = report["results"][0].get("constrained")
    if constrained:
        keyed, rated = constrained["keyed"], constrained["rate_limited"]
        print()
        print("pgqueue, 1 worker process, drains under a limit:")
        print(
            f"  keyed: {keyed['jobs']} jobs of {keyed['hold_ms']} ms on one key at limit "
            f"{keyed['limit']} (worker concurrency {keyed['worker_concurrency']}): "
            f"the key's slots busy {keyed['slots_busy']:.0%} of the time"
        )
        print(
            f"  rate-limited: {rated['jobs']} no-op jobs at {rated['limit_per_s']}/s: "
            f"{rated['jobs_per_s']:.1f} jobs/s after the first window "
            f"({rated['of_limit']:.0%} of the limit)"
        )
    print()
    print("targets:")
    for target in report["targets"]:
        if "met" not in target:
            print(f"  [ ? ] {target['target']}: {target['status']}")
            continue
        mark = "met " if target["met"] else "MISS"
        print(f"  [{mark}] {target['target']}: {target['value']:.2f} (goal {target['goal']:g})")


# -- entry point ------------------------------------------------------------------------


def _steps(plan: Plan, systems: list[System]) -> int:
    steps = plan.rounds + 1  # the enqueue rounds; the raw SQL drain
    for system in systems:
        steps += 1 + len(system.configs) * 3
        steps += system.name == "pgqueue"  # the keyed and rate-limited drains
    if plan.backlog:
        steps += len(plan.backlogs)
    return steps


async def run_bench(
    *, dsn: str | None, jobs: int | None, as_json: bool, quick: bool = False, backlog: bool = False
) -> int:
    plan = Plan(
        jobs=jobs or (200 if quick else 20_000),
        single=50 if quick else 400,
        rounds=2 if quick else 5,
        samples=10 if quick else 200,
        backlog=backlog,
        settle=0.1 if quick else 0.5,
        constrained=_constrained.QUICK if quick else _constrained.FULL,
    )
    for peer_logger in ("procrastinate", "pgqueuer"):  # their INFO lines would bury the table
        logging.getLogger(peer_logger).setLevel(logging.WARNING)
    server = resolve_dsn(dsn)
    installed = [s for s in SYSTEMS if s.installed()]
    progress = Progress(total=_steps(plan, installed), enabled=True)
    measured: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as scratch:
        databases: list[tuple[System, str]] = []
        for system in installed:
            db = scratch.enter_context(
                _scratch(server, re.sub(r"[^a-z0-9]+", "_", system.name.lower()))
            )
            progress.step(f"{system.name}: schema in a fresh database")
            await system.setup(db)
            databases.append((system, db))
        raw_db = scratch.enter_context(_scratch(server, "raw"))
        raw = _RawClient(scratch.enter_context(psycopg.connect(raw_db, autocommit=True)))
        async with contextlib.AsyncExitStack() as clients:
            entrants = []
            for system, db in databases:
                client = await system.client(db)
                clients.push_async_callback(client.close)
                entrants.append(_Entrant(system.name, client, functools.partial(system.reset, db)))
            entrants.append(_Entrant(RAW, raw, raw.reset))
            enqueued = await _enqueue_rounds(entrants, plan, progress)
        for system, db in databases:
            measured[system.name] = await _measure_system(system, db, plan, progress)
            measured[system.name][0].update(enqueued[system.name])
        progress.step(f"raw SQL: claim 100 + mark done, {plan.jobs:,} rows, 1 connection")
        raw_drain = await asyncio.to_thread(_raw_drain, raw.conn, plan.jobs)
    results: list[dict[str, Any]] = []
    for system in SYSTEMS:
        results += measured.get(system.name) or [
            {"system": system.name, "config": c.label, "status": NOT_INSTALLED}
            for c in system.configs
        ]
    results.append(
        {"system": RAW, "config": "ceiling", "status": "ok", **enqueued[RAW], "drain_1": raw_drain}
    )
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": await asyncio.to_thread(_machine, server),
        "versions": _versions(),
        "parameters": {
            "jobs": plan.jobs,
            "enqueue_rounds": plan.rounds,
            "single_enqueue_calls_per_round": plan.single,
            "latency_samples": plan.samples,
            "latency_spacing_ms": plan.spacing * 1000,
            "enqueue_chunk": ENQUEUE_CHUNK,
        },
        "results": results,
        "ratios": _ratios(results),
        "bridge": _bridge(results),
        "targets": _targets(results),
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0
