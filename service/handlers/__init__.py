"""One module of endpoints per resource; :data:`ALL` is what the app mounts."""

from __future__ import annotations

from .._routes import Routes
from . import batches, events, jobs, periodic, queues, system

ALL: list[Routes] = [
    jobs.routes,
    batches.routes,
    queues.routes,
    periodic.routes,
    events.routes,
    system.routes,
]
