"""The bench's ratios and targets when peers are missing, and the order of its
enqueue rounds (no database needed)."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest

from pgqueue.bench._constrained import keyed_busy, most_at_once, rate_after_first_window
from pgqueue.bench._run import (
    Plan,
    Progress,
    _enqueue_rounds,
    _Entrant,
    _print_report,
    _ratios,
    _targets,
)
from pgqueue.bench._systems import Client


def _rows(peers_installed: bool) -> list[dict[str, Any]]:
    ours = {"system": "pgqueue", "config": "concurrency 100", "status": "ok",
            "single_enqueue": 900.0, "bulk_enqueue": 30_000.0, "drain_1": 12_000.0,
            "drain_2": 20_000.0, "latency_p50_ms": 2.0, "latency_p95_ms": 3.0,
            "latency_p99_ms": 4.0}  # fmt: skip
    peer: dict[str, Any] = {"system": "PgQueuer", "config": "batch 100"}
    if peers_installed:
        peer |= {"status": "ok", "single_enqueue": 1000.0, "bulk_enqueue": 10_000.0,
                 "drain_1": 6_000.0, "drain_2": 8_000.0, "latency_p50_ms": 4.0,
                 "latency_p95_ms": 5.0, "latency_p99_ms": 6.0}  # fmt: skip
    else:
        peer["status"] = "not installed"
    raw = {"system": "raw SQL", "config": "ceiling", "status": "ok",
           "single_enqueue": 1000.0, "bulk_enqueue": 60_000.0, "drain_1": 20_000.0}  # fmt: skip
    return [ours, peer, raw]


def test_missing_peer_is_reported_not_an_error() -> None:
    rows = _rows(peers_installed=False)
    ratios = _ratios(rows)
    assert ratios[0] == {"versus": "PgQueuer (batch 100)", "status": "not installed"}
    assert ratios[1]["drain_1"] == 0.6
    targets = {t["target"]: t for t in _targets(rows)}
    assert targets["drain 1 process >= 2x PgQueuer at batch 100"]["status"] == "peer not installed"
    assert targets["start latency p99 <= 10 ms (concurrency 100)"]["met"] is True
    assert targets["single enqueue >= 0.6x raw single-row INSERT"]["met"] is True
    assert targets["single enqueue >= 1.2x PgQueuer's"]["status"] == "peer not installed"


def test_ratios_against_an_installed_peer() -> None:
    rows = _rows(peers_installed=True)
    ratios = _ratios(rows)
    assert ratios[0]["drain_1"] == 2.0
    assert ratios[0]["latency_p50_ms"] == 0.5
    targets = {t["target"]: t for t in _targets(rows)}
    assert targets["drain 1 process >= 2x PgQueuer at batch 100"]["met"] is True
    assert targets["bulk enqueue >= 1.5x PgQueuer's bulk"]["value"] == 3.0
    assert targets["start latency p50 <= 0.8x PgQueuer's (its better configuration)"]["met"]
    assert targets["single enqueue >= 1.2x PgQueuer's"]["value"] == 0.9
    assert targets["single enqueue >= 1.2x PgQueuer's"]["met"] is False


def test_the_keyed_target_reads_the_keyed_drain(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(peers_installed=True)
    rows[0]["constrained"] = {
        "keyed": {"jobs": 40, "hold_ms": 50, "limit": 2, "worker_concurrency": 8,
                  "slots_busy": 0.87},
        "rate_limited": {"jobs": 200, "limit_per_s": 50, "jobs_per_s": 49.5, "of_limit": 0.99},
    }  # fmt: skip
    targets = {t["target"]: t for t in _targets(rows)}
    keyed = targets["a key at limit 2 with a backlog keeps its slots busy >= 90%"]
    assert (keyed["value"], keyed["met"]) == (0.87, False)
    _print_report(_report(rows))
    out = capsys.readouterr().out
    assert "the key's slots busy 87% of the time" in out
    assert "49.5 jobs/s after the first window (99% of the limit)" in out
    assert "[MISS] a key at limit 2" in out


def test_busy_share_and_rate_after_the_first_window() -> None:
    # two slots, each busy 1 s of the 1 s span: fully used; one idle half: 75 %
    assert keyed_busy([(0.0, 1.0), (0.0, 1.0)], limit=2) == 1.0
    assert keyed_busy([(0.0, 1.0), (0.0, 0.5)], limit=2) == 0.75
    # 50 starts at 0 s and 50 at 1 s: 50 starts in the second after the first window
    assert rate_after_first_window([0.0] * 50 + [1.0] * 50, limit=50) == 50.0
    # one span ending as the next starts does not overlap it
    assert most_at_once([(0.0, 1.0), (1.0, 2.0), (0.5, 1.5)]) == 2
    assert most_at_once([(0.0, 1.0), (0.1, 0.9), (0.2, 0.8)]) == 3


@pytest.mark.parametrize("checkpointed", [True, False])
def test_the_report_says_when_the_backlogs_were_not_checkpointed(
    capsys: pytest.CaptureFixture[str], checkpointed: bool
) -> None:
    rows = _rows(peers_installed=True)
    rows[0]["backlog"] = {"backlog_10000": 9_000.0, "backlog_1000000": 8_500.0}
    rows[0]["backlog_checkpointed"] = checkpointed
    _print_report(_report(rows))
    out = capsys.readouterr().out
    assert "backlog of 1,000,000 jobs:      8,500" in out
    assert ("not checkpointed" in out) is not checkpointed


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "date": "2026-11-23",
        "machine": {"postgresql": "15", "settings": {}, "cpus": 2, "python": "3.11"},
        "versions": {},
        "parameters": {
            "jobs": 20_000,
            "enqueue_rounds": 5,
            "single_enqueue_calls_per_round": 400,
            "latency_samples": 200,
        },
        "results": rows,
        "ratios": _ratios(rows),
        "targets": _targets(rows),
    }


class _Recording(Client):
    """A client that only records what it was asked to do, in order."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name, self.log = name, log

    async def enqueue_one(self, sample: int | None = None) -> None:
        self.log.append((self.name, "one"))

    async def enqueue_many(self, n: int) -> None:
        self.log.append((self.name, f"many {n}"))

    async def close(self) -> None:
        pass


def test_enqueue_rounds_give_every_system_each_turn_and_report_medians() -> None:
    log: list[tuple[str, str]] = []
    names = ("pgqueue", "PgQueuer", "procrastinate", "raw SQL")
    entrants = [
        _Entrant(n, _Recording(n, log), lambda n=n: log.append((n, "reset"))) for n in names
    ]
    plan = Plan(jobs=7, single=3, samples=1, backlog=False, rounds=5)
    figures = asyncio.run(_enqueue_rounds(entrants, plan, Progress(total=5, enabled=False)))

    # Each turn: 3 untimed and 3 timed single calls, a reset, the bulk call, a reset.
    turn = ["one"] * 6 + ["reset", "many 7", "reset"]
    turns = [log[i : i + len(turn)] for i in range(0, len(log), len(turn))]
    assert len(turns) == plan.rounds * len(names)
    for steps in turns:
        assert [step for _, step in steps] == turn
        assert len({name for name, _ in steps}) == 1
    order = [steps[0][0] for steps in turns]
    rounds = [order[i : i + len(names)] for i in range(0, len(order), len(names))]
    assert all(sorted(r) == sorted(names) for r in rounds)
    # no system always goes first, nor always right after the same one
    assert len({r[0] for r in rounds}) > 1
    for name in names:
        before = {r[r.index(name) - 1] for r in rounds if r.index(name) > 0}
        assert len(before) > 1, (name, rounds)

    for name in names:
        row = figures[name]
        for key in ("single_enqueue", "bulk_enqueue"):
            measured = row[f"{key}_rounds"]
            assert len(measured) == plan.rounds and all(v > 0 for v in measured)
            assert row[key] == statistics.median(measured)


def test_enqueue_ratios_are_taken_round_by_round() -> None:
    """The machine slowed down at different rounds for each system: each
    round's ratio is 0.5 (single) and 2.0 (bulk), while the ratios of the
    two medians are 0.25 and 4.0."""
    rows = _rows(peers_installed=True)
    ours, peer = rows[0], rows[1]
    ours["single_enqueue_rounds"] = [1000.0, 1000.0, 500.0, 500.0, 500.0]
    peer["single_enqueue_rounds"] = [2000.0, 2000.0, 2000.0, 1000.0, 1000.0]
    ours["bulk_enqueue_rounds"] = [80_000.0, 80_000.0, 80_000.0, 40_000.0, 40_000.0]
    peer["bulk_enqueue_rounds"] = [40_000.0, 40_000.0, 20_000.0, 20_000.0, 20_000.0]
    for row in (ours, peer):
        for key in ("single_enqueue", "bulk_enqueue"):
            row[key] = statistics.median(row[f"{key}_rounds"])
    assert ours["single_enqueue"] / peer["single_enqueue"] == 0.25
    assert ours["bulk_enqueue"] / peer["bulk_enqueue"] == 4.0
    targets = {t["target"]: t for t in _targets(rows)}
    assert targets["single enqueue >= 1.2x PgQueuer's"]["value"] == 0.5
    assert targets["bulk enqueue >= 1.5x PgQueuer's bulk"]["value"] == 2.0
    versus_peer = _ratios(rows)[0]
    assert (versus_peer["single_enqueue"], versus_peer["bulk_enqueue"]) == (0.5, 2.0)
    # without rounds (the raw row here), the figures themselves are divided
    assert _ratios(rows)[1]["single_enqueue"] == 500.0 / 1000.0
