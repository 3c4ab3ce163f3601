"""Reads only the status API makes: the dashboard's active jobs and the
queue gauges cheap enough to poll.

They run through the library's seam to PostgreSQL
(:meth:`pgqueue._database.ClientDatabase.fetch`: its pool, its check of
pooled connections, its error translation); their SQL is this package's
``sql/reads.sql``, one statement under each ``-- name: NAME`` line, as the
library's own queries are.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from importlib import resources
from typing import Any, LiteralString, cast

import pgqueue

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def _queries() -> dict[str, LiteralString]:
    text = resources.files(__package__).joinpath("sql", "reads.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)  # [preamble, name1, body1, name2, body2, ...]
    # The file is part of the package, not input: safe to treat as literal.
    return {
        name: cast(LiteralString, body.strip())
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def query(name: str) -> LiteralString:
    """One read's statement, by name."""
    return _queries()[name]


class Reads:
    """The status API's reads on ``queue``'s seam, errors as pgqueue's."""

    def __init__(self, queue: pgqueue.Queue) -> None:
        self._queue = queue

    async def _fetch(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await self._queue.database.fetch(query(name), params)

    async def active_jobs(
        self,
        owner: str | None,
        *,
        window: float = 300.0,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[pgqueue.Job]:
        """Unfinished jobs (pending, running, retrying) plus those that reached a
        terminal state in the last ``window`` seconds, newest first; page with
        ``before_id``. ``owner=None`` means every owner's (an operator's view)."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, not {limit}")
        if not (math.isfinite(window) and window >= 0):
            raise ValueError(f"window must be a number of seconds >= 0, not {window!r}")
        params = {
            "owner": owner,
            "window": timedelta(seconds=window),
            "before_id": before_id,
            "limit": limit,
        }
        rows = await self._fetch("active_jobs" if owner is None else "active_owner_jobs", params)
        return [pgqueue.Job.from_row(r) for r in rows]

    async def queue_gauges(
        self, owner: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Like :meth:`pgqueue.Queue.queue_stats` but counting only unfinished
        jobs (pending, retrying, running), so it reads the small indexed part
        of the table and is cheap enough to poll. With ``owner``, only that
        owner's jobs (and only the queues where it has some). Queues by name;
        page with ``after`` = the last name seen."""
        params = {"owner": owner, "after": after, "limit": limit}
        return await self._fetch("queue_gauges" if owner is None else "owner_queue_gauges", params)
