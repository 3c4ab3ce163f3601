"""A worker's maintenance duties, one module each: the worker runs each as a
background loop beside its claiming and running of jobs.

- :mod:`.rescuer`: running jobs whose lease went stale go back to be retried;
- :mod:`.pruner`: finished jobs past their retention are deleted;
- :mod:`.vacuumer`: pgqueue's tables are vacuumed when full of dead rows;
- :mod:`.scheduler`: the due ticks of periodic tasks are enqueued;
- :mod:`.memory`: the worker stops when it goes over its memory limit.

Every pass that runs and every pass that fails is counted in :class:`Tally`
(the worker's ``/metrics``); a failure is also logged at WARNING with its
cause, since a duty that keeps failing must not go unnoticed. The database
makes each duty safe to run in every worker at once (one rescuer, pruner and
vacuumer at a time by advisory lock; each periodic tick once by primary key).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random

from ..errors import first_line

log = logging.getLogger("pgqueue.worker")


@dataclasses.dataclass
class Tally:
    """Maintenance passes run and failed, by duty."""

    passes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def failed(self, duty: str, exc: BaseException) -> None:
        """Count a failed pass of ``duty`` and say why (the next pass tries again)."""
        self.failures[duty] += 1
        log.warning("%s pass failed: %s", duty, reason(exc))


def reason(exc: BaseException) -> str:
    """One line naming an error, for a log message."""
    return f"{type(exc).__name__}: {first_line(exc)[:200]}" if str(exc).strip() else repr(exc)


def jitter(seconds: float, spread: float = 0.2) -> float:
    """``seconds`` give or take ``spread`` of it, so workers do not act in step."""
    return seconds * random.uniform(1 - spread, 1 + spread)
