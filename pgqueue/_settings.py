"""The worker's settings: one frozen dataclass, validated when made.

Each field that ``pgqueue worker`` exposes carries its flag in its metadata
(``_flag``); pgqueue.cli builds the command's options from them, so a new
setting is one field here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigurationError


def _flag(
    name: str, help_text: str, *, type: type[Any], metavar: str | None = None
) -> dict[str, Any]:
    """The ``pgqueue worker`` option of a setting (pgqueue.cli builds the
    worker's options from these, so a new setting gets its flag here)."""
    return {"flag": name, "help": help_text, "type": type, "metavar": metavar}


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Tuning knobs of :class:`Worker`; every default suits production."""

    concurrency: int = dataclasses.field(
        default=10, metadata=_flag("--concurrency", "jobs at once (default 10)", type=int)
    )
    """Jobs run at once (async tasks on the loop, sync tasks in as many threads)."""
    poll_interval: float = dataclasses.field(
        default=1.0, metadata=_flag("--poll-interval", "idle poll seconds", type=float)
    )
    """Seconds between claims when idle and no NOTIFY arrives (jittered +/-20 %)."""
    heartbeat_interval: float = dataclasses.field(
        default=5.0, metadata=_flag("--heartbeat-interval", "seconds (default 5)", type=float)
    )
    """Seconds between heartbeats of all leases (one statement)."""
    stale_after: float = dataclasses.field(
        default=20.0, metadata=_flag("--stale-after", "lease lost after (20 s)", type=float)
    )
    """Seconds without heartbeat after which another worker rescues a lease."""
    rescue_interval: float = dataclasses.field(
        default=5.0, metadata=_flag("--rescue-interval", "rescue pass every (5 s)", type=float)
    )
    """Seconds between rescue passes (one worker at a time runs one)."""
    shutdown_grace: float = dataclasses.field(
        default=30.0, metadata=_flag("--shutdown-grace", "seconds (default 30)", type=float)
    )
    """Seconds running jobs get to finish after SIGTERM before being handed back."""
    listen: bool = dataclasses.field(
        default=True, metadata=_flag("--no-listen", "poll only, no LISTEN/NOTIFY", type=bool)
    )
    """Wake on LISTEN/NOTIFY; False polls only (e.g. behind a transaction pooler)."""
    progress_interval: float = 0.25
    """Seconds between progress writes of one job (reports in between coalesce)."""
    progress_history: int = dataclasses.field(
        default=100,
        metadata=_flag("--progress-history", "progress reports kept per job (100)", type=int),
    )
    """Progress reports kept per job in ``pgqueue.progress_history`` (0: none)."""
    retain_completed: float = dataclasses.field(
        default=86400.0,
        metadata=_flag("--retain-completed", "keep completed jobs (1 day)", type=float),
    )
    """Seconds a completed job (and its history) is kept before it is pruned."""
    retain_failed: float = dataclasses.field(
        default=7 * 86400.0,
        metadata=_flag("--retain-failed", "keep other ended jobs (7 days)", type=float),
    )
    """Seconds a job that ended any other way is kept (errors are kept longer)."""
    prune_interval: float = dataclasses.field(
        default=60.0,
        metadata=_flag("--prune-interval", "retention pass every (60 s; 0: off)", type=float),
    )
    """Seconds between retention passes (one worker at a time); 0 disables them."""
    vacuum_interval: float = dataclasses.field(
        default=5.0,
        metadata=_flag(
            "--vacuum-interval",
            "VACUUM pgqueue's tables when full of dead rows, checked every (5 s; 0: off)",
            type=float,
        ),
    )
    """Seconds between checks of pgqueue's tables for dead rows; one worker at a
    time VACUUMs those with at least 10,000 (and a tenth of their live rows).
    Every claim, completion and prune leaves dead row versions, and autovacuum
    visits a database about once a minute: under heavy load the table would
    bloat in between and claims slow down. 0 leaves it all to autovacuum (a
    role that does not own the tables is left to it anyway)."""
    periodic_interval: float = dataclasses.field(
        default=5.0,
        metadata=_flag(
            "--periodic-interval",
            "periodic scheduler: longest sleep between passes (5 s; 0: off in this worker)",
            type=float,
        ),
    )
    """Longest sleep of the periodic scheduler between passes (it wakes at each
    due tick anyway, by the database's clock); 0 disables it in this worker."""
    max_memory_mb: float = dataclasses.field(
        default=0.0,
        metadata=_flag(
            "--max-memory",
            "resident memory limit: over it, running attempts fail and the worker exits 1",
            metavar="MIB",
            type=float,
        ),
    )
    """Resident memory (MiB) above which the worker stops: its running attempts
    fail (charged, so a leaking job ends ``dead_letter`` instead of taking down
    worker after worker) and :meth:`Worker.run` raises
    :class:`MemoryLimitExceeded` so the process can be restarted. 0: no limit."""
    pool_size: int = 4
    """Database connections for claims, outcomes and heartbeats (tasks use none)."""
    startup_timeout: float = dataclasses.field(
        default=60.0,
        metadata=_flag("--startup-timeout", "wait for the database (60 s)", type=float),
    )
    """Seconds to wait for the database at start before giving up (once running,
    a worker rides out outages of any length)."""
    metrics_port: int | None = dataclasses.field(
        default=None,
        metadata=_flag(
            "--metrics-port",
            "serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
            metavar="PORT",
            type=int,
        ),
    )
    """Serve this worker's metrics in Prometheus text format at ``/metrics`` on
    this TCP port (0: any free port, see :attr:`Worker.metrics_address`);
    None: no metrics endpoint."""
    metrics_host: str = dataclasses.field(
        default="127.0.0.1",
        metadata=_flag(
            "--metrics-host", "address the metrics endpoint binds (default 127.0.0.1)", type=str
        ),
    )
    """Address the metrics endpoint binds (``0.0.0.0`` to scrape it from elsewhere)."""

    def __post_init__(self) -> None:
        positive = (
            "startup_timeout",
            "poll_interval",
            "heartbeat_interval",
            "stale_after",
            "rescue_interval",
            "progress_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if self.pool_size < 2:
            raise ConfigurationError("pool_size must be at least 2")
        if self.shutdown_grace < 0:
            raise ConfigurationError("shutdown_grace must not be negative")
        for name in (
            "progress_history",
            "retain_completed",
            "retain_failed",
            "prune_interval",
            "vacuum_interval",
            "periodic_interval",
            "max_memory_mb",
        ):
            if getattr(self, name) < 0:
                raise ConfigurationError(
                    f"{name} must not be negative, not {getattr(self, name)!r}"
                )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(f"metrics_port must be 0..65535, not {self.metrics_port!r}")
        if self.stale_after <= self.heartbeat_interval * 2:
            raise ConfigurationError("stale_after must exceed two heartbeat intervals")
