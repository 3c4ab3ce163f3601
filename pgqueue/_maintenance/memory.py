"""The memory guard: once the worker's resident memory goes over its limit,
``exceeded`` is called (the worker fails its running attempts, which are the
suspects, charged as an OOM kill would be, and stops)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


async def run(limit_mib: float, exceeded: Callable[[float], None]) -> None:
    """Check once a second; call ``exceeded(resident_mib)`` once and return."""
    while True:
        await asyncio.sleep(1.0)
        rss = resident_mib()
        if rss is not None and rss > limit_mib:
            exceeded(rss)
            return


def resident_mib() -> float | None:
    """This process's resident memory in MiB (Linux /proc), or None if unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
