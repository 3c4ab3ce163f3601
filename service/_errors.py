"""Errors as JSON: ``{"error": CODE, "message": TEXT, "detail": [...]}``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An answer other than success. ``detail`` lists ``{"field", "message"}``
    items for validation errors."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        detail: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.detail = list(detail) if detail else None
        self.headers: dict[str, str] = {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return web.json_response(body, status=self.status, headers=self.headers)


def invalid(field: str, message: str, *, status: int = 422) -> ApiError:
    """A request that names a bad field."""
    return ApiError(
        status,
        "invalid_request",
        f"{field}: {message}",
        [{"field": field, "message": message}],
    )


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} does not exist")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def conflict(message: str) -> ApiError:
    return ApiError(409, "conflict", message)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
