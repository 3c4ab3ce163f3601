"""Fixtures of the migration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import scratch_database


@pytest.fixture
def second_empty_db_dsn(pg_server: str) -> Iterator[str]:
    """Another fresh database without any schema (for two-route comparisons)."""
    with scratch_database(pg_server, "pgqueue_e2") as dsn:
        yield dsn
