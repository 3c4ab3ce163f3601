"""The catalog check against the installed procrastinate's real schema, and
``pgqueue procrastinate install|uninstall|check`` on real databases."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from pgqueue import cli
from pgqueue.procrastinate import EXPECTED_CATALOG, _install

from .conftest import apply_procrastinate_schema


async def _differences(dsn: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await _install.catalog_differences(conn)


def _sql(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def _cli(dsn: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    code = cli.main(["--dsn", dsn, "procrastinate", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else None, captured.err


async def test_the_installed_procrastinate_is_what_the_bridge_expects(
    procrastinate_dsn: str,
) -> None:
    assert await _differences(procrastinate_dsn) == []


def test_the_expected_catalog_names_what_the_bridge_calls() -> None:
    assert set(EXPECTED_CATALOG.functions) == {
        "procrastinate_fetch_job_v2",
        "procrastinate_finish_job_v1",
        "procrastinate_retry_job_v2",
        "procrastinate_cancel_job_v1",
        "procrastinate_defer_jobs_v1",
    }
    assert set(EXPECTED_CATALOG.columns["procrastinate_jobs"]) == {
        "id",
        "queue_name",
        "task_name",
        "priority",
        "lock",
        "queueing_lock",
        "args",
        "status",
        "scheduled_at",
        "attempts",
        "abort_requested",
        "worker_id",
    }
    assert set(EXPECTED_CATALOG.columns["procrastinate_workers"]) == {"id", "last_heartbeat"}


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        (
            "ALTER TABLE procrastinate_jobs DROP COLUMN queueing_lock",
            "column procrastinate_jobs.queueing_lock (text) is missing",
        ),
        (
            "ALTER TABLE procrastinate_jobs ALTER COLUMN priority TYPE bigint",
            "column procrastinate_jobs.priority is bigint, the bridge expects integer",
        ),
        (
            "DROP FUNCTION procrastinate_cancel_job_v1(bigint, boolean, boolean)",
            "function procrastinate_cancel_job_v1(bigint, boolean, boolean) is missing",
        ),
        (
            "ALTER FUNCTION procrastinate_finish_job_v1(bigint, procrastinate_job_status, boolean)"
            " RENAME TO procrastinate_finish_job_v0;"
            " CREATE FUNCTION procrastinate_finish_job_v1(job_id bigint) RETURNS void"
            " LANGUAGE sql AS 'SELECT'",
            "function procrastinate_finish_job_v1 takes (procrastinate_finish_job_v1(bigint)), "
            "the bridge expects (bigint, procrastinate_job_status, boolean)",
        ),
        (
            "ALTER TYPE procrastinate_job_status ADD VALUE 'paused'",
            "enum procrastinate_job_status has labels todo, doing, succeeded, failed, cancelled, "
            "aborting, aborted, paused; the bridge expects todo, doing, succeeded, failed, "
            "cancelled, aborting, aborted",
        ),
    ],
)
async def test_a_changed_schema_is_reported(
    procrastinate_dsn: str, change: str, difference: str
) -> None:
    _sql(procrastinate_dsn, change)
    assert await _differences(procrastinate_dsn) == [difference]


async def test_a_database_without_procrastinate_differs_everywhere(db_dsn: str) -> None:
    differences = await _differences(db_dsn)
    assert "table procrastinate_jobs is missing" in differences
    assert "table procrastinate_workers is missing" in differences
    assert "enum procrastinate_job_status is missing" in differences
    assert len(differences) == len(EXPECTED_CATALOG.functions) + 3


def test_check_exits_1_on_a_difference_and_0_when_it_matches(
    procrastinate_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, _ = _cli(procrastinate_dsn, "check", capsys=capsys)
    assert (code, report) == (0, {"differences": [], "bridge_version": None, "errors": []})
    _sql(procrastinate_dsn, "ALTER TABLE procrastinate_workers DROP COLUMN last_heartbeat CASCADE")
    code, report, _ = _cli(procrastinate_dsn, "check", capsys=capsys)
    assert code == 1
    assert report["differences"] == [
        "column procrastinate_workers.last_heartbeat (timestamp with time zone) is missing"
    ]
    assert cli.main(["--dsn", procrastinate_dsn, "procrastinate", "check"]) == 1
    out = capsys.readouterr().out
    assert "differs: column procrastinate_workers.last_heartbeat" in out
    assert "bridge: not installed" in out


def test_install_check_uninstall(
    procrastinate_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(procrastinate_dsn, "install", capsys=capsys)[:2] == (0, {"installed": 1})
    assert _cli(procrastinate_dsn, "install", capsys=capsys)[:2] == (0, {"installed": 1})
    code, report, _ = _cli(procrastinate_dsn, "check", capsys=capsys)
    assert (code, report) == (0, {"differences": [], "bridge_version": 1, "errors": []})
    # a mirror that could not follow its job is reported, and fails the check
    _sql(
        procrastinate_dsn,
        "SELECT pgqueue_procrastinate.caught(7, 'update todo -> doing', '23514', 'refused')",
    )
    code, report, _ = _cli(procrastinate_dsn, "check", capsys=capsys)
    assert code == 1
    assert [(e["job_id"], e["operation"]) for e in report["errors"]] == [
        (7, "update todo -> doing")
    ]
    assert _cli(procrastinate_dsn, "uninstall", capsys=capsys)[:2] == (0, {"uninstalled": 1})
    assert _cli(procrastinate_dsn, "uninstall", capsys=capsys)[:2] == (0, {"uninstalled": None})
    with psycopg.connect(procrastinate_dsn) as conn:
        row = conn.execute("SELECT to_regnamespace('pgqueue_procrastinate')").fetchone()
    assert row == (None,)


def test_install_refuses_without_procrastinate(
    db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(db_dsn, "install", capsys=capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "run `procrastinate schema --apply` first" in err


def test_recover_without_the_bridge_says_to_install_it(
    procrastinate_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(procrastinate_dsn, "recover", capsys=capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "bridge is not installed" in err and "pgqueue procrastinate install" in err


def test_install_refuses_without_pgqueue(
    empty_db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    apply_procrastinate_schema(empty_db_dsn)
    code, _, err = _cli(empty_db_dsn, "install", capsys=capsys)
    assert code == 1
    assert "run `pgqueue migrate` first" in err


def test_install_refuses_a_procrastinate_it_was_not_written_for(
    procrastinate_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _sql(procrastinate_dsn, "DROP FUNCTION procrastinate_retry_job_v2")
    code, _, err = _cli(procrastinate_dsn, "install", capsys=capsys)
    assert code == 1
    assert "not the one the bridge was written for" in err
    assert "procrastinate_retry_job_v2" in err
