"""The procrastinate bridge: procrastinate jobs shown, followed and grouped by pgqueue.

Every procrastinate job gets a mirror row in ``pgqueue.jobs``, created and
moved by triggers on procrastinate's tables (``pgqueue procrastinate install``,
after ``procrastinate schema --apply``); pgqueue's workers never run it. This
package is the Python side::

    import pgqueue.procrastinate as bridge

    app = bridge.attach(procrastinate.App(connector=...))   # middleware + recovery

    @app.task
    def resize(image_id: int) -> dict:
        bridge.progress(50, "halfway")
        return {"image_id": image_id}

    job_id = bridge.defer(resize, owner="alice", image_id=1)       # the pgqueue job id
    batch = bridge.defer_batch(resize, [{"image_id": i} for i in range(10)])

It needs the ``procrastinate`` extra (``pip install 'pgqueue[procrastinate]'``)
for everything but the install commands; importing it does not import
procrastinate.
"""

from __future__ import annotations

from .._extras import procrastinate as require
from ._attach import RECOVERY_TASK, attach, recover_stalled
from ._defer import DeferredBatch, defer, defer_async, defer_batch, defer_batch_async
from ._install import EXPECTED_CATALOG, Catalog
from ._middleware import Middleware, middleware
from ._progress import progress

__all__ = [
    "EXPECTED_CATALOG",
    "RECOVERY_TASK",
    "Catalog",
    "DeferredBatch",
    "Middleware",
    "attach",
    "defer",
    "defer_async",
    "defer_batch",
    "defer_batch_async",
    "middleware",
    "progress",
    "recover_stalled",
    "require",
]
