"""The bench's ratios and targets when peers are missing (no database needed)."""

from __future__ import annotations

from typing import Any

import pytest

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
    assert targets["start latency p99 <= 10 ms"]["met"] is True
    assert targets["single enqueue >= 0.9x raw single-row INSERT"]["met"] is True


def test_ratios_against_an_installed_peer() -> None:
    rows = _rows(peers_installed=True)
    ratios = _ratios(rows)
    assert ratios[0]["drain_1"] == 2.0
    assert ratios[0]["latency_p50_ms"] == 0.5
    targets = {t["target"]: t for t in _targets(rows)}
    assert targets["drain 1 process >= 2x PgQueuer at batch 100"]["met"] is True
    assert targets["bulk enqueue >= 1.5x PgQueuer's bulk"]["value"] == 3.0
    assert targets["start latency p50 <= 0.7x PgQueuer's (its better configuration)"]["met"]


@pytest.mark.parametrize("checkpointed", [True, False])
def test_the_report_says_when_the_backlogs_were_not_checkpointed(
    capsys: pytest.CaptureFixture[str], checkpointed: bool
) -> None:
    rows = _rows(peers_installed=True)
    rows[0]["backlog"] = {"backlog_10000": 9_000.0, "backlog_1000000": 8_500.0}
    rows[0]["backlog_checkpointed"] = checkpointed
    _print_report(
        {
            "date": "2026-11-23",
            "machine": {"postgresql": "15", "settings": {}, "cpus": 2, "python": "3.11"},
            "versions": {},
            "parameters": {"jobs": 20_000, "single_enqueue_calls": 2_000, "latency_samples": 200},
            "results": rows,
            "ratios": _ratios(rows),
            "targets": _targets(rows),
        }
    )
    out = capsys.readouterr().out
    assert "backlog of 1,000,000 jobs:      8,500" in out
    assert ("not checkpointed" in out) is not checkpointed
