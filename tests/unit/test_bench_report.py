"""The bench's ratios and targets when peers are missing (no database needed)."""

from __future__ import annotations

from typing import Any

import pytest

from pgqueue.bench._constrained import keyed_busy, most_at_once, rate_after_first_window
from pgqueue.bench._run import _print_report, _ratios, _targets


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
            "single_enqueue_calls": 2_000,
            "enqueue_rounds": 5,
            "latency_samples": 200,
        },
        "results": rows,
        "ratios": _ratios(rows),
        "targets": _targets(rows),
    }
