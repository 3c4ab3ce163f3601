"""The OpenAPI 3.1 document, generated from the declared endpoints and their
pydantic models (the same ones that validate requests)."""

from __future__ import annotations

import functools
from typing import Any, Literal

import pydantic
from pydantic.json_schema import models_json_schema

import pgqueue

from ._routes import Endpoint, ErrorOut

REF = "#/components/schemas/{model}"


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter cannot be JSON null: drop that branch of ``X | None``."""
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [o for o in options if o != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def build(endpoints: list[Endpoint]) -> dict[str, Any]:
    Mode = Literal["validation", "serialization"]
    wanted: list[tuple[type[pydantic.BaseModel], Mode]] = [(ErrorOut, "serialization")]
    for e in endpoints:
        for m in (e.path_model, e.query_model, e.body_model):
            if m is not None:
                wanted.append((m, "validation"))
        for reply in e.replies.values():
            if reply.model is not None:
                wanted.append((reply.model, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})

    def resolve(model: type[pydantic.BaseModel], mode: Mode) -> dict[str, Any]:
        ref = refs[(model, mode)]["$ref"]
        resolved: dict[str, Any] = schemas[ref.rsplit("/", 1)[1]]
        return resolved

    paths: dict[str, Any] = {}
    for e in endpoints:
        op: dict[str, Any] = {
            "operationId": e.operation_id,
            "summary": e.summary,
            "tags": [e.tag],
            "parameters": [],
            "responses": {},
        }
        for where, model in (("path", e.path_model), ("query", e.query_model)):
            if model is None:
                continue
            schema = resolve(model, "validation")
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                prop = dict(prop)
                description = prop.pop("description", None)
                prop.pop("title", None)
                param: dict[str, Any] = {
                    "name": name,
                    "in": where,
                    "required": where == "path" or name in required,
                    "schema": _without_null(prop),
                }
                if description:
                    param["description"] = description
                op["parameters"].append(param)
        for name, description in e.headers.items():
            op["parameters"].append(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "description": description,
                    "schema": {"type": "string"},
                }
            )
        if e.body_model is not None:
            op["requestBody"] = {
                "required": e.body_required,
                "content": {"application/json": {"schema": refs[(e.body_model, "validation")]}},
            }
        for status, reply in sorted(e.replies.items()):
            response: dict[str, Any] = {"description": reply.description}
            if reply.model is not None:
                response["content"] = {
                    reply.content_type: {"schema": refs[(reply.model, "serialization")]}
                }
            elif reply.content_type != "application/json":
                response["content"] = {reply.content_type: {"schema": {"type": "string"}}}
            else:
                response["content"] = {"application/json": {"schema": {"type": "object"}}}
            if status == 401:
                response["headers"] = {
                    "WWW-Authenticate": {"schema": {"type": "string"}, "required": True}
                }
            op["responses"][str(status)] = response
        if e.auth == "none":
            op["security"] = []
        elif e.query_token:
            op["security"] = [{"bearer": []}, {"accessToken": []}]
        else:
            op["security"] = [{"bearer": []}]
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pgqueue status API",
            "version": pgqueue.__version__,
            "description": "Jobs, queues and live progress of a pgqueue database. See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "accessToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "access_token",
                    "description": "only on /api/v1/events, for EventSource",
                },
            },
        },
        "security": [{"bearer": []}],
    }


@functools.cache
def document() -> dict[str, Any]:
    from .handlers import ALL

    return build([e for routes in ALL for e in routes.endpoints])
