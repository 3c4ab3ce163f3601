"""The ``procrastinate`` package, loaded with a clear error when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigurationError


def require() -> ModuleType:
    """The ``procrastinate`` package, or :class:`ConfigurationError` saying
    how to install it."""
    try:
        return importlib.import_module("procrastinate")
    except ImportError as exc:
        if (exc.name or "").startswith("pgqueue"):
            raise  # a broken install of pgqueue itself, not a missing extra
        raise ConfigurationError(
            f"the procrastinate bridge needs the 'procrastinate' extra ({exc.name or exc} is "
            "not installed): pip install 'pgqueue[procrastinate]'"
        ) from None
