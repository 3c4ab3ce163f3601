"""Parts of pgqueue that need an optional extra, loaded with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigurationError


def _load(module: str, needs: str, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`ConfigurationError` saying that
    ``needs`` wants the ``extra`` and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or "").startswith("pgqueue"):
            raise  # a broken install of pgqueue itself, not a missing extra
        raise ConfigurationError(
            f"{needs} needs the '{extra}' extra ({exc.name or exc} is not installed): "
            f"pip install 'pgqueue[{extra}]'"
        ) from None


def api() -> ModuleType:
    """``pgqueue_service`` (the status API)."""
    return _load("pgqueue_service", "the status API", "api")


def procrastinate() -> ModuleType:
    """The ``procrastinate`` package, for the procrastinate bridge."""
    return _load("procrastinate", "the procrastinate bridge", "procrastinate")
