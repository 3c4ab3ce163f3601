"""The fixtures give each test its own migrated database."""

import psycopg

import pgqueue


def test_fresh_database_is_migrated_and_empty(conn: psycopg.Connection, db_dsn: str) -> None:
    count = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    assert count == (0,)
    # db_dsn, not conn.info.dsn: psycopg leaves the password out of the latter.
    assert pgqueue.current_revision(db_dsn) == pgqueue.head_revision()
