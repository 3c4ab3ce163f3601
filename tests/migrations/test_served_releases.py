"""The rolling-deploy rule, checked for every release the schema serves.

A release whose head revision is listed in ``pgqueue.served_revisions`` keeps
calling the functions its revision installed while the database is migrated
past it. So no later revision may drop a pgqueue function, or change its
arguments or its result type, while that release is still listed: such a
change belongs in a cleanup revision that also removes the release's row
(docs/operations.md, "Upgrades during a rolling deploy").
(tests/acceptance/test_previous_release.py runs the previous release's code
itself against the head schema.)
"""

from __future__ import annotations

from typing import Any

import psycopg

import pgqueue
from pgqueue import _migrate

SIGNATURES = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') -> '
       || pg_get_function_result(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'pgqueue'
"""


def _signatures(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {row[0] for row in conn.execute(SIGNATURES)}


def _served(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows: list[Any] = conn.execute(
            "SELECT revision FROM pgqueue.served_revisions ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def test_head_keeps_every_function_a_served_release_calls(
    empty_db_dsn: str, second_empty_db_dsn: str
) -> None:
    pgqueue.migrate(empty_db_dsn)
    head = _signatures(empty_db_dsn)
    served = _served(empty_db_dsn)
    assert _migrate.head_revision() in served
    for revision in served:  # in order: each upgrade continues the last
        _migrate.upgrade(second_empty_db_dsn, revision)
        missing = _signatures(second_empty_db_dsn) - head
        assert not missing, (
            f"release {revision} is served, but head dropped or changed: {sorted(missing)}"
        )
