"""``pgqueue serve`` and ``pgqueue token`` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

import pgqueue
from pgqueue_service import decode_token
from tests.acceptance.helpers import ROOT, cli_command, cli_env, run_cli

from .conftest import SECRET

pytestmark = pytest.mark.timeout(90)


def _one_error_line(stderr: str, *expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pgqueue: error: "), lines[0]
    for text in expected:
        assert text in lines[0]


def test_token_without_a_secret_is_one_error_line() -> None:
    result = run_cli("token", "alice", dsn=None, env=cli_env(None))
    assert result.returncode == 1 and result.stdout == ""
    _one_error_line(result.stderr, "PGQUEUE_API_SECRET is not set")


def test_token_with_a_short_secret_is_one_error_line() -> None:
    result = run_cli("token", "alice", dsn=None, env=cli_env(None, PGQUEUE_API_SECRET="short"))
    _one_error_line(result.stderr, "PGQUEUE_API_SECRET is too short")


def test_token_mints_a_token_for_the_owner() -> None:
    env = cli_env(None, PGQUEUE_API_SECRET=SECRET)
    plain = run_cli("token", "alice", dsn=None, env=env)
    assert plain.returncode == 0, plain.stderr
    assert decode_token(SECRET, plain.stdout.strip()).owner == "alice"
    assert decode_token(SECRET, plain.stdout.strip()).admin is False

    admin = run_cli("token", "ops", "--admin", "--ttl", "60", "--json", dsn=None, env=env)
    assert admin.returncode == 0, admin.stderr
    payload = admin.json()
    assert (payload["owner"], payload["admin"]) == ("ops", True)
    claims = jwt.decode(payload["token"], SECRET, algorithms=["HS256"])
    assert 55 <= claims["exp"] - claims["iat"] <= 60


def test_serve_without_a_secret_is_one_error_line(db_dsn: str) -> None:
    result = run_cli("serve", "--port", "0", dsn=db_dsn)
    assert result.returncode == 1 and result.stdout == ""
    _one_error_line(result.stderr, "PGQUEUE_API_SECRET")


def test_serve_answers_and_stops_on_sigterm(db_dsn: str, tmp_path: Path) -> None:
    env = cli_env(db_dsn, PGQUEUE_API_SECRET=SECRET)
    stdout = (tmp_path / "serve.out").open("w+")
    proc = subprocess.Popen(
        cli_command("serve", "--port", "0", "--app", "tests.acceptance.app:queue"),
        cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            stdout.seek(0)
            match = re.search(r"listening on (http://\S+)", stdout.read())
            url = match.group(1) if match else None
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert url, "serve never said where it listens"
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
            assert json.load(response) == {
                "status": "ready",
                "database": True,
                "listener": True,
                "schema_at_head": True,
                "schema_serves_release": True,
                "schema_revision": pgqueue.head_revision(),
            }
        token = run_cli("token", "alice", dsn=None, env=env).stdout.strip()
        request = urllib.request.Request(
            f"{url}/api/v1/jobs", method="POST",
            data=json.dumps({"task": "record", "args": {"tag": "api"}}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            assert json.load(response)["owner"] == "alice"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout.close()
