"""Typed keys of the objects the application holds (``app[KEY]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

import pgqueue

from ._config import Settings

if TYPE_CHECKING:
    from ._events import Broadcaster
    from ._metrics import GaugeCache
    from ._reads import Reads

QUEUE = web.AppKey("queue", pgqueue.Queue)
SETTINGS = web.AppKey("settings", Settings)
BROADCASTER: web.AppKey[Broadcaster] = web.AppKey("broadcaster")
GAUGES: web.AppKey[GaugeCache] = web.AppKey("gauges")
READS: web.AppKey[Reads] = web.AppKey("reads")
