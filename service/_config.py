"""Settings of the status API, and the secret that signs its tokens."""

from __future__ import annotations

import dataclasses
import math
import os

from pgqueue import ConfigurationError

SECRET_ENV = "PGQUEUE_API_SECRET"
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key must be at least 256 bits


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """How one API process behaves. Every field has a sensible default except
    the token secret."""

    secret: str
    """HS256 key that signs and checks bearer tokens (``PGQUEUE_API_SECRET``)."""
    active_window: float = 300.0
    """``/jobs/active`` and the event snapshot include jobs finished this many seconds ago."""
    keepalive: float = 15.0
    """Seconds between SSE keepalive comments on an idle stream."""
    event_buffer: int = 10_000
    """Recent job events kept in memory for ``Last-Event-ID`` replay."""
    subscriber_queue: int = 1_000
    """Events one slow SSE client may fall behind before its stream is closed."""
    snapshot_limit: int = 500
    """Most jobs sent in an SSE snapshot."""
    metrics_cache: float = 2.0
    """Seconds a scrape's database gauges are reused by the next scrapes."""
    db_timeout: float = 3.0
    """Seconds a request waits for a database connection before answering 503."""
    max_body_bytes: int = 2 * 1_048_576 + 65_536
    """Largest request body read; a larger one is a 413. A job's ``args`` and
    ``metadata`` may each be 1 MiB of JSON (the library's limit), so the body
    that carries both plus the other fields gets 2 MiB and 64 KiB."""

    def __post_init__(self) -> None:
        check_secret(self.secret)
        if not (math.isfinite(self.active_window) and self.active_window >= 0):
            raise ConfigurationError(
                f"the active window must be seconds >= 0, not {self.active_window!r}"
            )
        if self.max_body_bytes < 1024:
            raise ConfigurationError(
                f"the body limit must be at least 1024 bytes, not {self.max_body_bytes!r}"
            )
        if not (math.isfinite(self.db_timeout) and self.db_timeout > 0):
            raise ConfigurationError(
                f"the database timeout must be seconds > 0, not {self.db_timeout!r}"
            )


def check_secret(secret: str | None) -> str:
    """``secret`` if it is usable as an HS256 key; :class:`ConfigurationError` otherwise."""
    if not secret:
        raise ConfigurationError(
            f"{SECRET_ENV} is not set: export a random secret of at least "
            f"{MIN_SECRET_BYTES} characters (e.g. `openssl rand -hex 32`)"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"{SECRET_ENV} is too short: use at least {MIN_SECRET_BYTES} characters"
        )
    return secret


def secret_from_env() -> str:
    """The token secret from ``PGQUEUE_API_SECRET``, checked."""
    return check_secret(os.environ.get(SECRET_ENV))
