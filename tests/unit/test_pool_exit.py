"""A program that ends without closing its pgqueue pools still exits: asyncio.run()
cancels every task at exit, and a pool worker that was connecting used to swallow
its cancellation (psycopg_pool retries a cancelled connect), hanging the exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import asyncio, socket
    from pgqueue import _connect

    # a server that accepts and never answers: the pool's first connect stays under way
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    silent.setblocking(False)
    port = silent.getsockname()[1]

    async def main():
        pool = _connect.async_pool(
            f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=60",
            min_size=1, max_size=2, name="left-open",
        )
        await pool.open()  # without waiting
        # the pool's connect reached the server and waits for its answer
        accepted, _ = await asyncio.get_running_loop().sock_accept(silent)
        await asyncio.sleep(0.1)

    asyncio.run(main())
    print("exited")
    """
)


def test_a_pool_left_open_while_connecting_does_not_hang_the_exit() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "exited"
