"""One LISTEN session kept alive, with one reconnect policy, for every part of
a process that must hear the database's announcements (a worker's wake-ups
and cancel notices, the status API's job events).

PostgreSQL delivers a notification only to sessions listening when it is
committed: what is announced while the session is down is lost. So
``on_connect`` runs each time LISTEN is in place again, for the caller to
catch up (a worker claims at once, the API resynchronises its clients).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from .errors import first_line

log = logging.getLogger("pgqueue.notifier")


def _nothing() -> None:
    return None


async def listen_forever(
    connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
    channels: Sequence[str],
    on_notify: Callable[[str, str], None],
    *,
    on_connect: Callable[[], None] = _nothing,
    on_lost: Callable[[], None] = _nothing,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
    logger: logging.Logger = log,
) -> None:
    """LISTEN on ``channels`` and call ``on_notify(channel, payload)`` for each
    notification, until cancelled. When the session cannot be opened or is
    lost, ``on_lost`` runs (once per session that was listening) and the next
    try comes after ``first_delay`` seconds, doubling up to ``max_delay``; a
    session that reaches LISTEN resets the delay and runs ``on_connect``."""
    delay = first_delay
    while True:
        listening = False
        try:
            conn = await connect()
            async with conn:
                for channel in channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                listening = True
                delay = first_delay
                on_connect()
                async for note in conn.notifies():
                    on_notify(note.channel, note.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = first_line(exc)
            what = "lost" if listening else "could not be opened"
            logger.warning(
                "LISTEN %s %s (%s); reconnecting in %.1f s", ",".join(channels), what, reason, delay
            )
        finally:
            if listening:
                on_lost()
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; whether it was set."""
    if math.isinf(timeout):
        await event.wait()
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
