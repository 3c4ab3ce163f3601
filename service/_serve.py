"""Running the app: ``pgqueue serve`` and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

import pgqueue

from ._app import create_app
from ._config import Settings

log = logging.getLogger("pgqueue.service")


class AccessLogger(AbstractAccessLogger):
    """Logs the path without its query string: /events may carry a token there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms',
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; ``OSError`` says clearly which address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running(
    queue: pgqueue.Queue,
    settings: Settings,
    *,
    host: str,
    port: int,
    close_queue: bool = True,
) -> AsyncIterator[str]:
    """Serve the app on ``host:port`` (0: any free port) while the block runs;
    yields the base URL."""
    sock = bind(host, port)
    app = create_app(queue, settings, close_queue=close_queue)
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        await runner.cleanup()


async def serve_forever(queue: pgqueue.Queue, settings: Settings, *, host: str, port: int) -> None:
    """``pgqueue serve``: run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(queue, settings, host=host, port=port) as url:
        print(f"pgqueue serve: listening on {url} (dashboard {url}/, API {url}/api/v1)", flush=True)
        await stop.wait()
    log.info("stopped")
