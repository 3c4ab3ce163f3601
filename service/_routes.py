"""Declared endpoints: one record per operation feeds both the router and the
OpenAPI document, so the two cannot drift apart.

A handler is ``async def handler(request, *, principal, path, query, body)``,
taking only the keywords it needs. The annotations of ``path``, ``query`` and
``body`` (pydantic models) say what is validated before the handler runs;
``principal`` is the authenticated caller.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, get_type_hints

import pydantic
import pydantic_core
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import _keys
from ._auth import authenticate
from ._errors import ApiError, forbidden, invalid

Auth = Literal["none", "user", "admin"]
Handler = Callable[..., Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """One documented response of an operation."""

    description: str
    model: type[pydantic.BaseModel] | None = None
    content_type: str = "application/json"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: Auth
    query_token: bool
    path_model: type[pydantic.BaseModel] | None
    query_model: type[pydantic.BaseModel] | None
    body_model: type[pydantic.BaseModel] | None
    body_required: bool
    replies: Mapping[int, Reply]
    headers: Mapping[str, str]  # documented request headers: name -> description

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def view(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The aiohttp handler: authenticate, validate, call."""
        endpoint = self

        async def view(request: web.Request) -> web.StreamResponse:
            kwargs: dict[str, Any] = {}
            if endpoint.auth != "none":
                secret = request.app[_keys.SETTINGS].secret
                principal = authenticate(request, secret, query_token=endpoint.query_token)
                if endpoint.auth == "admin" and not principal.admin:
                    raise forbidden("this operation needs an admin token")
                kwargs["principal"] = principal
            if endpoint.path_model is not None:
                kwargs["path"] = _validate(endpoint.path_model, dict(request.match_info))
            if endpoint.query_model is not None:
                kwargs["query"] = _validate(endpoint.query_model, dict(request.query))
            if endpoint.body_model is not None:
                kwargs["body"] = await _body(request, endpoint.body_model, endpoint.body_required)
            return await endpoint.handler(request, **kwargs)

        view.__name__ = self.operation_id
        return view


class Routes:
    """The endpoints of one resource module."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        replies: Mapping[int, Reply],
        auth: Auth = "user",
        query_token: bool = False,
        body_required: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            hints = get_type_hints(handler)
            params = inspect.signature(handler).parameters

            def model(name: str) -> type[pydantic.BaseModel] | None:
                if name not in params:
                    return None
                hint = hints[name]
                if not (inspect.isclass(hint) and issubclass(hint, pydantic.BaseModel)):
                    raise TypeError(f"{handler.__name__}: {name} must be a pydantic model")
                return hint

            if auth == "none" and "principal" in params:
                raise TypeError(f"{handler.__name__}: an open endpoint has no principal")
            documented = dict(replies)
            if auth != "none":
                documented.setdefault(401, Reply("missing or invalid bearer token", ErrorOut))
            if auth == "admin":
                documented.setdefault(403, Reply("the token is not an admin token", ErrorOut))
            body = model("body")
            if any(model(n) for n in ("path", "query")) or body:
                documented.setdefault(422, Reply("a parameter or field is invalid", ErrorOut))
            if body:
                documented.setdefault(400, Reply("the body is not JSON", ErrorOut))
                documented.setdefault(415, Reply("the body is not application/json", ErrorOut))
            self.endpoints.append(
                Endpoint(
                    method=method,
                    path=path,
                    handler=handler,
                    summary=summary,
                    tag=self.tag,
                    auth=auth,
                    query_token=query_token,
                    path_model=model("path"),
                    query_model=model("query"),
                    body_model=body,
                    body_required=body_required,
                    replies=documented,
                    headers=dict(headers or {}),
                )
            )
            return handler

        return register


class FieldError(pydantic.BaseModel):
    field: str
    message: str


class ErrorOut(pydantic.BaseModel):
    """Every error answer."""

    error: str = pydantic.Field(description="machine-readable code, e.g. invalid_request")
    message: str = pydantic.Field(description="what went wrong, for people")
    detail: list[FieldError] | None = pydantic.Field(
        default=None, description="validation errors, one per field"
    )


def _field(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_error(exc: pydantic.ValidationError, *, status: int = 422) -> ApiError:
    detail = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in detail)
    return ApiError(status, "invalid_request", summary, detail)


def _validate(model: type[pydantic.BaseModel], values: dict[str, str]) -> pydantic.BaseModel:
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects in a request body (the body itself is
level 1). Deeper bodies are refused before anything walks them recursively."""


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """True if ``value`` nests arrays and objects over ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _bracket_depth(raw: bytes) -> int:
    """The deepest nesting of brackets outside JSON strings in ``raw``, valid
    JSON or not (no recursion, so any depth is measured)."""
    depth = deepest = 0
    for byte in _JSON_STRING.sub(b"", raw).translate(None, delete=_NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep() -> ApiError:
    message = f"arrays and objects may nest at most {MAX_JSON_DEPTH} levels deep"
    return invalid("body", message)


def too_large(request: web.Request) -> ApiError:
    limit = request.app[_keys.SETTINGS].max_body_bytes
    message = f"the body is over the limit of {limit:,} bytes (max_body_bytes)"
    return ApiError(413, "too_large", message, [{"field": "body", "message": message}])


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(request) from None
    except (web.RequestPayloadError, HttpProcessingError):
        raise ApiError(
            400,
            "invalid_body",
            "the body cannot be read: it ended early or does not decode as its "
            "Content-Encoding says",
        ) from None


async def _body(
    request: web.Request, model: type[pydantic.BaseModel], required: bool
) -> pydantic.BaseModel:
    raw = await _read(request)
    if not raw.strip():
        if required:
            raise ApiError(
                422,
                "invalid_request",
                "body: a JSON object is required",
                [{"field": "body", "message": "a JSON object is required"}],
            )
        return model()
    content_type = request.content_type
    if request.headers.get("Content-Type") and not (
        content_type == "application/json" or content_type.endswith("+json")
    ):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    # pydantic's parser rather than json.loads: it refuses NaN and Infinity,
    # lone surrogates and invalid UTF-8, and it bounds its own recursion where
    # json.loads raises RecursionError on a body about a thousand levels deep.
    try:
        value = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        if _bracket_depth(raw) > MAX_JSON_DEPTH:  # the parser's own recursion limit hit
            raise too_deep() from None
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_JSON_DEPTH and _nested_deeper_than(value, MAX_JSON_DEPTH):
        raise too_deep()
    try:
        return model.model_validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def json_reply(
    value: pydantic.BaseModel, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=value.model_dump_json(),
        status=status,
        content_type="application/json",
        headers=headers,
    )
