"""Fixtures of the acceptance tests (real worker processes on a real database).

- ``procs``: a :class:`helpers.Processes` whose subprocesses are all killed at
  teardown; when the test failed, their logs are printed (pytest shows them
  under "Captured stdout teardown").
- ``runs_dsn``: ``db_dsn`` with the ``acceptance_runs`` table created.
- ``client``: a Queue on the test database with the app's tasks registered,
  for enqueueing from the test.
- ``db_proxy``: a TCP proxy to the server that a test can take down and bring
  back (a database outage, as workers see it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

import pgqueue

from . import app
from .helpers import Processes, TcpProxy


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path, db_dsn: str) -> Iterator[Processes]:
    # Depends on db_dsn so the processes are killed before the database is dropped.
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    processes = Processes(log_dir)
    try:
        yield processes
    finally:
        processes.kill_all()
        report = getattr(request.node, "rep_call", None)
        if processes.started and (report is None or report.failed):
            print(f"\n[acceptance] logs of the processes this test started ({log_dir}):")
            print(processes.logs())


@pytest.fixture
def runs_dsn(db_dsn: str) -> str:
    app.create_runs_table(db_dsn)
    return db_dsn


@pytest.fixture
def client(runs_dsn: str) -> Iterator[pgqueue.Queue]:
    """Use its ``*_sync`` methods: the tests are synchronous (they poll and sleep)."""
    q = app.build_queue(runs_dsn)
    try:
        yield q
    finally:
        asyncio.run(q.close())


@pytest.fixture
def db_proxy(db_dsn: str) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the test's PostgreSQL server, up."""
    params = conninfo_to_dict(db_dsn)
    host = str(params.get("host") or "")
    if not host or host.startswith("/"):
        pytest.skip("the test server is reached through a Unix socket, not TCP")
    proxy = TcpProxy(host, int(params.get("port") or 5432))
    proxy.up()
    try:
        yield proxy
    finally:
        proxy.down()
