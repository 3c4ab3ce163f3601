"""Job change events: one LISTEN connection per process, fanned out to every
SSE client, with a replay buffer for ``Last-Event-ID``.

The database announces each status or progress change on channel
``pgqueue_job`` (JSON ``{"id", "status", "progress", "queue", "owner",
"batch_id"}``); the owner decides who sees the change, and a payload without
one reaches admins only. The :class:`Broadcaster` numbers the
changes it receives ``<epoch>-<seq>``: ``epoch`` is random per process and per
LISTEN session, ``seq`` counts up. The last ``event_buffer`` events are kept,
so a client reconnecting with ``Last-Event-ID`` gets exactly the events it
missed; when that is impossible (another process, a restart, a LISTEN
reconnect, or too long away) the stream starts with a snapshot instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any

import psycopg

import pgqueue
from pgqueue._notifier import listen_forever

from ._auth import Principal

log = logging.getLogger("pgqueue.service.events")

CHANNEL = "pgqueue_job"
_TERMINAL = frozenset(s.value for s in pgqueue.TERMINAL_STATUSES)
# The LISTEN connection: how long one connection attempt may take, and the
# longest pause between attempts (so events resume soon after an outage).
_CONNECT_TIMEOUT = 5
_MAX_RECONNECT_DELAY = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class JobEvent:
    """One change of one job, as numbered by this process."""

    seq: int
    job_id: int
    status: str
    progress: int
    queue: str
    owner: str | None
    batch_id: int | None

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.job_id,
            "status": self.status,
            "progress": self.progress,
            "queue": self.queue,
        }
        if self.batch_id is not None:
            out["batch_id"] = self.batch_id
        return out


class StreamClosed(Exception):
    """The subscription ended (slow client, LISTEN lost, shutdown); the client
    should reconnect."""


class Subscription:
    """The events one SSE client will get: those of jobs it may see."""

    def __init__(self, principal: Principal, limit: int) -> None:
        self.principal = principal
        self._limit = limit
        self._items: collections.deque[JobEvent] = collections.deque()
        self._ready = asyncio.Event()
        self.closed: str | None = None

    def push(self, event: JobEvent) -> None:
        if self.closed is not None or not self.principal.may_see(event.owner):
            return
        if len(self._items) >= self._limit:
            self.close("the client fell too far behind")
            return
        self._items.append(event)
        self._ready.set()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._ready.set()

    async def next(self, timeout: float) -> list[JobEvent]:
        """The events waiting (empty after ``timeout`` s); :class:`StreamClosed` once closed."""
        if not self._items and self.closed is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        self._ready.clear()
        items = list(self._items)
        self._items.clear()
        if not items and self.closed is not None:
            raise StreamClosed(self.closed)
        return items


class Broadcaster:
    """Runs the LISTEN loop and hands each job change to the subscriptions
    that may see it. Also counts finished jobs for ``/metrics``."""

    def __init__(
        self,
        queue: pgqueue.Queue,
        *,
        buffer_size: int = 10_000,
        subscriber_limit: int = 1_000,
        reconnect_delay: float = 1.0,
    ) -> None:
        self._queue = queue
        self._subscriber_limit = subscriber_limit
        self._reconnect_delay = reconnect_delay
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self._buffer: collections.deque[JobEvent] = collections.deque(maxlen=buffer_size)
        self._subscriptions: set[Subscription] = set()
        self._raw: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self.connected = False
        # Counters since process start, for /metrics.
        self.notifications = 0
        self.finished: collections.Counter[tuple[str, str]] = collections.Counter()
        self.retries: collections.Counter[str] = collections.Counter()
        self.queues_seen: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, *, wait: float = 10.0) -> None:
        """Start listening; wait up to ``wait`` s for the first LISTEN to be in place
        (the API still starts if the database is down: /readyz reports it)."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="pgqueue-api-listen"),
            asyncio.create_task(self._dispatch(), name="pgqueue-api-dispatch"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), wait)

    def close_streams(self, reason: str) -> None:
        for sub in list(self._subscriptions):
            sub.close(reason)

    async def stop(self) -> None:
        self.close_streams("the server is shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- subscriptions ------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def event_id(self, seq: int | None = None) -> str:
        return f"{self.epoch}-{self.seq if seq is None else seq}"

    def subscribe(
        self, principal: Principal, last_event_id: str | None = None
    ) -> tuple[Subscription, list[JobEvent] | None]:
        """A new subscription, and the events the client missed since
        ``last_event_id`` (None when they cannot be replayed: send a snapshot).
        Synchronous, so no event can fall between the replay and the subscription."""
        sub = Subscription(principal, self._subscriber_limit)
        self._subscriptions.add(sub)
        return sub, self._replay(principal, last_event_id)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def _replay(self, principal: Principal, last_event_id: str | None) -> list[JobEvent] | None:
        if not last_event_id:
            return None
        epoch, _, seq_text = last_event_id.strip().partition("-")
        if epoch != self.epoch or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if seq > self.seq:
            return None
        oldest = self._buffer[0].seq if self._buffer else self.seq + 1
        if seq + 1 < oldest:
            return None  # some of the missed events were already dropped
        return [e for e in self._buffer if e.seq > seq and principal.may_see(e.owner)]

    # -- the loops ----------------------------------------------------------------------

    async def _listen(self) -> None:
        lost = False

        def connected() -> None:
            nonlocal lost
            # A client that subscribed while we were not listening got a
            # snapshot that may predate changes no notification told us of:
            # resync now that nothing can be missed any more.
            self._resync()
            if lost:
                log.info("listening on %s again", CHANNEL)
            lost = False
            self.connected = True
            self._listening.set()

        def disconnected() -> None:
            nonlocal lost
            self._resync()
            lost = True
            self.connected = False

        async def connect() -> psycopg.AsyncConnection[Any]:
            # PGQUEUE_LISTEN_DSN when set: LISTEN needs a session of its own,
            # which a pooler in transaction mode does not give.
            return await self._queue.listen_connection(connect_timeout=_CONNECT_TIMEOUT)

        await listen_forever(
            connect,
            (CHANNEL,),
            lambda _channel, payload: self._raw.put_nowait(payload),
            on_connect=connected,
            on_lost=disconnected,
            first_delay=self._reconnect_delay,
            max_delay=_MAX_RECONNECT_DELAY,
            logger=log,
        )

    def _resync(self) -> None:
        """Changes made while not listening are unknown: start a new epoch (so old
        event ids ask for a snapshot) and end the streams so clients reconnect."""
        self.epoch = secrets.token_hex(4)
        self._buffer.clear()
        self.close_streams("the server lost its database notifications")

    async def _dispatch(self) -> None:
        while True:
            batch = [await self._raw.get()]
            while not self._raw.empty() and len(batch) < 1000:
                batch.append(self._raw.get_nowait())
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - never let one bad batch stop the loop
                log.exception("could not publish %d job events", len(batch))

    async def _publish(self, payloads: Iterable[str]) -> None:
        notes = []
        for payload in payloads:
            try:
                note = json.loads(payload)
                notes.append(
                    (
                        int(note["id"]),
                        str(note["status"]),
                        int(note.get("progress") or 0),
                        str(note.get("queue") or ""),
                        note.get("owner"),
                        note.get("batch_id"),
                    )
                )
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed %s payload: %r", CHANNEL, payload[:200])
        self.notifications += len(notes)
        for job_id, status, progress, queue, owner, batch_id in notes:
            self.seq += 1
            event = JobEvent(
                seq=self.seq,
                job_id=job_id,
                status=status,
                progress=progress,
                queue=queue,
                owner=owner if isinstance(owner, str) else None,
                batch_id=batch_id if isinstance(batch_id, int) else None,
            )
            self._count(event)
            self._buffer.append(event)
            for sub in list(self._subscriptions):
                sub.push(event)

    def _count(self, event: JobEvent) -> None:
        # Progress changes only happen while running, so a notification with a
        # terminal or retrying status is exactly one transition into it.
        self.queues_seen.add(event.queue)
        if event.status == "retrying":
            self.retries[event.queue] += 1
        elif event.status in _TERMINAL:
            self.finished[(event.queue, event.status)] += 1
