"""``pgqueue bench --quick --json`` end to end on the test server: every row of
the table is there, with positive figures, or says its peer is not installed;
with procrastinate installed, also procrastinate + bridge, read against plain
procrastinate of the same run (no timing is asserted: a quick run's figures
mean nothing)."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from pgqueue.bench._systems import SYSTEMS, Procrastinate, ProcrastinateBridge

from ..db._helpers import Conn
from .helpers import run_cli

PER_SYSTEM = ("single_enqueue", "bulk_enqueue")  # per system, on its first row
PER_CONFIG = ("drain_1", "drain_2", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms")


def _positive(row: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = row.get(key)
        assert isinstance(value, float) and value > 0, (row["system"], row["config"], key, value)


def test_quick_bench_reports_every_row(pg_server: str) -> None:
    result = run_cli("bench", "--quick", "--json", dsn=pg_server, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json()

    machine = report["machine"]
    assert machine["postgresql"] and machine["cpus"] >= 1
    assert {"synchronous_commit", "shared_buffers"} <= machine["settings"].keys()
    assert report["versions"]["pgqueue"] != "not installed"

    rows = {(r["system"], r["config"]): r for r in report["results"]}
    for system in SYSTEMS:
        for index, config in enumerate(system.configs):
            row = rows.pop((system.name, config.label))
            if not system.installed():
                assert system.name != "pgqueue"
                assert row["status"] == "not installed"
                continue
            assert row["status"] == "ok"
            _positive(row, PER_CONFIG + (PER_SYSTEM if index == 0 else ()))
    raw = rows.pop(("raw SQL", "ceiling"))
    _positive(raw, ("single_enqueue", "bulk_enqueue", "drain_1"))
    _check_rounds(report)
    assert not rows, f"unexpected rows: {list(rows)}"

    assert len(report["ratios"]) == len(report["results"]) - 1
    assert len(report["targets"]) == 12
    for target in report["targets"]:
        assert "met" in target or target["status"] == "peer not installed"
    _check_constrained(rows_by_label(report)["pgqueue", "concurrency 100"], report)
    _check_bridge(report)


def _check_rounds(report: dict[str, Any]) -> None:
    """Every system's enqueue figures (and the raw ceilings) are the medians of
    the same number of rounds."""
    rounds = report["parameters"]["enqueue_rounds"]
    assert rounds == 2  # --quick
    firsts = [r for r in report["results"] if r["status"] == "ok" and "single_enqueue" in r]
    assert {r["system"] for r in firsts} >= {"pgqueue", "raw SQL"}
    for row in firsts:
        for key in ("single_enqueue", "bulk_enqueue"):
            measured = row[f"{key}_rounds"]
            assert len(measured) == rounds and all(v > 0 for v in measured), (row["system"], key)
            assert row[key] == statistics.median(measured), (row["system"], key)


def rows_by_label(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["system"], r["config"]): r for r in report["results"]}


def _check_constrained(row: dict[str, Any], report: dict[str, Any]) -> None:
    """The keyed and rate-limited drains ran every job, and their figures
    show the limits held: a key never had more jobs running than its limit,
    and no window started more than the rate limit."""
    keyed, rated = row["constrained"]["keyed"], row["constrained"]["rate_limited"]
    assert (keyed["jobs"], keyed["limit"]) == (8, 2)
    assert keyed["most_at_once"] == 2  # the limit, used and never passed
    assert 0 < keyed["slots_busy"] <= 1.0
    assert rated["limit_per_s"] == 50 and rated["jobs"] == 100
    assert 0 < rated["of_limit"] <= 1.1
    target = next(t for t in report["targets"] if t["target"].startswith("a key at limit 2"))
    assert target["value"] == keyed["slots_busy"] and target["goal"] == 0.9


def _check_bridge(report: dict[str, Any]) -> None:
    """The bridge's rows, its ratios to plain procrastinate per configuration,
    and its two targets: measured when procrastinate is installed (a bridged
    drain also checks that every mirror completed), else reported as such."""
    bridge = ProcrastinateBridge()
    assert bridge.name == "procrastinate + bridge"
    assert bridge.configs == Procrastinate.configs  # the same settings as plain procrastinate
    targets = {
        t["target"]: t for t in report["targets"] if t["target"].startswith("procrastinate bridge")
    }
    assert sorted(targets) == [
        "procrastinate bridge: bridged drain / plain drain, 1 process (concurrency 100) >= 0.8x",
        "procrastinate bridge: bridged single enqueue / plain >= 0.8x",
    ]
    if not bridge.installed():
        assert all(t["status"] == "peer not installed" for t in targets.values())
        assert report["bridge"] == []
        return
    for target in targets.values():
        assert target["goal"] == 0.8
        assert isinstance(target["value"], float) and target["value"] > 0
        assert isinstance(target["met"], bool)
    entries = {e["config"]: e for e in report["bridge"]}
    assert sorted(entries) == sorted(c.label for c in bridge.configs)
    for entry in entries.values():
        for key in PER_SYSTEM + PER_CONFIG:
            assert isinstance(entry[key], float) and entry[key] > 0, (entry["config"], key)
    tuned = entries["concurrency 100"]
    drain, enqueue = (targets[name]["value"] for name in sorted(targets))
    assert drain == tuned["drain_1"] and enqueue == tuned["single_enqueue"]


def test_sustained_bench_reports_tenths_and_sizes(pg_server: str) -> None:
    """The sustained mode end to end with a small N: every job runs once (the
    probe's count is checked against N inside the bench), throughput comes per
    tenth, and the sizes are sampled (the first sample is of the empty table;
    a run this short ends before anything is old enough to prune)."""
    result = run_cli("bench", "--sustained", "20000", "--json", dsn=pg_server, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json()
    assert report["jobs"] == 20_000
    tenths = report["jobs_per_s_by_tenth"]
    assert len(tenths) == 10 and all(rate > 0 for rate in tenths)
    # the tenths are rounded to whole jobs/s in the report
    assert report["last_over_first"] == pytest.approx(tenths[-1] / tenths[0], rel=0.05)
    assert isinstance(report["met"], bool)
    sizes = report["sizes"]
    assert len(sizes) >= 2 and sizes[0]["at_s"] < sizes[-1]["at_s"]
    assert max(s["jobs_heap_mib"] for s in sizes) > 0
    assert all(0 <= s["jobs_rows"] <= 20_000 for s in sizes)
    assert sizes[-1]["jobs_rows"] > 0  # finished jobs are kept for 10 s


def test_sustained_bench_refuses_a_tiny_run(pg_server: str) -> None:
    result = run_cli("bench", "--sustained", "500", dsn=pg_server, timeout=60)
    assert result.returncode != 0
    assert "--sustained needs at least 10,000 jobs" in result.stderr


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--quick"], "--quick"),
        (["--jobs", "100"], "--jobs"),
        (["--backlog", "--quick"], "--quick"),
    ],
)
def test_sustained_bench_refuses_options_it_would_ignore(
    pg_server: str, extra: list[str], named: str
) -> None:
    result = run_cli("bench", "--sustained", "20000", *extra, dsn=pg_server, timeout=60)
    assert result.returncode != 0
    assert "bench --sustained takes no" in result.stderr and named in result.stderr


def test_a_backlog_is_settled_and_a_missing_checkpoint_privilege_is_reported(
    db_dsn: str,
) -> None:
    """The backlog step vacuums and checkpoints each backlog; a role that may
    not CHECKPOINT still gets its vacuum, and the report says the checkpoint
    was skipped instead of pretending it ran."""
    import secrets
    import uuid

    import psycopg

    from pgqueue.bench._run import _settle

    role = f"pgqueue_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO pgqueue.jobs (task, queue) SELECT 'noop', 'bench'"
            " FROM generate_series(1, 100)"
        )
        assert _settle(admin) is True
        analyzed = admin.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables"
            " WHERE relid = 'pgqueue.jobs'::regclass"
        ).fetchone()
        assert analyzed == (True,)
        password = secrets.token_hex(8)
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT USAGE ON SCHEMA pgqueue TO {role}")
        try:
            with psycopg.connect(db_dsn, user=role, password=password, autocommit=True) as plain:
                assert _settle(plain) is False
        finally:
            admin.execute(f"REVOKE USAGE ON SCHEMA pgqueue FROM {role}")
            admin.execute(f"DROP ROLE {role}")


def test_the_bridge_is_read_against_plain_procrastinate_of_the_same_run() -> None:
    """The bridge's ratios and targets divide its rows by plain procrastinate's
    rows of the same settings, from the rows given; without them (procrastinate
    not installed) the targets say so instead of failing."""
    from pgqueue.bench._run import _bridge, _targets

    def row(system: str, config: str, **figures: float) -> dict[str, Any]:
        return {"system": system, "config": config, "status": "ok", **figures}

    pgqueue_row = row("pgqueue", "concurrency 100", drain_1=1000.0, latency_p99_ms=5.0)
    rows = [
        pgqueue_row,
        row("procrastinate", "concurrency 100", single_enqueue=500.0, drain_1=400.0),
        row("procrastinate", "defaults: concurrency 1", drain_1=200.0),
        row("procrastinate + bridge", "concurrency 100", single_enqueue=450.0, drain_1=100.0),
        row("procrastinate + bridge", "defaults: concurrency 1", drain_1=180.0),
    ]
    entries = {e["config"]: e for e in _bridge(rows)}
    assert entries["concurrency 100"]["drain_1"] == pytest.approx(0.25)
    assert entries["concurrency 100"]["single_enqueue"] == pytest.approx(0.9)
    # enqueue figures are per system (first row), so the defaults row shares them
    assert entries["defaults: concurrency 1"]["single_enqueue"] == pytest.approx(0.9)
    assert entries["defaults: concurrency 1"]["drain_1"] == pytest.approx(0.9)

    targets = {t["target"]: t for t in _targets(rows)}
    drain = targets[
        "procrastinate bridge: bridged drain / plain drain, 1 process (concurrency 100) >= 0.8x"
    ]
    assert (drain["value"], drain["goal"], drain["met"]) == (pytest.approx(0.25), 0.8, False)
    enqueue = targets["procrastinate bridge: bridged single enqueue / plain >= 0.8x"]
    assert (enqueue["value"], enqueue["met"]) == (pytest.approx(0.9), True)

    missing = [pgqueue_row] + [
        {"system": s, "config": c.label, "status": "not installed"}
        for s in ("procrastinate", "procrastinate + bridge")
        for c in Procrastinate.configs
    ]
    assert _bridge(missing) == []
    bridge_targets = [t for t in _targets(missing) if t["target"].startswith("procrastinate")]
    assert [t["status"] for t in bridge_targets] == ["peer not installed"] * 2


def test_scale_bench_drains_with_each_process_count(pg_server: str) -> None:
    """``bench --scale``: one drain per process count, each with where the
    server's time went (no timing asserted)."""
    result = run_cli("bench", "--scale", "1,2", "--jobs", "200", "--json", dsn=pg_server)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json()
    assert report["jobs"] == 200
    assert [p["processes"] for p in report["points"]] == [1, 2]
    for point in report["points"]:
        assert point["drain"] > 0
        # shares of the samples, the five largest (a drain of 200 jobs may
        # end between two samples, every 50 ms: then there are none)
        assert len(point["waits"]) <= 5
        assert all(0 < share <= 1 for share in point["waits"].values())
        assert sum(point["waits"].values()) <= 1.005
    assert report["points"][0]["per_process_vs_first"] == 1.0


@pytest.mark.parametrize("scale", ["0", "1,x", "", "65"])
def test_scale_bench_refuses_bad_process_counts(pg_server: str, scale: str) -> None:
    result = run_cli("bench", "--scale", scale, dsn=pg_server)
    assert result.returncode == 2
    assert "--scale" in result.stderr


def test_profile_bench_reports_every_part_of_an_enqueue_and_an_idle_claim(
    pg_server: str, conn: Conn
) -> None:
    """``bench --profile``: the client's, the server's and the commit's parts
    of one enqueue, every CHECK constraint of pgqueue.jobs on its own, and an
    idle claim's parts (figures are positive; none is compared to a time)."""
    result = run_cli("bench", "--profile", "--quick", "--json", dsn=pg_server)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json()
    assert report["calls"] == 200
    client = report["enqueue_client"]
    for part in ("whole", "python", "checkout", "round_trip", "statement"):
        assert client[part] > 0, part
    server = report["enqueue_server"]
    for part in ("bare", "checks", "indexes", "jobs_untriggered", "jobs", "function"):
        assert server[part] > 0, part
    checks = {name.removeprefix("check:") for name in server if name.startswith("check:")}
    expected = {
        row[0]
        for row in conn.execute(
            "SELECT conname FROM pg_constraint"
            " WHERE conrelid = 'pgqueue.jobs'::regclass AND contype = 'c'"
        )
    }
    assert checks == expected
    assert set(report["commit"]) == {"insert", "insert_notify", "insert_unsynced"}
    assert all(value > 0 for value in report["commit"].values())
    assert set(report["idle_claim"]) == {"claim", "complete", "statement", "server"}
    assert all(value > 0 for value in report["idle_claim"].values())


@pytest.mark.parametrize("stray", [["--jobs", "10"], ["--backlog"], ["--sustained", "10"]])
def test_profile_bench_refuses_options_it_would_ignore(pg_server: str, stray: list[str]) -> None:
    result = run_cli("bench", "--profile", *stray, dsn=pg_server)
    assert result.returncode != 0
    assert f"bench --profile takes no {stray[0]}" in result.stderr
