"""The worker middleware: progress for the running job, and its outcome
staged for the bridge's triggers before procrastinate records it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .._queue import DEFAULT_MAX_PAYLOAD_BYTES, json_text
from ._progress import DEFAULT_INTERVAL, RunningJob, _current

log = logging.getLogger("pgqueue.procrastinate")

STAGE_QUERY = (
    "SELECT pgqueue_procrastinate.stage("
    "%(job)s::bigint, %(worker)s::bigint, %(result)s::jsonb, %(error)s::text)"
)

MAX_ERROR_CHARS = 16_000  # as pgqueue's own worker keeps
MAX_REPR_CHARS = 4_000  # a result that is not JSON is kept as this much of its repr


def result_json(value: Any, task_name: str) -> str:
    """The JSON text stored as the mirror's result. A value JSON cannot hold
    (or pgqueue would refuse: too large, NaN, NUL) is stored as its ``repr``,
    with a warning: the job still succeeds, as it did in procrastinate."""
    what = f"the result of procrastinate task {task_name!r}"
    try:
        return json_text(value, what, DEFAULT_MAX_PAYLOAD_BYTES)
    except (TypeError, ValueError) as exc:
        reason = str(exc)
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not fail the job either
        text = f"<{type(value).__name__} whose repr raised {type(exc).__name__}>"
    if len(text) > MAX_REPR_CHARS:
        text = text[:MAX_REPR_CHARS] + "..."
    text = text.replace("\x00", "\\x00")
    log.warning("%s is not stored as JSON (%s): its repr is stored instead", what, reason)
    return json_text(text, what, DEFAULT_MAX_PAYLOAD_BYTES)


def error_text(exc: BaseException) -> str:
    """``Type: message``, after the line of the frame that raised it (the
    last line is the exception, as in a traceback)."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    tb = exc.__traceback__
    if tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        text = f'File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n{text}'
    if len(text) > MAX_ERROR_CHARS:
        text = "..." + text[-MAX_ERROR_CHARS:]
    return text.replace("\x00", "\\x00")


def _forget_stale_abort(worker: Any, job_id: int) -> None:
    """Drop an abort request an earlier attempt of this job left in the worker.

    procrastinate's worker keeps abort requests by job id, not by attempt
    (``Worker._job_ids_to_abort``), and clears the id's entry as the attempt
    ends. An abort poll or notification handled after that clearing, while
    the ended attempt is still among the running ones, writes the entry back,
    and the job's next attempt (a replay of a job cancelled while it ran)
    then aborts at its first ``should_abort``. An attempt that is starting has
    no abort request of its own to lose: one made for it is still in the
    database (``abort_requested``), and the worker's next poll applies it."""
    requests = getattr(worker, "_job_ids_to_abort", None)
    if not isinstance(requests, dict):
        return
    reason = requests.get(job_id)
    # a shutdown's request (the other reason) is the worker's own, and current
    if getattr(reason, "value", reason) == "user_request":
        del requests[job_id]


def _never_deletes(worker: Any) -> bool:
    condition = getattr(worker, "delete_jobs", None)
    return getattr(condition, "value", condition) == "never"


class Middleware:
    """A procrastinate worker middleware (``async (call_next, context,
    worker)``) that bridges each job to its pgqueue mirror:

    - :func:`pgqueue.procrastinate.progress` works inside the task;
    - the task's return value (or its error) is staged before procrastinate
      records the outcome, so the bridge's trigger applies both in one
      transaction. Staging never changes the job's outcome: a database error
      is logged, a result JSON cannot hold is stored as its ``repr``.

    It uses only the app's own connector (procrastinate's pool), never a pool
    of pgqueue's.
    """

    def __init__(self, *, progress_interval: float = DEFAULT_INTERVAL) -> None:
        self.progress_interval = progress_interval

    def __repr__(self) -> str:
        return f"pgqueue.procrastinate.Middleware(progress_interval={self.progress_interval})"

    async def __call__(
        self, call_next: Callable[[], Awaitable[Any]], context: Any, worker: Any
    ) -> Any:
        job = context.job
        _forget_stale_abort(worker, job.id)
        running = RunningJob(
            job_id=job.id,
            worker_id=worker.worker_id,
            connector=context.app.connector,
            loop=asyncio.get_running_loop(),
            interval=self.progress_interval,
        )
        token = _current.set(running)
        try:
            try:
                result = await call_next()
            except BaseException as exc:  # CancelledError and JobAborted too: re-raised as is
                await _absorbing_cancel(self._settle(running, job.task_name, None, exc))
                raise
            skip = result is None and _never_deletes(worker)
            await _absorbing_cancel(self._settle(running, job.task_name, result, None, skip=skip))
            return result
        finally:
            _current.reset(token)

    async def _settle(
        self,
        running: RunningJob,
        task_name: str,
        result: Any,
        exc: BaseException | None,
        *,
        skip: bool = False,
    ) -> None:
        try:
            await running.flush()
        except Exception:
            log.exception(
                "could not write the last progress of procrastinate job %s", running.job_id
            )
        if skip:
            # The row stays (delete_jobs is never) and there is no value to
            # keep: the trigger reads success from procrastinate's status.
            return
        if exc is None:
            # None is stored as SQL NULL, as when the trigger reads success from
            # procrastinate's status without a staged outcome (skip above)
            text = None if result is None else result_json(result, task_name)
            params = {"result": text, "error": None}
        else:
            params = {"result": None, "error": error_text(exc)}
        try:
            await running.connector.execute_query_async(
                STAGE_QUERY, job=running.job_id, worker=running.worker_id, **params
            )
        except Exception as error:
            log.error(
                "could not stage the outcome of procrastinate job %s for pgqueue "
                "(its mirror may miss its result or error): %s",
                running.job_id,
                error,
            )


async def _absorbing_cancel(settle: Awaitable[None]) -> None:
    """Run ``settle`` to its end even if the job is cancelled meanwhile. The
    task has already ended, so its outcome stands: the late cancel is absorbed
    (and uncancelled), or the staged outcome and procrastinate's would differ."""
    inner = asyncio.ensure_future(settle)
    absorbed = 0
    while not inner.done():
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            absorbed += 1
    current = asyncio.current_task()
    for _ in range(absorbed):
        if current is not None:
            current.uncancel()
    inner.result()  # _settle logs its own errors; anything else is a defect, raised


middleware = Middleware()
"""The bridge's worker middleware with default settings; :func:`attach` adds
one configured with its own ``progress_interval``."""
