"""DSN normalisation, the named-query file, and error translation (no database)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.pq import DiagnosticField

import pgqueue
from pgqueue import _sql, errors
from pgqueue._connect import normalize_dsn, resolve_dsn

PACKAGE = Path(pgqueue.__file__).resolve().parent

# -- normalize_dsn / resolve_dsn ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql+psycopg://u:p@db:5433/app", "postgresql://u:p@db:5433/app"),
        ("postgresql+psycopg2://u@db/app?sslmode=disable", "postgresql://u@db/app?sslmode=disable"),
        ("postgres+asyncpg://u@db/app", "postgresql://u@db/app"),
        ("postgresql://u@db/app", "postgresql://u@db/app"),
        ("postgres://u@db/app", "postgres://u@db/app"),
        ("host=db dbname=app user=u", "host=db dbname=app user=u"),
    ],
)
def test_normalize_dsn_accepts(given: str, expected: str) -> None:
    assert normalize_dsn(given) == expected
    # and psycopg can parse the result
    assert psycopg.conninfo.conninfo_to_dict(normalize_dsn(given))


@pytest.mark.parametrize(
    "bad",
    [
        "not a dsn",
        "host=db dbname",
        "host='unterminated",
        "mysql+pymysql://u@db/app",
    ],
)
def test_normalize_dsn_rejects_malformed(bad: str) -> None:
    with pytest.raises(pgqueue.ConfigurationError, match="malformed PostgreSQL DSN"):
        normalize_dsn(bad)


def test_malformed_dsn_error_hides_nothing_secret_and_no_traceback_chain() -> None:
    with pytest.raises(pgqueue.ConfigurationError) as info:
        normalize_dsn("host=db password")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


def test_resolve_dsn_prefers_argument_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql+psycopg://env@pgq/one")
    monkeypatch.setenv("DATABASE_URL", "postgresql://env@url/two")
    assert resolve_dsn("postgresql://arg@x/y") == "postgresql://arg@x/y"
    assert resolve_dsn() == "postgresql://env@pgq/one"
    monkeypatch.delenv("PGQUEUE_DSN")
    assert resolve_dsn() == "postgresql://env@url/two"
    monkeypatch.setenv("PGQUEUE_DSN", "garbage dsn")
    with pytest.raises(pgqueue.ConfigurationError):
        resolve_dsn()


# -- named queries --------------------------------------------------------------------------

# Every way library code names a query: query("x") (the client's seam), and
# _run("x"...) / _run_timed("x"...) in the worker's seam; the status API's _fetch("x"...).
_NAMED = re.compile(
    r"""(?:\bquery|\._fetch|\._run|\._run_timed)\(\s*["'](\w+)["']"""
    r"""(?:\s+if\s[^"'()]*\selse\s+["'](\w+)["'])?"""  # "a" if ... else "b": both
)


def _names_used_in_code(root: Path) -> set[str]:
    used: set[str] = set()
    for path in root.rglob("*.py"):
        for match in _NAMED.finditer(path.read_text(encoding="utf-8")):
            used.update(name for name in match.groups() if name)
    return used


def test_every_query_named_in_the_code_exists() -> None:
    used = _names_used_in_code(PACKAGE)
    # guard against a regex that silently finds nothing
    assert {"enqueue", "claim", "complete_many", "fail", "release", "heartbeat"} <= used
    assert len(used) >= 15, used
    missing = sorted(used - set(_sql.queries()))
    assert missing == [], f"queries used in code but missing from sql/queries.sql: {missing}"


def test_every_read_named_in_the_status_api_exists() -> None:
    from pgqueue_service import _reads

    used = _names_used_in_code(PACKAGE.parent / "service")
    assert {"queue_gauges", "owner_queue_gauges", "active_jobs", "active_owner_jobs"} <= used
    assert sorted(used - set(_reads._queries())) == []
    # the API's reads are its own: none shadows a library query
    assert set(_reads._queries()).isdisjoint(_sql.queries())


def test_query_names_are_unique_and_bodies_non_empty() -> None:
    text = _sql.read("queries.sql")
    names = re.findall(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    duplicates = [n for n, count in Counter(names).items() if count > 1]
    assert duplicates == [], f"duplicate query names in sql/queries.sql: {duplicates}"
    queries = _sql.queries()
    assert sorted(queries) == sorted(names)
    for name, body in queries.items():
        assert body.strip(), f"query {name} is empty"
        assert "-- name:" not in body


def test_transition_queries_call_the_stored_functions() -> None:
    """Library code never writes to pgqueue.jobs directly; transitions go
    through the stored functions."""
    for name, body in _sql.queries().items():
        writes = re.search(r"\b(INSERT\s+INTO|UPDATE)\s+pgqueue\.jobs\b", body, re.IGNORECASE)
        assert writes is None, f"query {name} writes pgqueue.jobs directly"
    for name in ("claim", "heartbeat", "complete_many", "fail", "release", "cancel", "rescue"):
        assert f"pgqueue.{name}(" in _sql.query(name)


def test_unknown_query_name_raises_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="no query named 'does_not_exist'"):
        _sql.query("does_not_exist")


def test_install_script_contains_schema_then_functions() -> None:
    script = _sql.install_script()
    assert script.index("CREATE TABLE pgqueue.jobs") < script.index(
        "CREATE OR REPLACE FUNCTION pgqueue.claim"
    )
    assert script.startswith(_sql.read("schema.sql"))


def test_python_enum_mirrors_schema_enum_text() -> None:
    """The job_status labels in schema.sql, in order, equal pgqueue.JobStatus."""
    schema = _sql.read("schema.sql")
    block = re.search(r"CREATE TYPE pgqueue\.job_status AS ENUM \((.*?)\);", schema, re.S)
    assert block is not None
    labels = re.findall(r"'(\w+)'", re.sub(r"--[^\n]*", "", block.group(1)))
    assert labels == [s.value for s in pgqueue.JobStatus]
    assert {s for s in pgqueue.JobStatus if s.is_terminal} == set(pgqueue.TERMINAL_STATUSES)
    assert {s.value for s in pgqueue.TERMINAL_STATUSES} == {
        "completed",
        "failed",
        "timeout",
        "zombie",
        "dead_letter",
        "cancelled",
    }


# -- errors.translate -----------------------------------------------------------------------


def db_error(sqlstate: str, message: str, constraint: str | None = None) -> psycopg.Error:
    """A psycopg error as the server would raise it (class chosen by SQLSTATE),
    with its diagnostics carried in the picklable dict form psycopg supports."""
    info: Any = {
        DiagnosticField.SQLSTATE: sqlstate.encode(),
        DiagnosticField.MESSAGE_PRIMARY: message.encode(),
    }
    if constraint is not None:
        info[DiagnosticField.CONSTRAINT_NAME] = constraint.encode()
    cls = psycopg.errors._class_for_state(sqlstate)
    return cls(f"ERROR: {message}", info=info)


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("PQ001", pgqueue.JobNotFound),
        ("PQ002", pgqueue.InvalidTransition),
        ("PQ003", pgqueue.StaleLease),
        ("22023", pgqueue.InvalidJobError),
    ],
)
def test_translate_maps_pgqueue_sqlstates(sqlstate: str, expected: type[Exception]) -> None:
    exc = db_error(sqlstate, "pgqueue: cannot complete job 5 attempt 1: the lease is gone")
    assert exc.sqlstate == sqlstate
    translated = errors.translate(exc)
    assert type(translated) is expected
    assert str(translated) == "cannot complete job 5 attempt 1: the lease is gone"


def test_translate_invalid_text_is_invalid_job_error() -> None:
    translated = errors.translate(db_error("22P02", "invalid input syntax for type bigint"))
    assert type(translated) is pgqueue.InvalidJobError
    assert "invalid input syntax" in str(translated)


@pytest.mark.parametrize(
    ("constraint", "field"),
    [
        ("jobs_queue_valid", "queue"),
        ("jobs_owner_valid", "owner"),
        ("queues_rate_valid", "rate_limit"),
    ],
)
def test_translate_check_on_an_input_is_invalid_job_error_naming_it(
    constraint: str, field: str
) -> None:
    message = f'new row for relation "jobs" violates check constraint "{constraint}"'
    translated = errors.translate(db_error("23514", message, constraint))
    assert type(translated) is pgqueue.InvalidJobError
    assert translated.field == field
    assert str(translated).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "constraint",
    ["jobs_completed_after_started", "jobs_terminal_iff_completed_at", "batches_counts_sum", None],
)
def test_translate_check_on_pgqueue_state_is_not_bad_input(constraint: str | None) -> None:
    message = "new row violates check constraint"
    translated = errors.translate(db_error("23514", message, constraint))
    assert type(translated) is pgqueue.InvariantViolation
    assert not isinstance(translated, ValueError)
    assert translated.constraint == constraint
    assert str(constraint or "(unnamed)") in str(translated)


def test_translate_missing_schema_is_configuration_error() -> None:
    for sqlstate, message in [
        ("42P01", 'relation "pgqueue.jobs" does not exist'),
        ("42883", "function pgqueue.claim(text, text[], integer) does not exist"),
    ]:
        translated = errors.translate(db_error(sqlstate, message))
        assert isinstance(translated, pgqueue.ConfigurationError)
        assert "pgqueue migrate" in str(translated)


def test_translate_leaves_a_statement_not_of_pgqueue_unchanged_unless_unavailable() -> None:
    for exc in (
        db_error("42P01", 'relation "public.orders" does not exist'),
        db_error("23514", "new row violates check constraint", "orders_total_positive"),
        db_error("P0001", "raised by the application"),
    ):
        assert errors.translate(exc, ours=False) is exc
    lost = db_error("57P01", "terminating connection due to administrator command")
    assert isinstance(errors.translate(lost, ours=False), pgqueue.DatabaseUnavailable)


def test_translate_connection_failure_is_database_unavailable() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 1 failed\nmore detail'
    )
    translated = errors.translate(exc)
    assert isinstance(translated, pgqueue.DatabaseUnavailable)
    assert str(translated) == (
        'connection failed: connection to server at "127.0.0.1", port 1 failed'
    )


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("57P01", "terminating connection due to administrator command"),
        ("57P02", "terminating connection because of crash of another server process"),
        ("57P03", "the database system is starting up"),
        ("53300", "sorry, too many clients already"),
        ("08006", "connection failure"),
        ("25006", "cannot execute UPDATE in a read-only transaction"),
        ("57P05", "terminating connection due to idle-session timeout"),
    ],
)
def test_translate_session_ended_by_the_server_is_database_unavailable(
    sqlstate: str, message: str
) -> None:
    translated = errors.translate(db_error(sqlstate, message))
    assert isinstance(translated, pgqueue.DatabaseUnavailable)
    assert translated.retryable
    assert message in str(translated)


def test_translate_other_operational_error_with_a_sqlstate_is_unchanged() -> None:
    exc = db_error("55P03", "could not obtain lock on row")  # lock_not_available
    assert isinstance(exc, psycopg.OperationalError)
    assert errors.translate(exc) is exc


@pytest.mark.parametrize("sqlstate", ["23505", "40001", "XX000"])
def test_translate_leaves_foreign_errors_unchanged(sqlstate: str) -> None:
    exc = db_error(sqlstate, "something else")
    assert errors.translate(exc) is exc


def test_exception_hierarchy() -> None:
    for cls in (
        pgqueue.ConfigurationError,
        pgqueue.DatabaseUnavailable,
        pgqueue.InvalidJobError,
        pgqueue.UnknownTaskError,
        pgqueue.JobNotFound,
        pgqueue.InvalidTransition,
        pgqueue.StaleLease,
        pgqueue.InvariantViolation,
        pgqueue.JobFailed,
        pgqueue.NonRetryableError,
    ):
        assert issubclass(cls, pgqueue.PgQueueError)
    assert issubclass(pgqueue.UnknownTaskError, pgqueue.InvalidJobError)
    assert issubclass(pgqueue.InvalidJobError, ValueError)
    assert issubclass(pgqueue.JobNotFound, LookupError)


def test_job_failed_carries_status_and_error() -> None:
    exc = pgqueue.JobFailed(7, "dead_letter", "ValueError: bad")
    assert (exc.job_id, exc.status, exc.error) == (7, "dead_letter", "ValueError: bad")
    assert str(exc) == "job 7 ended dead_letter: ValueError: bad"
    assert "no error recorded" in str(pgqueue.JobFailed(8, "cancelled", None))


def test_translate_a_closed_connection_is_database_unavailable() -> None:
    translated = errors.translate(psycopg.InterfaceError("the connection is closed"))
    assert isinstance(translated, pgqueue.DatabaseUnavailable)


# -- network defaults -----------------------------------------------------------------------


def test_network_defaults_fill_only_what_the_dsn_leaves_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgqueue._connect import NETWORK_DEFAULTS, network_defaults

    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    assert network_defaults("postgresql://u@db/app") == NETWORK_DEFAULTS
    chosen = network_defaults("postgresql://u@db/app?keepalives_idle=60&tcp_user_timeout=0")
    assert "keepalives_idle" not in chosen and "tcp_user_timeout" not in chosen
    assert chosen["keepalives_count"] == NETWORK_DEFAULTS["keepalives_count"]
    multi = network_defaults("host=a,b port=5432,5433 connect_timeout=3 dbname=app")
    assert "connect_timeout" not in multi


def test_network_defaults_yield_to_the_environment_and_service_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgqueue._connect import connection_kwargs, network_defaults

    monkeypatch.delenv("PGSERVICE", raising=False)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "30")
    assert "connect_timeout" not in network_defaults("postgresql://u@db/app")
    assert "connect_timeout" not in connection_kwargs("postgresql://u@db/app", connect_timeout=5)
    monkeypatch.delenv("PGCONNECT_TIMEOUT")
    assert connection_kwargs("postgresql://u@db/app", connect_timeout=5)["connect_timeout"] == "5"
    assert "connect_timeout" not in connection_kwargs(
        "postgresql://u@db/app?connect_timeout=2", connect_timeout=5
    )
    assert network_defaults("service=mine dbname=app") == {}


def test_a_pool_tries_to_reconnect_at_least_every_two_seconds() -> None:
    """psycopg_pool doubles its reconnection delay for as long as the database
    stays away; pgqueue's pools cap it, so they come back soon after an outage
    of any length (and this fails if psycopg_pool's attempt changes shape)."""
    from pgqueue._connect import RECONNECT_DELAY_CAP, _CappedAttempt

    attempt = _CappedAttempt(timeout=86_400)
    delays = []
    for step in range(12):
        attempt.update_delay(float(step))
        delays.append(attempt.delay)
    assert delays[0] < delays[1] <= RECONNECT_DELAY_CAP
    assert max(delays) == RECONNECT_DELAY_CAP


def test_only_the_seams_read_the_library_sql() -> None:
    """The library's statements are run by its seam (``_database.py``: the
    client's and a worker's operations) and by three places that need more
    than an operation: the vacuum pass (a session of its own, for its
    advisory lock and settings), the bench's profile (it times the statements
    themselves) and the bridge's installer (it runs its own SQL file)."""
    pattern = re.compile(r"^from (?:\.|\.\.|pgqueue\.?)(?:_sql\b| import _sql\b)", re.MULTILINE)
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    )
    assert readers == [
        "_database.py",
        "_maintenance/vacuumer.py",
        "bench/_profile.py",
        "procrastinate/_install.py",
    ]
