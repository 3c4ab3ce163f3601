"""A rolling deploy: the previous release of pgqueue, installed from this
repository's history into a venv of its own, enqueues and works against a
database migrated to this release's head, beside this release's workers.
Every job of both completes and nothing errors (docs/operations.md,
"Upgrades during a rolling deploy"). It stays, so each new revision is
checked against the release before it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

import pgqueue

from .helpers import ROOT, Processes, WorkerProcess, cli_env, rows, scalar, wait_until

# The last release: its commit in this repository and its head revision.
# Move both forward when a release is cut.
PREVIOUS_RELEASE = "bca96da595d037f8439f07ee59b88ad2db4bff30"
PREVIOUS_REVISION = "0010"

# The app both releases run: only API that both have.
APP = textwrap.dedent(
    """
    import os
    import time

    import pgqueue

    queue = pgqueue.Queue()


    @queue.task(queue="mixed", max_attempts=3)
    def record(ctx, n: int, origin: str) -> dict:
        time.sleep(0.002)
        return {"n": n, "origin": origin, "by": os.environ["RELEASE"]}
    """
)

# Enqueues as an application of a release would: single, bulk and a batch.
ENQUEUE = textwrap.dedent(
    """
    import os
    import sys

    import mixed_app

    origin = os.environ["RELEASE"]
    q = mixed_app.queue
    for n in range(40):
        q.enqueue_sync("record", {"n": n, "origin": origin})
    q.enqueue_many_sync("record", [{"n": n, "origin": origin} for n in range(40, 140)])
    batch = q.enqueue_batch_sync("record", [{"n": n, "origin": origin} for n in range(140, 180)])
    print(batch.id)
    """
)

JOBS_PER_RELEASE = 180


def _previous_release(cache: Path) -> Path:
    """The previous release installed into a venv (built once, then reused);
    its ``bin`` directory."""
    home = cache / PREVIOUS_RELEASE[:12]
    done = home / "installed"
    if done.exists():
        return home / "venv" / "bin"
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot check out the previous release")
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.skip(f"this checkout lacks the previous release's commit {PREVIOUS_RELEASE[:12]}")
    shutil.rmtree(home, ignore_errors=True)
    source = home / "source"
    source.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    venv.create(home / "venv", with_pip=True)
    subprocess.run(
        [str(home / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    done.touch()
    return home / "venv" / "bin"


@pytest.fixture(scope="session")
def previous_release() -> Path:
    return _previous_release(ROOT / ".pgqueue" / "releases")


# Building the previous release's venv (pip, from PyPI) falls inside the first
# call's set-up; pytest-timeout counts set-up too.
@pytest.mark.timeout(900)
def test_previous_release_works_beside_this_one_on_a_schema_at_head(
    previous_release: Path, db_dsn: str, procs: Processes, tmp_path: Path
) -> None:
    assert pgqueue.current_revision(db_dsn) == pgqueue.head_revision() != PREVIOUS_REVISION
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "mixed_app.py").write_text(APP)
    (app_dir / "enqueue.py").write_text(ENQUEUE)
    pythons = {"previous": str(previous_release / "python"), "current": sys.executable}

    # Workers of both releases, started before any job exists.
    workers: list[WorkerProcess] = []
    for release, python in pythons.items():
        argv = [python, "-m", "pgqueue.cli", "worker", "--app", "mixed_app:queue",
                "--worker-id", release, "--concurrency", "4", "--poll-interval", "0.2"]  # fmt: skip
        worker = WorkerProcess(
            release, argv, cli_env(db_dsn, RELEASE=release), procs.log_dir, cwd=app_dir
        )
        procs.started.append(worker)
        worker.wait_for_log(" started: queues=")
        workers.append(worker)

    # Both releases enqueue at once, as web processes of a rolling deploy would.
    enqueuers = {
        release: subprocess.Popen(
            [python, "enqueue.py"],
            cwd=app_dir,
            env=cli_env(db_dsn, RELEASE=release),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for release, python in pythons.items()
    }
    for release, proc in enqueuers.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{release} release's enqueue failed:\n{err}"

    total = 2 * JOBS_PER_RELEASE
    wait_until(
        lambda: (
            scalar(db_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'completed'") == total
        ),
        timeout=120,
        what=f"all {total} jobs to complete",
    )
    finished = rows(
        db_dsn,
        "SELECT result->>'origin', result->>'by', count(*) FROM pgqueue.jobs"
        " WHERE status = 'completed' GROUP BY 1, 2",
    )
    by_origin: dict[str, int] = {}
    by_worker: dict[str, int] = {}
    for origin, worker_release, count in finished:
        by_origin[origin] = by_origin.get(origin, 0) + count
        by_worker[worker_release] = by_worker.get(worker_release, 0) + count
    assert by_origin == {"previous": JOBS_PER_RELEASE, "current": JOBS_PER_RELEASE}
    assert set(by_worker) == {"previous", "current"}, by_worker  # both releases worked
    assert scalar(db_dsn, "SELECT count(*) FROM pgqueue.jobs WHERE status <> 'completed'") == 0
    batches = rows(db_dsn, "SELECT status::text, completed, total FROM pgqueue.batches")
    assert sorted(batches) == [("completed", 40, 40)] * 2
    for worker in workers:
        log = worker.log()
        for trouble in ("Traceback", " ERROR ", "could not record", "does not exist"):
            assert trouble not in log, f"{worker.name}: {trouble!r} in its log:\n{log[-3000:]}"
