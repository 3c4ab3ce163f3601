"""pgqueue status API and dashboard (aiohttp), installed as ``pgqueue_service``.

    from pgqueue_service import Settings, create_app
    app = create_app(queue, Settings(secret=...))      # an aiohttp Application

``pgqueue serve`` runs it; docs/api.md describes the endpoints.
"""

from ._app import create_app
from ._auth import Principal, decode_token, mint_token
from ._config import SECRET_ENV, Settings, secret_from_env
from ._serve import running, serve_forever

__all__ = [
    "SECRET_ENV",
    "Principal",
    "Settings",
    "create_app",
    "decode_token",
    "mint_token",
    "running",
    "secret_from_env",
    "serve_forever",
]
