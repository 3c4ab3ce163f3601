"""The bench's ratios and targets when peers are missing (no database needed)."""

from __future__ import annotations

from typing import Any

from pgqueue._bench import _ratios, _targets


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
