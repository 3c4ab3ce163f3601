"""A small server-sent-events reader for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any

from aiohttp import ClientResponse


@dataclasses.dataclass
class Event:
    event: str
    id: str | None
    data: Any


class EventReader:
    """Parses an SSE response into :class:`Event`s; counts keepalive comments."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.comments = 0

    async def next(self, timeout: float = 5.0) -> Event:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Event:
        fields: dict[str, str] = {}
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    return Event(
                        fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])
                    )
                fields.clear()
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")

    async def until(self, predicate: Any, timeout: float = 10.0) -> list[Event]:
        """Events read until one satisfies ``predicate`` (included)."""
        seen: list[Event] = []

        async def read() -> list[Event]:
            while True:
                event = await self._next()
                seen.append(event)
                if predicate(event):
                    return seen

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(f"no matching event within {timeout} s; saw {seen}") from None

    async def quiet(self, seconds: float) -> list[Event]:
        """Every event that arrives within ``seconds``."""
        seen: list[Event] = []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._collect(seen), seconds)
        return seen

    async def _collect(self, seen: list[Event]) -> None:
        while True:
            seen.append(await self._next())
