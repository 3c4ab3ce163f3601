"""A stopping worker's background loops end even when one swallows a cancel.

On Python 3.11, ``asyncio.wait_for`` returns the inner result and drops the
cancel when both arrive together; a background loop around it then never
ends, and a worker waiting for it would never exit after SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from pgqueue._notifier import wait_event
from pgqueue._worker import _stop_tasks


async def test_a_loop_that_swallows_a_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn_loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what wait_for does when its call just completed

    task = asyncio.create_task(stubborn_loop(), name="stubborn")
    await asyncio.sleep(0)
    await _stop_tasks([task], within=5)
    assert task.cancelled()
    assert swallowed == 1


async def test_a_loop_that_never_stops_is_reported_not_waited_on_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="pgqueue.worker"):
        await _stop_tasks([task], within=0.3)
    assert not task.done()
    assert "did not stop within" in caplog.text and "immortal" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert task.done()


async def test_a_failed_loop_is_logged_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("loop broke")

    task = asyncio.create_task(broken(), name="broken")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="pgqueue.worker"):
        await _stop_tasks([task])
    assert "background task broken failed" in caplog.text
    assert "loop broke" in caplog.text


async def test_wait_reports_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True
