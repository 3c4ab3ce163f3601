"""pgqueue: a job queue for Python that lives entirely in PostgreSQL.

Jobs are rows of ``pgqueue.jobs``; every state transition is a stored SQL
function that checks the job's current state and the caller's lease, so no
interleaving of workers, rescuers and API calls can corrupt a job.

    import pgqueue

    queue = pgqueue.Queue()                 # PGQUEUE_DSN, else embedded PostgreSQL

    @queue.task(queue="images", max_attempts=5, timeout=30)
    async def resize(ctx: pgqueue.JobContext, image_id: int) -> dict:
        ctx.progress(50, "halfway")
        return {"image_id": image_id}

    job_id = await resize.enqueue(image_id=1)
    result = await queue.wait(job_id, timeout=60)

Run workers with ``pgqueue worker --app myapp.tasks:queue``.
"""

from ._context import JobContext
from ._job import Attempt, Batch, Job, ProgressEntry
from ._migrate import current_revision, head_revision
from ._migrate import upgrade as migrate
from ._queue import BoundTask, EnqueueOptions, Queue, Task
from ._settings import WorkerSettings
from ._status import TERMINAL_STATUSES, BatchStatus, JobStatus
from ._worker import Worker, run_worker
from .errors import (
    BatchFailed,
    BatchNotFound,
    ConfigurationError,
    DatabaseUnavailable,
    InvalidJobError,
    InvalidTransition,
    InvariantViolation,
    JobFailed,
    JobNotFound,
    MemoryLimitExceeded,
    NonRetryableError,
    NotFound,
    PgQueueError,
    StaleLease,
    UnknownTaskError,
)

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATUSES",
    "Attempt",
    "Batch",
    "BatchFailed",
    "BatchNotFound",
    "BatchStatus",
    "BoundTask",
    "ConfigurationError",
    "DatabaseUnavailable",
    "EnqueueOptions",
    "InvalidJobError",
    "InvalidTransition",
    "InvariantViolation",
    "Job",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "MemoryLimitExceeded",
    "NonRetryableError",
    "NotFound",
    "PgQueueError",
    "ProgressEntry",
    "Queue",
    "StaleLease",
    "Task",
    "UnknownTaskError",
    "Worker",
    "WorkerSettings",
    "__version__",
    "current_revision",
    "head_revision",
    "migrate",
    "run_worker",
]
