"""The application factory: routes, middlewares, and one cleanup context per
resource (the library's connection pool; the LISTEN loop)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path

import psycopg
from aiohttp import web

import pgqueue
from pgqueue.errors import first_line

from . import _keys
from ._config import Settings
from ._errors import ApiError, invalid
from ._events import Broadcaster
from ._metrics import GaugeCache
from ._reads import Reads
from ._routes import too_large
from .handlers import ALL

log = logging.getLogger("pgqueue.service")

STATIC = Path(str(resources.files("pgqueue_service").joinpath("static")))

# The dashboard loads only its own files: no inline script, nothing external.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer is JSON: ours (ApiError), aiohttp's (404, 405, 413...),
    the library's refusals, values the database refuses, and unexpected
    failures (500, logged)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except pgqueue.JobNotFound as exc:
        return ApiError(404, "not_found", str(exc)).response()
    except pgqueue.InvalidTransition as exc:
        return ApiError(409, "conflict", str(exc)).response()
    except pgqueue.InvalidJobError as exc:
        # Handlers name the field of the refusals they expect; this is the rest.
        return invalid("body" if request.body_exists else "request", str(exc)).response()
    except psycopg.DataError as exc:
        # SQLSTATE class 22 (out of range, bad text representation, NUL,
        # untranslatable character...) or psycopg refusing to adapt a value.
        # Validation names the field first; this is the last line, so that a
        # value that slipped through is still the client's 422, not a 500.
        log.warning(
            "the database refused a value on %s %s: %s",
            request.method,
            request.path,
            first_line(exc),
        )
        message = "a value is out of range or not representable in the database"
        return ApiError(422, "invalid_request", message).response()
    except (pgqueue.DatabaseUnavailable, psycopg.OperationalError) as exc:
        # Unreachable, restarting, or our connection was terminated
        # (AdminShutdown, 57P01), or no pooled connection within the pool's
        # timeout (PoolTimeout): the client may retry shortly.
        log.warning("database unavailable: %s", first_line(exc))
        error = ApiError(503, "unavailable", "the database is unavailable")
        error.headers = {"Retry-After": "1"}
        return error.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return too_large(request).response()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        error = ApiError(exc.status, code, exc.reason)
        error.headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error.response()
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "unexpected server error").response()


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.path.startswith("/api/"):
        response.headers.setdefault("Content-Security-Policy", _CSP)
    return response


# The dashboard's files, fixed at import: a name not among them is a JSON 404
# before the file system is asked (aiohttp's static route answered a missing
# file with an empty 404, and a name over 255 bytes with a 500).
STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file())


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["filename"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name)


async def dashboard(request: web.Request) -> web.FileResponse:
    response = web.FileResponse(STATIC / "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


def create_app(
    queue: pgqueue.Queue,
    settings: Settings,
    *,
    close_queue: bool = True,
) -> web.Application:
    """The status API and dashboard for ``queue`` (its registered tasks are the
    ones ``POST /api/v1/jobs`` accepts). The app opens the queue's pool on
    startup and, with ``close_queue``, closes it on cleanup."""
    app = web.Application(
        middlewares=[security_headers, errors_as_json],
        client_max_size=settings.max_body_bytes,
    )
    app[_keys.QUEUE] = queue
    app[_keys.SETTINGS] = settings
    reads = app[_keys.READS] = Reads(queue)
    app[_keys.GAUGES] = GaugeCache(reads, settings.metrics_cache)
    app[_keys.BROADCASTER] = Broadcaster(
        queue,
        buffer_size=settings.event_buffer,
        subscriber_limit=settings.subscriber_queue,
    )
    for routes in ALL:
        for endpoint in routes.endpoints:
            app.router.add_route(endpoint.method, endpoint.path, endpoint.view())
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{filename}", static_file)

    async def database_pool(app: web.Application) -> AsyncIterator[None]:
        # A request waits this long for a connection (psycopg_pool's default is
        # 30 s), so during an outage it answers 503 instead of hanging.
        queue.pool_timeout = settings.db_timeout
        await queue.pool()
        yield
        if close_queue:
            await queue.close()

    async def job_listener(app: web.Application) -> AsyncIterator[None]:
        broadcaster = app[_keys.BROADCASTER]
        await broadcaster.start()
        yield
        await broadcaster.stop()

    async def end_streams(app: web.Application) -> None:
        # SSE handlers never end by themselves; end them before the server
        # waits for open requests.
        app[_keys.BROADCASTER].close_streams("the server is shutting down")

    app.cleanup_ctx.append(database_pool)
    app.cleanup_ctx.append(job_listener)
    app.on_shutdown.append(end_streams)
    return app
