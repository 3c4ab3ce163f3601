"""Helpers for acceptance tests: real ``pgqueue`` processes and database polling.

- :class:`WorkerProcess` / :class:`Processes`: start ``pgqueue worker`` (or any
  CLI command) as a subprocess in its own session, with stdout and stderr in
  files under the test's ``tmp_path``; every process is killed at teardown,
  and its output is printed when the test failed (see ``conftest.py``).
- :func:`wait_until`: poll a condition (usually a query) until it holds or a
  timeout passes, then fail with the last value seen.
- :func:`run_cli`: run one CLI command to completion and capture its output.
- :class:`TcpProxy`: a forwarder to PostgreSQL that a test can cut and restore,
  to give workers a database outage without touching the shared server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.app:queue"

# Every test worker polls often when idle (so --until-idle runs end promptly).
WORKER_FLAGS = ("--poll-interval", "0.2")
# Tests of rescue: fast heartbeats, so a dead worker's leases go stale quickly
# (stale_after must exceed two heartbeat intervals), and frequent rescue passes.
QUICK_RESCUE_FLAGS = (
    "--heartbeat-interval", "0.5", "--stale-after", "2", "--rescue-interval", "1",
)  # fmt: skip

T = TypeVar("T")


def cli_env(dsn: str | None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: PGQUEUE_DSN = ``dsn``, nothing else
    pointing at a database (so no test can fall back to the embedded server)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL")}
    for name in ("PGQUEUE_APP", "PGQUEUE_LOOP", "PGQUEUE_LISTEN_DSN", "PGQUEUE_PREPARE_THRESHOLD"):
        env.pop(name, None)
    if dsn is not None:
        env["PGQUEUE_DSN"] = dsn
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgqueue.cli", *args]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(
    *args: str, dsn: str | None, timeout: float = 60, env: dict[str, str] | None = None
) -> CliResult:
    """Run ``pgqueue ARGS`` with PGQUEUE_DSN=dsn (cwd: the repository root)."""
    proc = subprocess.run(
        cli_command(*args),
        cwd=ROOT,
        env=env or cli_env(dsn),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


class WorkerProcess:
    """One ``pgqueue`` subprocess in its own session (process group)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        cwd: Path = ROOT,
    ):
        self.name = name
        self.argv = list(argv)
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self._stdout = self.stdout_path.open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process itself (not its group)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit status; ``subprocess.TimeoutExpired`` if still running."""
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL its whole process group and reap it (idempotent)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL: cannot happen
                self.proc.wait(timeout=10)
        self._stdout.close()
        self._stderr.close()

    def log(self) -> str:
        """Its stderr (where the worker logs) followed by its stdout."""
        parts = []
        for path in (self.stderr_path, self.stdout_path):
            text = path.read_text(errors="replace") if path.exists() else ""
            if text.strip():
                parts.append(f"--- {path.name} ---\n{text.rstrip()}")
        return "\n".join(parts) or "(no output)"

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` appears in its stderr (e.g. "started")."""

        def seen() -> bool:
            exited = self.proc.poll() is not None
            if text in self.stderr_path.read_text(errors="replace"):
                return True
            if exited:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before logging {text!r}"
                )
            return False

        wait_until(seen, timeout=timeout, what=f"{self.name} to log {text!r}")


class Processes:
    """Starts subprocesses for one test and kills all of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(
        self,
        *args: str,
        dsn: str | None,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """Start ``pgqueue ARGS`` with PGQUEUE_DSN=dsn (and the variables of ``env``)."""
        name = name or f"proc{len(self.started) + 1}"
        proc = WorkerProcess(name, cli_command(*args), cli_env(dsn, **(env or {})), self.log_dir)
        self.started.append(proc)
        return proc

    def worker(
        self,
        dsn: str,
        *extra: str,
        concurrency: int = 4,
        name: str | None = None,
        quick_rescue: bool = False,
        wait_started: bool = True,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """Start ``pgqueue worker --app tests.acceptance.app:queue`` and (by
        default) wait until it logged that it started. Later flags in ``extra``
        override earlier ones."""
        name = name or f"worker{len(self.started) + 1}"
        args = ["worker", "--app", APP, "--concurrency", str(concurrency), *WORKER_FLAGS]
        if quick_rescue:
            args += QUICK_RESCUE_FLAGS
        proc = self.start(*args, *extra, dsn=dsn, name=name, env=env)
        if wait_started:
            proc.wait_for_log(" started: queues=")
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()

    def logs(self) -> str:
        return "\n\n".join(
            f"===== {p.name} (pid {p.pid}, exit {p.poll()}): {' '.join(p.argv[3:])}\n{p.log()}"
            for p in self.started
        )


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "the condition",
) -> T:
    """Call ``condition`` until it returns something truthy (which is returned);
    fail after ``timeout`` seconds, showing the last value it returned."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def scalar(dsn: str, sql: str, params: Sequence[Any] | None = None) -> Any:
    """The first column of the first row of ``sql``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def rows(dsn: str, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def status_counts(dsn: str) -> dict[str, int]:
    """Jobs per status, e.g. ``{"pending": 3, "completed": 10}``."""
    return dict(rows(dsn, "SELECT status::text, count(*) FROM pgqueue.jobs GROUP BY status"))


def wait_for_status(dsn: str, expected: dict[str, int], *, timeout: float) -> None:
    """Wait until the jobs per status are exactly ``expected``."""
    seen: dict[str, int] = {}

    def check() -> bool:
        nonlocal seen
        seen = status_counts(dsn)
        return seen == expected

    try:
        wait_until(check, timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"timed out after {timeout} s waiting for job states {expected}; last: {seen}"
        ) from None


def attempt_outcomes(dsn: str) -> dict[int, list[str]]:
    """Per job id, the outcomes of its recorded attempts in order."""
    out: dict[int, list[str]] = {}
    for job_id, outcome in rows(
        dsn, "SELECT job_id, outcome FROM pgqueue.attempts ORDER BY job_id, attempt"
    ):
        out.setdefault(job_id, []).append(outcome)
    return out


class TcpProxy:
    """A TCP forwarder from 127.0.0.1:``port`` to PostgreSQL, which a test can
    take down (closing every connection, refusing new ones) and bring back: a
    database outage as the clients see it, without touching the shared server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def dsn(self, dsn: str) -> str:
        """``dsn`` redirected through this proxy."""
        return make_conninfo(dsn, host="127.0.0.1", port=str(self.port))

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def silent_port(port: int) -> Iterator[None]:
    """A silent network partition of every TCP connection to or from ``port``
    on loopback: packets are dropped (iptables), so no RST or FIN ever comes;
    the peers see silence, as after a cut cable. Skips the test where
    iptables cannot be used (not root, no netfilter)."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("a silent partition needs root and iptables")
    rules = [["--dport", str(port)], ["--sport", str(port)]]
    added: list[list[str]] = []

    def rule(action: str, match: list[str]) -> list[str]:
        # -w: wait for the xtables lock another iptables user may hold,
        # instead of failing (and skipping the test)
        return ["iptables", "-w", action, "INPUT", "-i", "lo", "-p", "tcp", *match,
                "-m", "comment", "--comment", "pgqueue-test-partition", "-j", "DROP"]  # fmt: skip

    try:
        for match in rules:
            done = subprocess.run(rule("-I", match), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"iptables cannot drop packets here: {done.stderr.strip()}")
            added.append(match)
        yield
    finally:
        for match in added:
            subprocess.run(rule("-D", match), capture_output=True, check=False)
