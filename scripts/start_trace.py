"""Where the bench's start latency goes: one idle worker, jobs enqueued 20 ms apart,
each sample's path from the enqueue call to its task body timed in steps.

    .venv/bin/python scripts/start_trace.py --dsn postgresql://postgres@127.0.0.1:5432/test

Runs what ``pgqueue bench``'s latency step runs (the bench's client and app, a
``pgqueue worker`` process at its default concurrency with ``--poll-interval 5``,
so a NOTIFY wakes it; each job enqueued 20 ms after the last call returned), in
a scratch database on that server, dropped at the end. The worker is this
script in a child process, which stamps (wall clock, the same on both sides)
each NOTIFY it receives and each claim call's start and end; the task starts
are the bench probe's own stamps.
It prints the median and the 95th percentile (as the bench takes it) of each
step, in ms:

- the enqueue call (``Queue.enqueue``, start to return);
- enqueue call start -> the NOTIFY reaching the worker;
- the NOTIFY -> the claim call starting;
- the claim call (the worker's database seam, Python included);
- the claim call's end -> the task body starting;
- the whole start latency (what the bench reports).

The stamps add a file write per step to the worker; compare the total with the
bench's figure of the same day before reading the steps.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _worker(stamps: Path) -> int:
    """The bench's idle worker (its defaults, as the latency step runs it),
    stamping each NOTIFY and claim; task starts go to the bench's own probe."""
    from pgqueue import _database, _worker
    from pgqueue.bench._systems import Pgqueue
    from pgqueue.cli import main

    out = stamps.open("a", buffering=1)
    on_notify, claim = _worker.Worker._on_notify, _database.WorkerDatabase.claim

    def stamped_notify(self: Any, channel: str, payload: str) -> None:
        out.write(f"notify {time.time()}\n")
        on_notify(self, channel, payload)

    async def stamped_claim(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        claimed = await claim(self, *args, **kwargs)
        samples = ",".join(str(job.args.get("sample")) for job in claimed)
        out.write(f"claim {started} {time.time()} {samples or '-'}\n")
        return claimed

    _worker.Worker._on_notify = stamped_notify  # type: ignore[method-assign]
    _database.WorkerDatabase.claim = stamped_claim  # type: ignore[method-assign]
    command = Pgqueue().worker_command(Pgqueue.configs[-1], drain=False)
    return main(command[command.index("worker") :])


STEPS = (
    "the enqueue call",
    "enqueue -> NOTIFY at the worker",
    "NOTIFY -> claim call starts",
    "the claim call",
    "claim returned -> task starts",
    "start latency (the bench's figure)",
)


def _steps(
    sent: dict[int, tuple[float, float]], lines: list[list[str]], starts: dict[int, float]
) -> dict[str, list[float]]:
    """Each sample's steps in ms: its claim is the one that returned it, its
    NOTIFY the first one the worker received after its enqueue call began
    (one NOTIFY per enqueue, in order)."""
    notifies = sorted(float(p[1]) for p in lines if p[0] == "notify")
    claims = {
        int(sample): (float(p[1]), float(p[2]))
        for p in lines
        if p[0] == "claim"
        for sample in p[3].split(",")
        if sample.isdigit()
    }
    steps: dict[str, list[float]] = {name: [] for name in STEPS}
    for sample, (called, returned) in sent.items():
        notified = next((n for n in notifies if n >= called), None)
        if notified is None or sample not in claims:
            raise RuntimeError(f"sample {sample}: no NOTIFY or no claim recorded for it")
        claim_start, claim_end = claims[sample]
        started = starts[sample]
        for name, seconds in zip(
            STEPS,
            (
                returned - called,
                notified - called,
                claim_start - notified,
                claim_end - claim_start,
                started - claim_end,
                started - called,
            ),
            strict=True,
        ):
            steps[name].append(seconds * 1000)
    return steps


def _spawn(dsn: str, stamps: Path) -> subprocess.Popen[bytes]:
    from pgqueue.bench._run import _env

    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(stamps)],
        env=_env(dsn, str(stamps.parent)),
        cwd=stamps.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _trace(dsn: str, samples: int, spacing: float) -> None:
    from pgqueue.bench._run import _percentile, _scratch, _stop, _wait_for_stamps
    from pgqueue.bench._systems import Pgqueue

    system = Pgqueue()
    with _scratch(dsn, "start_trace") as scratch, tempfile.TemporaryDirectory() as tmp:
        await system.setup(scratch)
        stamps = Path(tmp) / "trace.txt"  # beside the probe's stamps-<pid>.txt
        stamps.touch()
        client = await system.client(scratch)
        try:
            worker = _spawn(scratch, stamps)
            try:
                await client.enqueue_one(sample=0)  # the worker is up and idle once it ran
                await _wait_for_stamps(tmp, {0}, timeout=60)
                await asyncio.sleep(0.5)
                sent: dict[int, tuple[float, float]] = {}
                for sample in range(1, samples + 1):
                    called = time.time()
                    await client.enqueue_one(sample=sample)
                    sent[sample] = (called, time.time())
                    await asyncio.sleep(spacing)
                starts = await _wait_for_stamps(tmp, set(sent), timeout=60)
            finally:
                _stop(worker)
        finally:
            await client.close()
        lines = [line.split() for line in stamps.read_text().splitlines()]
    steps = _steps(sent, lines, starts)
    print(f"{samples} samples {spacing * 1000:.0f} ms apart; ms")
    print(f"{'':38}{'median':>9}{'p95':>9}")
    for name, values in steps.items():
        print(f"{name:38}{statistics.median(values):9.2f}{_percentile(values, 0.95):9.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="the server (a scratch database is made on it)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--spacing", type=float, default=0.02, help="seconds between jobs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(Path(args.worker))
    if not args.dsn:
        parser.error("--dsn is required")
    asyncio.run(_trace(args.dsn, args.samples, args.spacing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
