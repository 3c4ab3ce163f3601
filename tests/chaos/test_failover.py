"""Failover: a streaming standby is promoted while jobs drain.

A primary and its standby on 127.0.0.1; workers, a client process that keeps
enqueueing and a real ``pgqueue serve`` all use one multi-host DSN with
``target_session_attrs=read-write``. Mid-drain the primary is stopped as a
crash would (``pg_ctl stop -m immediate``) and the standby is promoted.

- Synchronous replication: every enqueue and every completion the database
  acknowledged is on the promoted standby, every job ends completed within the
  invariants, the workers reconnect without a restart, and the API answers
  503 during the switch and 200 after, never 500.
- Asynchronous replication: the same, except that what the standby had not
  received is lost; the test measures how much (docs/operations.md,
  "Failover") and checks that what survived is whole: a lost completion
  comes back as a pending or rescued job and runs again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgqueue
from tests.chaos._cluster import Cluster, _free_port, running_cluster
from tests.chaos._scenario import ROOT, check_invariants, prepare_recorded, stop

pytestmark = pytest.mark.chaos

SECRET = "failover-tests-" + "s" * 40
WORKER_FLAGS = (
    "--app", "tests.chaos.app:queue", "--concurrency", "20", "--poll-interval", "0.2",
    "--heartbeat-interval", "0.5", "--stale-after", "3", "--rescue-interval", "0.5",
)  # fmt: skip
CLIENT_FIRST_N = 1_000_000
"""The client's jobs have n from here on; the jobs enqueued up front, below it."""


def _spawn(args: list[str], dsn: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PGQUEUE_DSN": dsn, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class ApiProbe:
    """Polls a real ``pgqueue serve`` (``/readyz`` and ``/api/v1/queues``) from a
    thread, recording each answer's status (0: no answer within 5 s)."""

    def __init__(self, port: int) -> None:
        from pgqueue_service import mint_token

        self.base = f"http://127.0.0.1:{port}"
        self.token = mint_token(SECRET, "failover", admin=True)
        self.answers: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def get(self, path: str) -> int:
        request = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, TimeoutError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in ("/readyz", "/api/v1/queues"):
                self.answers.append((time.monotonic(), path, self.get(path)))
            time.sleep(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _wait_for(what: str, predicate: Any, timeout: float, *logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                              for p in logs)  # fmt: skip
            raise AssertionError(f"{what}: not within {timeout}s\n{tails}")
        time.sleep(0.1)


def _count(dsn: str, where: str = "true") -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute(f"SELECT count(*) FROM pgqueue.jobs WHERE {where}").fetchone()  # type: ignore[arg-type]
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else -1


def _lines(path: Path) -> list[list[int]]:
    if not path.exists():
        return []
    return [[int(v) for v in line.split()] for line in path.read_text().splitlines() if line]


def _replication_lag(cluster: Cluster) -> int | None:
    """Bytes of WAL the primary wrote that the standby has not flushed yet."""
    with psycopg.connect(cluster.primary.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint"
            " FROM pg_stat_replication"
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def run_failover(
    tmp_path: Path,
    *,
    synchronous: bool,
    initial: int,
    pause: float,
    workers: int,
    clients: int,
    bulk: int = 1,
    pace: float = 0.0,
    promote_after: int,
    gap: float,
) -> dict[str, Any]:
    """One failover mid-drain; returns what it measured (see the checks below)."""
    report: dict[str, Any] = {"replication": "sync" if synchronous else "async"}
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(running_cluster(tmp_path / "pg", synchronous=synchronous))
        dsn = cluster.dsn
        pgqueue.migrate(dsn)
        prepare_recorded(dsn, initial, pause=pause)

        api_port = _free_port()
        api_log = tmp_path / "api.log"
        api = _spawn(
            ["-m", "pgqueue.cli", "serve", "--port", str(api_port),
             "--app", "tests.chaos.app:queue"],
            dsn, api_log, PGQUEUE_API_SECRET=SECRET,
        )  # fmt: skip
        stack.callback(_kill, api)
        probe = ApiProbe(api_port)
        _wait_for("the API is ready", lambda: probe.get("/readyz") == 200, 30, api_log)
        probe.start()
        stack.callback(probe.stop)

        worker_logs = [tmp_path / f"worker{i}.log" for i in range(workers)]
        acked_done = tmp_path / "completions.ledger"
        procs = []
        for log in worker_logs:
            proc = _spawn(["-m", "tests.chaos._failover_proc", "worker", str(acked_done),
                           *WORKER_FLAGS], dsn, log)  # fmt: skip
            stack.callback(_kill, proc)
            procs.append(proc)
        for log in worker_logs:
            _wait_for("worker started", lambda log=log: " started: queues=" in log.read_text(),
                      30, log)  # fmt: skip

        stop_file = tmp_path / "stop-enqueueing"
        client_logs = [tmp_path / f"client{i}.log" for i in range(clients)]
        acked_enqueues = [tmp_path / f"enqueues{i}.ledger" for i in range(clients)]
        client_procs = []
        for i in range(clients):
            first = CLIENT_FIRST_N * (i + 1)
            args = ["client", str(acked_enqueues[i]), str(first), str(stop_file), str(bulk)]
            proc = _spawn(
                ["-m", "tests.chaos._failover_proc", *args, str(pace)], dsn, client_logs[i]
            )
            stack.callback(_kill, proc)
            client_procs.append(proc)

        _wait_for(
            f"{promote_after} jobs completed before the failover",
            lambda: _count(dsn, "status = 'completed'") >= promote_after,
            60,
            *worker_logs,
        )
        report["completed_before"] = _count(dsn, "status = 'completed'")
        report["standby_behind_bytes"] = _replication_lag(cluster)
        crashed = time.monotonic()
        cluster.primary.crash()
        time.sleep(gap)  # a failover takes a while to decide: the API must say 503 meanwhile
        cluster.standby.promote()
        promoted = time.monotonic()
        report["switch_s"] = round(promoted - crashed, 2)

        new = cluster.standby.dsn
        baseline = _count(new, "status = 'completed'")
        _wait_for(
            "a completion on the promoted standby",
            lambda: _count(new, "status = 'completed'") > baseline,
            60,
            *worker_logs,
        )
        report["first_completion_after_promotion_s"] = round(time.monotonic() - promoted, 2)
        time.sleep(1.0)  # the clients enqueue on the new primary too
        stop_file.touch()
        for proc in client_procs:
            proc.wait(timeout=60)
        summaries = [json.loads(log.read_text().strip().splitlines()[-1]) for log in client_logs]
        report["client_unavailable_retries"] = sum(s["unavailable"] for s in summaries)
        client_errors = [e for s in summaries for e in s["errors"]]

        _wait_for(
            "every job completed on the promoted standby",
            lambda: _count(new, "status <> 'completed'") == 0,
            120,
            *worker_logs,
        )
        report["drained_s"] = round(time.monotonic() - promoted, 2)
        alive = [proc.poll() is None for proc in procs]
        codes = [stop(proc) for proc in procs]
        probe.stop()

        enqueued = [row for path in acked_enqueues for row in _lines(path)]
        done = _lines(acked_done)
        with psycopg.connect(new) as conn:
            jobs = {
                (row[0], int(row[1])): (row[2], row[3])
                for row in conn.execute(
                    "SELECT id, args->>'n', status::text, attempts FROM pgqueue.jobs"
                )
            }
            upfront = conn.execute(
                "SELECT count(DISTINCT (args->>'n')::bigint) FROM pgqueue.jobs"
                " WHERE (args->>'n')::bigint < %s",
                (CLIENT_FIRST_N,),
            ).fetchone()
        total = len(jobs)
        invariants = check_invariants(new, total)

    report["jobs"] = total
    report["acked_enqueues"] = len(enqueued) + initial
    report["lost_enqueues"] = sum(1 for job_id, n in enqueued if (job_id, n) not in jobs) + (
        initial - (upfront[0] if upfront else 0)
    )
    report["acked_completions"] = len(done)
    # An acknowledged completion survived iff its job is completed by that very
    # attempt; a job that ran again after the switch lost its completion.
    lost = [(j, a, n) for j, a, n in done if jobs.get((j, n)) != ("completed", a)]
    report["lost_completions"] = len(lost)
    report["lost_completions_rerun"] = sum(1 for j, a, n in lost if (j, n) in jobs)
    statuses = [status for _, _, status in probe.answers]
    report["api_answers"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    after = [status for at, _, status in probe.answers if at > promoted]
    print(f"\n[failover] {report}")

    tails = "\n".join(log.read_text(errors="replace")[-2000:] for log in worker_logs)
    assert all(alive), f"a worker died instead of riding through:\n{tails}"
    assert codes == [0] * len(procs), tails
    assert client_errors == [], client_errors
    assert invariants.get("completed") == total, invariants
    assert invariants["attempts_over_max"] == 0, invariants
    assert invariants["overlapping_bodies"] == 0, invariants
    assert invariants["completed_without_a_finished_body"] == 0, invariants
    assert invariants["miscounted_batches"] == 0, invariants
    assert "CheckViolation" not in tails and "violates check constraint" not in tails
    assert set(statuses) <= {200, 503}, (report["api_answers"], api_log.read_text()[-3000:])
    # The probe ran across the switch. A request then answers 503, or waits
    # within the API's connection timeout for the new primary and answers 200
    # (a quick promotion leaves no 503 at all); never a 500, never no answer.
    assert any(at < crashed for at, _, _ in probe.answers), "the probe missed the switch"
    assert after and after[-1] == 200 and 200 in after
    # the ledgers saw acknowledgements, so the loss checks below check something
    assert report["acked_completions"] > 0 and report["acked_enqueues"] > initial, report
    if synchronous:
        assert report["lost_enqueues"] == 0, report
        assert report["lost_completions"] == 0, (report, lost[:10])
    return report


@pytest.mark.timeout(180)
def test_failover_synchronous_short(tmp_path: Path) -> None:
    """The short version run by `make test`: a few hundred jobs, synchronous."""
    run_failover(
        tmp_path,
        synchronous=True,
        initial=400,
        pause=0.2,
        workers=2,
        clients=1,
        promote_after=100,
        gap=1.0,
    )


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_failover_synchronous_long(tmp_path: Path) -> None:
    """Thousands of jobs under load, synchronous: nothing acknowledged is lost."""
    run_failover(
        tmp_path,
        synchronous=True,
        initial=4000,
        pause=0.05,
        workers=3,
        clients=2,
        promote_after=1000,
        gap=2.0,
    )


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_failover_asynchronous_loss_window(tmp_path: Path) -> None:
    """Asynchronous replication under load: measures the acknowledged enqueues
    and completions the promoted standby misses (printed as ``[failover]``);
    what survived obeys every invariant and every job still completes."""
    run_failover(
        tmp_path,
        synchronous=False,
        initial=4000,
        pause=0.0,
        workers=3,
        clients=3,
        bulk=20,
        pace=0.1,  # about as many jobs a second as the workers finish
        promote_after=1500,
        gap=1.0,
    )


@pytest.mark.timeout(120)
def test_switchover_from_a_fenced_primary(tmp_path: Path) -> None:
    """A planned switchover: the old primary is fenced read-only
    (``default_transaction_read_only``) and keeps running while the standby is
    promoted. The worker's pooled connections to it stay open and look alive,
    but every write on them fails with 25006 (read-only transaction): the
    worker must treat that as unavailable, retry on a fresh connection (which
    the DSN takes to the new primary) and fail no job for it."""
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(running_cluster(tmp_path / "pg", synchronous=False))
        dsn = cluster.dsn
        pgqueue.migrate(dsn)
        prepare_recorded(dsn, 300, pause=0.1)
        log = tmp_path / "worker.log"
        ledger = tmp_path / "completions.ledger"
        worker = _spawn(["-m", "tests.chaos._failover_proc", "worker", str(ledger),
                         *WORKER_FLAGS], dsn, log)  # fmt: skip
        stack.callback(_kill, worker)
        _wait_for("50 jobs completed", lambda: _count(dsn, "status = 'completed'") >= 50, 60, log)
        with psycopg.connect(cluster.primary.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(1.0)  # the worker now meets the fence on every pooled connection
        cluster.standby.promote()
        new = cluster.standby.dsn
        _wait_for(
            "every job completed on the new primary, the old one still running",
            lambda: _count(new, "status <> 'completed'") == 0,
            90,
            log,
        )
        assert cluster.primary.postmaster_pid() is not None
        alive = worker.poll() is None
        code = stop(worker)
        invariants = check_invariants(new, _count(new))
        with psycopg.connect(new) as conn:
            row = conn.execute(
                # The recorded task's own writes meet the fence too: those
                # attempts failed in the task, as they should, and ran again.
                "SELECT count(*) FROM pgqueue.attempts"
                " WHERE error LIKE '%read-only%' AND error NOT LIKE '%, in recorded%'"
            ).fetchone()
    text = log.read_text(errors="replace")
    assert alive and code == 0, text[-3000:]
    assert row == (0,), "pgqueue failed a job because the old primary was read-only"
    assert "Traceback" not in text, text[-3000:]
    assert invariants["attempts_over_max"] == 0, invariants
    assert invariants["miscounted_batches"] == 0, invariants
