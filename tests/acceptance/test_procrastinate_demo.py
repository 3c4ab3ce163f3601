"""``pgqueue demo --procrastinate --once`` end to end: procrastinate's schema
and the bridge installed by the demo, the example app's jobs run by a real
``procrastinate worker`` process, and their mirrors in pgqueue's tables.

The DSN reaches the demo by ``--dsn`` only (no PGQUEUE_DSN in its
environment), so the worker it starts must have been given it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from typing import Any

import pytest

from .helpers import ROOT, Processes, rows, scalar

pytest.importorskip("procrastinate")

TASKS = ("render_report", "upload", "import_feed", "resize_image")


def _worker_pid(output: str) -> int | None:
    found = re.search(r"^  worker: .*\(pid (\d+)\)$", output, re.MULTILINE)
    return int(found.group(1)) if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _mirrors(dsn: str) -> list[dict[str, Any]]:
    names = ("id", "external_id", "task", "owner", "status", "attempts", "batch_id", "result")
    found = rows(
        dsn,
        "SELECT j.id, j.external_id, j.task, j.owner, j.status::text, j.attempts, j.batch_id,"
        " j.result FROM pgqueue.jobs j WHERE j.executor = 'procrastinate' AND j.task = ANY(%s)"
        " ORDER BY j.id",
        [list(TASKS)],
    )
    return [dict(zip(names, row, strict=True)) for row in found]


def test_procrastinate_demo_once_runs_the_example_app_through_procrastinates_worker(
    db_dsn: str, procs: Processes
) -> None:
    demo = procs.start(
        "--dsn", db_dsn, "demo", "--procrastinate", "--once", "--port", "0", dsn=None
    )
    try:
        try:
            code = demo.wait(timeout=100)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not finish within 100 s:\n{demo.log()}")
        output = demo.stdout_path.read_text()
        worker = _worker_pid(output)
    finally:
        # the worker runs in a session of its own: the teardown's killpg misses it
        left = _worker_pid(demo.stdout_path.read_text())
        if left is not None and _alive(left):
            with contextlib.suppress(ProcessLookupError):
                os.kill(left, signal.SIGKILL)
    assert code == 0, demo.log()

    # what it printed: the dashboard with the admin's token, an owner's, the
    # jobs' lines, and the worker stopped cleanly
    assert re.search(r"^  dashboard: http://127\.0\.0\.1:\d+/#token=\S+$", output, re.MULTILINE)
    assert re.search(r"^  token for 'alice':\s+\S+$", output, re.MULTILINE)
    assert "procrastinate: schema applied" in output
    assert "bridge:    installed" in output
    assert "all 12 procrastinate jobs finished" in output
    assert re.search(r"\bimport_feed\s+dead_letter#2 ", output)
    assert re.search(r"\bupload\s+retrying ", output)
    assert "procrastinate worker stopped by SIGTERM (exit status 0)" in output
    assert worker is not None and not _alive(worker)

    # the mirrors, as procrastinate's worker left them
    mirrors = _mirrors(db_dsn)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for m in mirrors:
        by_task.setdefault(m["task"], []).append(m)
    assert sorted((t, len(ms)) for t, ms in by_task.items()) == [
        ("import_feed", 1),
        ("render_report", 1),
        ("resize_image", 9),
        ("upload", 1),
    ]
    summary = {
        t: (m["owner"], m["status"], m["attempts"]) for t, ms in by_task.items() for m in ms[:1]
    }
    assert summary == {
        "render_report": ("bob", "completed", 1),
        "upload": ("bob", "completed", 2),
        "import_feed": ("bob", "dead_letter", 2),
        "resize_image": ("alice", "completed", 1),
    }
    images = by_task["resize_image"]
    assert {(m["owner"], m["status"], m["attempts"]) for m in images} == {("alice", "completed", 1)}
    assert sorted(m["result"]["image_id"] for m in images) == list(range(1, 10))
    assert by_task["upload"][0]["result"] == "s3://demo-bucket/report-2024-05.pdf"
    assert by_task["render_report"][0]["result"]["pages"] == 8

    # procrastinate's own rows agree
    statuses = dict(
        rows(
            db_dsn,
            "SELECT id, status::text FROM procrastinate_jobs WHERE id = ANY(%s)",
            [[m["external_id"] for m in mirrors]],
        )
    )
    assert [statuses[m["external_id"]] for m in mirrors] == [
        "failed" if m["task"] == "import_feed" else "succeeded" for m in mirrors
    ]

    # each attempt in pgqueue's history: the retried ones' errors first
    history = {
        m["task"]: [
            outcome
            for (outcome,) in rows(
                db_dsn,
                "SELECT outcome FROM pgqueue.attempts WHERE job_id = %s ORDER BY attempt",
                [m["id"]],
            )
        ]
        for m in mirrors
        if m["task"] in ("upload", "import_feed")
    }
    assert history == {"upload": ["error", "completed"], "import_feed": ["error", "error"]}

    # progress reported inside the tasks (async and sync), with its history
    for m in mirrors:
        reports = rows(
            db_dsn,
            "SELECT pct, message FROM pgqueue.progress_history WHERE job_id = %s ORDER BY id",
            [m["id"]],
        )
        assert reports, f"no progress history for {m['task']} (job {m['id']})"
        if m["task"] == "resize_image":
            assert len(reports) >= 2 and reports[-1] == (100, "tile 10/10")
        elif m["task"] == "render_report":
            assert len(reports) >= 2 and reports[-1] == (100, "page 8/8")

    # alice's album: one batch, finished with its nine children
    batch_ids = {m["batch_id"] for m in images}
    assert len(batch_ids) == 1 and None not in batch_ids
    assert rows(
        db_dsn,
        "SELECT owner, status::text, total FROM pgqueue.batches WHERE id = %s",
        [batch_ids.pop()],
    ) == [("alice", "completed", 9)]
    assert all(m["batch_id"] is None for m in mirrors if m["task"] != "resize_image")

    # the bridge caught nothing it could not mirror
    assert scalar(db_dsn, "SELECT count(*) FROM pgqueue_procrastinate.errors") == 0


def test_the_docs_show_the_example_app_as_it_is() -> None:
    """docs/procrastinate.md includes pgqueue/procrastinate/example.py in full."""
    docs = (ROOT / "docs" / "procrastinate.md").read_text()
    section = docs.split("\n## The example app\n", 1)[1]
    shown = section.split("```python\n", 1)[1].split("\n```\n", 1)[0] + "\n"
    assert shown == (ROOT / "pgqueue" / "procrastinate" / "example.py").read_text()
