"""A private PgBouncer in transaction mode in front of the test server.

:func:`start` runs the ``pgbouncer`` binary (Debian/Ubuntu package
``pgbouncer``) in the foreground on 127.0.0.1 and a free port, with
``pool_mode = transaction`` and ``default_pool_size = 5``, for every database
of the server (``*``). Clients log in with the user and password of the
server's DSN: ``md5`` against an ``auth_file`` written from it, or ``trust``
when the DSN carries no password (the server then trusts this user too).
PgBouncer refuses to run as root: as root it is started with ``-u`` as
``postgres`` (or ``nobody``), so its files live in a directory that user can
read.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

POOL_SIZE = 5


def binary() -> str | None:
    """The pgbouncer executable, if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


class PgBouncer:
    """A running pgbouncer; :meth:`dsn` routes a server DSN through it."""

    def __init__(self, port: int, directory: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.directory = directory
        self.proc = proc

    def dsn(self, server_dsn: str) -> str:
        """``server_dsn`` (same database, user and password) through the pooler."""
        return make_conninfo(server_dsn, host="127.0.0.1", port=str(self.port))

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@contextlib.contextmanager
def start(server_dsn: str) -> Iterator[PgBouncer]:
    """Run a pgbouncer in front of the server of ``server_dsn`` until the block ends."""
    exe = binary()
    assert exe is not None, "pgbouncer is not installed"
    params = conninfo_to_dict(server_dsn)
    user = str(params.get("user") or pwd.getpwuid(os.geteuid()).pw_name)
    # The password actually used (the DSN's, PGPASSWORD's or .pgpass's): the
    # server may ask for it whatever the DSN says.
    with psycopg.connect(server_dsn, connect_timeout=10) as probe:
        password = probe.info.password or ""
    target = [f"host={params.get('host') or '127.0.0.1'}", f"port={params.get('port') or 5432}"]
    directory = Path(tempfile.mkdtemp(prefix="pgqueue-pgbouncer-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        # pgbouncer will not run as root. A server on a Unix socket (the
        # embedded one) keeps it in a directory only its own user may enter:
        # run as that user there.
        host = str(params.get("host") or "")
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "root"
        candidates = (owner, "postgres", "nobody") if owner != "root" else ("postgres", "nobody")
        name = next((n for n in candidates if _user_exists(n)), None)
        assert name is not None, "no unprivileged user to run pgbouncer as"
        run_as = ["-u", name]
        directory.chmod(0o755)
    port = _free_port()
    (directory / "userlist.txt").write_text(f"{_quote(user)} {_quote(password)}\n")
    (directory / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = {' '.join(target)}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                f"auth_type = {'md5' if password else 'trust'}",
                f"auth_file = {directory / 'userlist.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {POOL_SIZE}",
                "max_client_conn = 200",
                "ignore_startup_parameters = extra_float_digits,options",
                f"logfile = {directory / 'pgbouncer.log'}",
                "",
            ]
        )
    )
    for path in directory.iterdir():
        path.chmod(0o600)  # the auth file holds the password
    if run_as:
        (directory / "pgbouncer.log").touch()
        for path in directory.iterdir():
            shutil.chown(path, user=run_as[1])
    proc = subprocess.Popen(
        [exe, *run_as, str(directory / "pgbouncer.ini")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bouncer = PgBouncer(port, directory, proc)
    try:
        _wait_ready(bouncer, server_dsn)
        yield bouncer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_ready(bouncer: PgBouncer, server_dsn: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if bouncer.proc.poll() is not None:
            raise RuntimeError(
                f"pgbouncer exited with status {bouncer.proc.returncode}:\n{bouncer.log()}"
            )
        try:
            with psycopg.connect(bouncer.dsn(server_dsn), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not answer: {exc}\n{bouncer.log()}") from exc
            time.sleep(0.1)
