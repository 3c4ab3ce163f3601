"""Parts of pgqueue that need an optional extra, loaded with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigurationError


def api() -> ModuleType:
    """``pgqueue_service`` (the status API), or :class:`ConfigurationError`
    saying how to install what it needs."""
    try:
        return importlib.import_module("pgqueue_service")
    except ImportError as exc:
        if (exc.name or "").startswith("pgqueue"):
            raise  # a broken install of pgqueue itself, not a missing extra
        raise ConfigurationError(
            f"the status API needs the 'api' extra ({exc.name or exc} is not installed): "
            "pip install 'pgqueue[api]'"
        ) from None
