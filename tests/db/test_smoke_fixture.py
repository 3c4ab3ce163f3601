"""The fixtures give each test its own migrated database."""

import psycopg

import pgqueue


def test_fresh_database_is_migrated_and_empty(conn: psycopg.Connection) -> None:
    count = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    assert count == (0,)
    assert pgqueue.current_revision(conn.info.dsn) == pgqueue.head_revision()
