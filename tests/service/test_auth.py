"""Authentication: every protected endpoint refuses a missing or bad token with
401 (JSON body, ``WWW-Authenticate: Bearer``); open endpoints need none."""

from __future__ import annotations

import time

import jwt
import pytest

from pgqueue_service._openapi import document

from .conftest import SECRET, Api, auth

SHARED_DATABASE = True

PROTECTED = [
    (method.upper(), path.replace("{id}", "1").replace("{name}", "api"))
    for path, ops in document()["paths"].items()
    for method, op in ops.items()
    if op["security"]
]
OPEN = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/api/v1/openapi.json", "/",
        "/static/app.js", "/static/app.css"]  # fmt: skip


def _token(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    base: dict[str, object] = {"sub": "alice", "exp": int(time.time()) + 600}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


BAD_TOKENS = {
    "malformed": "not.a.jwt",
    "garbage": "abc",
    "expired": _token({"exp": int(time.time()) - 3600}),
    "wrong signature": _token({}, key="another-secret-" + "k" * 40),
    "alg none": jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, None, algorithm="none"),
    "alg HS512": _token({}, algorithm="HS512"),
    "no exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
    "no sub": jwt.encode({"exp": int(time.time()) + 600}, SECRET, algorithm="HS256"),
    "empty sub": _token({"sub": ""}),
    "sub too long": _token({"sub": "x" * 257}),
}


def test_every_protected_operation_is_listed() -> None:
    # /events, jobs and queues operations; the open ones carry `security: []`.
    assert len(PROTECTED) >= 10
    assert ("GET", "/api/v1/events") in PROTECTED


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_no_token_is_401_with_a_bearer_challenge(api: Api, method: str, path: str) -> None:
    response = await api.call(method, path, owner=None)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["error"] == "unauthorized"
    assert body["message"]


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
async def test_a_bad_token_is_401(api: Api, name: str) -> None:
    for method, path in (("GET", "/api/v1/jobs/active"), ("POST", "/api/v1/jobs/1/cancel")):
        response = await api.call(
            method, path, owner=None, headers={"Authorization": f"Bearer {BAD_TOKENS[name]}"}
        )
        assert response.status == 401, name
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert (await response.json())["error"] == "unauthorized"


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "Token abc", "abc"])
async def test_an_authorization_header_that_is_not_bearer_is_401(api: Api, header: str) -> None:
    response = await api.call("GET", "/api/v1/jobs/active", owner=None,
                              headers={"Authorization": header})  # fmt: skip
    assert response.status == 401


async def test_expired_token_says_so(api: Api) -> None:
    expired = {"Authorization": f"Bearer {BAD_TOKENS['expired']}"}
    response = await api.call("GET", "/api/v1/whoami", owner=None, headers=expired)
    assert "expired" in (await response.json())["message"]


async def test_a_good_token_names_its_owner_and_admin_flag(api: Api) -> None:
    assert await api.json("GET", "/api/v1/whoami", "alice") == {"owner": "alice", "admin": False}
    assert await api.json("GET", "/api/v1/whoami", "root", admin=True) == {
        "owner": "root",
        "admin": True,
    }


async def test_admin_must_be_the_boolean_true(api: Api) -> None:
    token = _token({"admin": "true"})
    me = await api.json("GET", "/api/v1/whoami", None,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert me["admin"] is False


async def test_access_token_query_parameter_is_accepted_on_events_only(api: Api) -> None:
    token = auth("alice")["Authorization"].removeprefix("Bearer ")
    response = await api.call("GET", f"/api/v1/jobs/active?access_token={token}", owner=None)
    assert response.status == 401
    events = await api.call("GET", f"/api/v1/events?access_token={token}", owner=None)
    assert events.status == 200
    assert events.headers["Content-Type"].startswith("text/event-stream")
    events.close()


@pytest.mark.parametrize("path", OPEN)
async def test_open_endpoints_need_no_token(api: Api, path: str) -> None:
    response = await api.call("GET", path, owner=None)
    assert response.status == 200, await response.text()


async def test_pause_and_resume_need_an_admin_token(api: Api) -> None:
    for action in ("pause", "resume"):
        body = await api.json("POST", f"/api/v1/queues/api/{action}", "alice", status=403)
        assert body["error"] == "forbidden"
