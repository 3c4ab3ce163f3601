"""The completer: writes how each attempt ended.

The worker's executor turns one attempt into an :data:`Outcome` value; the
completer writes it, in one ``match`` over the outcomes (the shape of Oban's
executor ``ack_event``). Successes are batched: they wait in a list that one
loop writes with a single ``complete_many`` per round trip, so a busy worker
pays one statement for many completions. Every other outcome is written at
once. Whatever happens, the lease is then forgotten (its slot and heartbeat
end): a lease whose outcome could not be written is left for rescue.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable

import psycopg
from psycopg.types.json import Jsonb

from ._database import Failure, Lease, Release, WorkerDatabase
from ._maintenance import reason
from .errors import StaleLease

log = logging.getLogger("pgqueue.worker")

# SQLSTATE classes of errors a result's content causes: data exceptions (22),
# integrity violations (23), program limits exceeded (54). Only these may fail
# a job whose task succeeded; any other error says nothing about the result.
_CONTENT_ERROR_CLASSES = frozenset({"22", "23", "54"})


@dataclasses.dataclass(frozen=True, slots=True)
class Success:
    """The task returned; ``payload`` is its result as stored JSON."""

    payload: Jsonb


@dataclasses.dataclass(frozen=True, slots=True)
class Stopped:
    """The worker stopped the attempt (lease lost, job cancelled): nothing to
    write, the database already moved the job on."""

    reason: str


Outcome = Success | Failure | Release | Stopped


_MAX_ERROR_CHARS = 16_000


def format_error(exc: BaseException) -> str:
    """An attempt's error as stored: its traceback, the end kept if long."""
    text = "".join(traceback.format_exception(exc)).strip()
    if len(text) > _MAX_ERROR_CHARS:
        text = "..." + text[-_MAX_ERROR_CHARS:]
    return text


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a database error, or of the one it was translated from."""
    while exc is not None:
        if isinstance(exc, psycopg.Error) and exc.sqlstate:
            return exc.sqlstate
        exc = exc.__cause__
    return None


def caused_by_content(exc: BaseException) -> bool:
    """Whether the database refused the statement for the values it was given
    (as opposed to the connection, the session or the protocol failing)."""
    state = sqlstate(exc)
    return state is not None and state[:2] in _CONTENT_ERROR_CLASSES


class Completer:
    """Writes outcomes for one worker; :meth:`run` is its batching loop."""

    def __init__(
        self,
        database: Callable[[], WorkerDatabase],
        *,
        forget: Callable[[Lease], None],
        held: Callable[[Lease], bool],
        giving_up: Callable[[], bool],
        retry_for: float,
    ) -> None:
        self._db = database
        self._forget = forget
        self._held = held
        self._giving_up = giving_up
        self._retry_for = retry_for
        self._successes: list[tuple[Lease, Jsonb]] = []
        self._ready = asyncio.Event()
        self._flushing = False
        self.outcomes: collections.Counter[str] = collections.Counter()
        """Attempts by how they ended as far as this worker wrote it:
        ``completed``, the job's status after a failure (``retrying``,
        ``failed``, ``dead_letter``, ``timeout``...), ``released`` (handed
        back), ``stopped`` (lease lost or cancelled), ``refused`` (a late
        outcome the database turned down) or ``unrecorded`` (left for rescue)."""

    @property
    def busy(self) -> bool:
        """Successes wait to be written, or are being written."""
        return bool(self._successes) or self._flushing

    async def record(self, lease: Lease, outcome: Outcome) -> None:
        """Write one attempt's outcome (a success only joins the next batch)."""
        match outcome:
            case Success(payload):
                self._successes.append((lease, payload))
                self._ready.set()
                return
            case Stopped(why):
                log.info("job %s attempt %s stopped: %s", lease.job_id, lease.attempt, why)
                self.outcomes["stopped"] += 1
                self._forget(lease)
                return
        try:
            match outcome:
                case Failure():
                    status = await self._db().fail(lease, outcome)
                    log.info("job %s attempt %s failed -> %s", lease.job_id, lease.attempt, status)
                    self.outcomes[status.value] += 1
                case Release(run_in):
                    await self._db().release(lease, run_in)
                    self.outcomes["released"] += 1
        except StaleLease as exc:
            self.outcomes["refused"] += 1
            log.warning("late outcome of job %s discarded: %s", lease.job_id, exc)
        except Exception:
            self.outcomes["unrecorded"] += 1
            log.exception("could not record outcome of job %s; it will be rescued", lease.job_id)
        finally:
            self._forget(lease)

    def wake(self) -> None:
        """Write waiting successes now (a stopping worker does not wait)."""
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._successes:
                batch, self._successes = self._successes, []
                self._flushing = True
                try:
                    await self._flush(batch)
                finally:
                    self._flushing = False

    async def _flush(self, batch: list[tuple[Lease, Jsonb]]) -> None:
        applied = await self._complete_retrying(batch)
        if applied is None:
            for lease, _ in batch:
                self.outcomes["unrecorded"] += 1
                self._forget(lease)  # no more heartbeats: rescue takes the job
            return
        for lease, _ in batch:
            if lease in applied:
                self.outcomes["completed"] += 1
            elif self._held(lease):
                self.outcomes["refused"] += 1
                log.warning(
                    "late result of job %s attempt %s discarded: the lease is no longer held",
                    lease.job_id,
                    lease.attempt,
                )
            self._forget(lease)

    async def _complete_retrying(self, batch: list[tuple[Lease, Jsonb]]) -> set[Lease] | None:
        """Write a batch of results: the leases completed, or None when they could
        not be written and are left for rescue.

        Only an error the results' content causes can fail a job here: the
        batch is then written item by item so that one bad result cannot hold
        back the others. Any other error (the session, a pooler or the protocol
        failing) says nothing about the results: the batch is tried again with
        backoff while its leases are kept alive by the heartbeat, for up to a
        lease timeout; after that, or once the worker must stop, its jobs are
        left to rescue rather than failed."""
        delay = 0.05
        deadline = time.monotonic() + self._retry_for
        while True:
            try:
                return await self._db().complete_many(batch)
            except Exception as exc:
                if caused_by_content(exc):
                    log.warning(
                        "batch of %d completions refused (%s); writing them one by one",
                        len(batch),
                        reason(exc),
                    )
                    return await self._complete_one_by_one(batch)
                if self._giving_up() or time.monotonic() + delay > deadline:
                    log.error(
                        "could not record the results of %d jobs (%s); they will be rescued",
                        len(batch),
                        reason(exc),
                    )
                    return None
                log.warning(
                    "could not record the results of %d jobs (%s); retrying in %.1fs",
                    len(batch),
                    reason(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _complete_one_by_one(self, batch: list[tuple[Lease, Jsonb]]) -> set[Lease]:
        applied: set[Lease] = set()
        for lease, payload in batch:
            try:
                applied |= await self._db().complete_many([(lease, payload)])
            except Exception as exc:
                if caused_by_content(exc):
                    failure = Failure(format_error(exc), False, False, None)
                    await self.record(lease, failure)
                else:
                    log.error(
                        "could not record the result of job %s (%s); it will be rescued",
                        lease.job_id,
                        reason(exc),
                    )
                    self.outcomes["unrecorded"] += 1
                    self._forget(lease)
        return applied
