"""Wiring the bridge into a procrastinate App, and recovering the jobs of
stalled procrastinate workers."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, LiteralString

from ._middleware import Middleware
from ._progress import DEFAULT_INTERVAL

log = logging.getLogger("pgqueue.procrastinate")

Policy = Literal["retry", "fail"]
POLICIES: tuple[Policy, ...] = ("retry", "fail")

RECOVERY_TASK = "pgqueue.recover_stalled"
"""The name of the periodic task :func:`attach` registers."""

RECOVER_QUERY: LiteralString = (
    "SELECT job_id, action FROM pgqueue_procrastinate.recover_stalled("
    "make_interval(secs => %(seconds)s::double precision), %(policy)s::text,"
    " %(max_attempts)s::integer)"
)


def check_recovery(
    stalled_after: object,
    policy: object,
    *,
    allow_zero: bool = False,
    max_attempts: object = None,
) -> float:
    """``stalled_after`` as seconds, or ValueError naming what is wrong."""
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ValueError(f"max_attempts must be an integer >= 1 or None, not {max_attempts!r}")
    if (
        isinstance(stalled_after, bool)
        or not isinstance(stalled_after, int | float)
        or not math.isfinite(stalled_after)
        or stalled_after < 0
        or (stalled_after == 0 and not allow_zero)
    ):
        bound = ">= 0 (0: no recovery)" if allow_zero else "> 0"
        raise ValueError(f"stalled_after must be seconds {bound}, not {stalled_after!r}")
    if policy not in POLICIES:
        raise ValueError(f"the stalled-job policy must be 'retry' or 'fail', not {policy!r}")
    return float(stalled_after)


async def recover_stalled(
    app_or_connector: Any,
    *,
    stalled_after: float = 60.0,
    policy: Policy = "retry",
    max_attempts: int | None = None,
) -> list[tuple[int, str]]:
    """One recovery pass: procrastinate jobs left ``doing`` by a worker that is
    gone or has not heartbeated for ``stalled_after`` seconds are retried
    (``policy="retry"``) or failed (``"fail"``) through procrastinate's own
    functions; with ``max_attempts``, a job that has had that many attempts
    is failed instead of retried (a job that kills its worker every time
    does not loop). Returns ``(procrastinate job id, action)`` pairs. Uses
    the app's connector (open it first)."""
    seconds = check_recovery(stalled_after, policy, max_attempts=max_attempts)
    connector = getattr(app_or_connector, "connector", app_or_connector)
    rows = await connector.execute_query_all_async(
        RECOVER_QUERY, seconds=seconds, policy=policy, max_attempts=max_attempts
    )
    recovered = [(int(r["job_id"]), str(r["action"])) for r in rows]
    for job_id, action in recovered:
        log.warning("procrastinate job %s of a stalled worker: %s", job_id, action)
    return recovered


def attach(
    app: Any,
    *,
    stalled_after: float = 60.0,
    on_stalled: Policy = "retry",
    stalled_max_attempts: int | None = None,
    progress_interval: float = DEFAULT_INTERVAL,
    recover_every: str = "* * * * *",
    recover_queue: str | None = None,
) -> Any:
    """Bridge procrastinate ``app`` to pgqueue and return it.

    Adds the bridge's middleware (outermost, so it sees the outcome
    procrastinate records) to ``app.worker_defaults["worker_middleware"]``,
    which ``procrastinate worker`` and ``app.run_worker_async()`` use unless
    given a ``worker_middleware`` of their own. With ``stalled_after > 0``,
    registers the periodic task ``pgqueue.recover_stalled`` (cron
    ``recover_every``, on ``recover_queue``, default procrastinate's default
    queue): jobs of workers stalled that long are retried, or failed with
    ``on_stalled="fail"``; with ``stalled_max_attempts``, a job that has had
    that many attempts is failed instead of retried. Calling it again
    replaces the middleware's settings; the recovery task keeps its first
    registration.
    """
    check_recovery(stalled_after, on_stalled, allow_zero=True, max_attempts=stalled_max_attempts)
    if (
        isinstance(progress_interval, bool)
        or not isinstance(progress_interval, int | float)
        or not math.isfinite(progress_interval)
        or progress_interval < 0
    ):
        raise ValueError(f"progress_interval must be seconds >= 0, not {progress_interval!r}")
    if not isinstance(recover_every, str):
        raise ValueError(f"recover_every must be a cron expression, not {recover_every!r}")
    from croniter import croniter

    if not croniter.is_valid(recover_every):
        raise ValueError(f"recover_every is not a valid cron expression: {recover_every!r}")
    if not hasattr(app, "worker_defaults") or not hasattr(app, "periodic"):
        raise TypeError(f"attach() takes a procrastinate App, not {app!r}")

    defaults = app.worker_defaults
    others = [m for m in defaults.get("worker_middleware") or [] if not isinstance(m, Middleware)]
    # a new list: the one given to App(worker_defaults=...) may be shared
    defaults["worker_middleware"] = [Middleware(progress_interval=progress_interval), *others]

    if stalled_after > 0 and RECOVERY_TASK not in app.tasks:
        seconds, policy, limit = float(stalled_after), on_stalled, stalled_max_attempts

        async def recover(timestamp: int) -> dict[str, Any]:
            recovered = await recover_stalled(
                app, stalled_after=seconds, policy=policy, max_attempts=limit
            )
            return {"recovered": [{"job_id": j, "action": a} for j, a in recovered]}

        queue = {"queue": recover_queue} if recover_queue else {}
        task = app.task(name=RECOVERY_TASK, **queue)(recover)
        app.periodic(cron=recover_every, periodic_id="pgqueue")(task)
    return app
