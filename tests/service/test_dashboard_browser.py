"""The dashboard in a real browser: Debian's headless Chromium driven by
Playwright (never a downloaded browser). A worker runs in-process next to the
API; the page watches a job's progress bar reach 100 % over the event stream
and retries a failed job from the failures panel, then sees it complete."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

import pgqueue
from pgqueue_service import Settings, mint_token, running

from .conftest import SECRET, register_tasks

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.timeout(300)


def _install_chromium() -> str | None:
    """Install Debian's chromium if missing; the reason it is unavailable, or None."""
    if os.path.exists(CHROMIUM):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and apt-get cannot run here (install Debian's chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
            return f"{' '.join(argv)} failed: {tail}"
    return None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is still missing after apt-get"


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed")
    reason = _install_chromium()
    if reason:
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def dashboard(queue: pgqueue.Queue) -> AsyncIterator[str]:
    """The URL of the dashboard with a token in its fragment, as the demo prints
    it; a worker runs the API tests' tasks in the same process."""
    register_tasks(queue)
    worker = pgqueue.Worker(
        queue,
        queues=["api"],
        settings=pgqueue.WorkerSettings(concurrency=2, poll_interval=0.2, progress_interval=0.05),
    )
    runner = asyncio.create_task(worker.run())
    try:
        settings = Settings(secret=SECRET)
        async with running(queue, settings, host="127.0.0.1", port=0, close_queue=False) as url:
            yield f"{url}/#token={mint_token(SECRET, 'alice')}"
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)


async def test_progress_bar_reaches_100_and_retry_runs_a_failed_job_again(
    browser: Any, dashboard: str, queue: pgqueue.Queue
) -> None:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(dashboard)
    await page.wait_for_selector("#live.on", timeout=15_000)  # the event stream is open
    assert "#token=" not in page.url  # the token left the address bar for sessionStorage

    # A job reporting progress in 5 steps: the bar must move through them to 100 %.
    job_id = await queue.enqueue("steps", {"n": 5, "pause": 0.4}, owner="alice")
    bar = page.locator(f'#active tr[data-job-id="{job_id}"] [role=progressbar]')
    seen: set[int] = set()
    for _ in range(200):
        if await bar.count():
            seen.add(int(await bar.first.get_attribute("aria-valuenow") or 0))
        if 100 in seen:
            break
        await asyncio.sleep(0.05)
    assert 100 in seen, seen
    assert any(0 < pct < 100 for pct in seen), f"no intermediate progress seen: {seen}"
    status = page.locator(f'#active tr[data-job-id="{job_id}"] .status')
    await status.filter(has_text="completed").wait_for(timeout=10_000)

    # A job that fails once: it shows in the failures panel with its error; Retry runs it again.
    failing = await queue.enqueue("fails_once", {}, owner="alice")
    row = page.locator(f'#failures tr[data-job-id="{failing}"]')
    await row.wait_for(timeout=15_000)
    assert "the first attempt always fails" in await row.inner_text()
    await row.locator("button.retry").click()
    rerun = page.locator(f'#active tr[data-job-id="{failing}"] .status')
    await rerun.filter(has_text="completed").wait_for(timeout=15_000)
    job = await queue.get_job(failing)
    assert job is not None and job.status is pgqueue.JobStatus.COMPLETED and job.attempts == 2
    await row.wait_for(state="detached", timeout=10_000)  # gone from the failures panel
    assert errors == []
