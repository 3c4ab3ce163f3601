"""Input that once reached past validation and answered 500: each is now a 4xx
with a JSON body naming what was wrong (or, on the event stream, a snapshot).
Every test names the rule it holds the API to."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import psycopg
import pytest
from aiohttp import ClientResponse

import pgqueue
from pgqueue_service import Settings, create_app
from pgqueue_service import _keys as keys

from .conftest import SECRET, Api, auth, register_tasks

SHARED_DATABASE = True


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def error_body(response: ClientResponse, status: int) -> dict[str, Any]:
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    body: dict[str, Any] = json.loads(text)
    assert body["error"] and body["message"]
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {d["field"] for d in body.get("detail") or []}


# -- tokens ------------------------------------------------------------------------------


async def test_non_ascii_authorization_header_is_401(api: Api) -> None:
    # Latin-1 bytes >= 0x80 arrive as non-ASCII; PyJWT could not even encode them.
    response = await api.client.get(
        "/api/v1/whoami", headers={"Authorization": "Bearer \xe9\xe9.\xff.\xe9"}
    )
    body = await error_body(response, 401)
    assert body["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_over_long_token_is_401(api: Api) -> None:
    response = await api.client.get(
        "/api/v1/whoami", headers={"Authorization": "Bearer " + "a" * 5000}
    )
    body = await error_body(response, 401)
    assert "over 4096" in body["message"]


@pytest.mark.parametrize("token", ["%FF", "%C3%A9", "%00", "a" * 5000, "%ED%A0%80"])
async def test_garbage_access_token_on_the_event_stream_is_401(api: Api, token: str) -> None:
    response = await api.client.get(f"/api/v1/events?access_token={token}")
    await error_body(response, 401)


# -- cursors -----------------------------------------------------------------------------

LISTS = {
    "job": ["/api/v1/jobs", "/api/v1/jobs/active"],
    "batch": ["/api/v1/batches"],
    "queue": ["/api/v1/queues"],
    "progress": ["/api/v1/jobs/{job}/progress"],
}
BAD_KEYS = {
    "nul": "1\x00",
    "only nul": "\x00",
    "empty": "",
    "non-numeric": "abc",
    "negative": "-1",
    "zero": "0",
    "beyond bigint": str(2**63),
    "huge": "9" * 150,
    "arabic-indic digit": "\u0661",
    "signed": "+1",
    "spaced": " 1",
    "underscore": "1_0",
}


async def test_queue_cursor_with_nul_is_422_naming_cursor(api: Api) -> None:
    response = await api.call("GET", f"/api/v1/queues?cursor={cursor('queue:a' + chr(0))}")
    assert fields(await error_body(response, 422)) == {"cursor"}


async def test_queue_cursor_longer_than_a_queue_name_is_422(api: Api) -> None:
    response = await api.call("GET", f"/api/v1/queues?cursor={cursor('queue:' + 'q' * 129)}")
    assert fields(await error_body(response, 422)) == {"cursor"}


@pytest.mark.parametrize("kind", list(LISTS))
async def test_every_cursor_kind_refuses_bad_keys_with_422_naming_cursor(
    api: Api, kind: str
) -> None:
    job = await api.enqueue("alice")
    for path in LISTS[kind]:
        path = path.format(job=job)
        for name, key in BAD_KEYS.items():
            if kind == "queue" and name not in ("nul", "only nul", "empty"):
                continue  # any other text is a queue name
            response = await api.call("GET", f"{path}?cursor={cursor(f'{kind}:{key}')}")
            body = await error_body(response, 422)
            assert fields(body) == {"cursor"}, (path, name, body)
        other = "batch" if kind != "batch" else "job"
        response = await api.call("GET", f"{path}?cursor={cursor(f'{other}:1')}")
        assert fields(await error_body(response, 422)) == {"cursor"}, (path, "wrong kind")


# -- path and query ----------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["+1", "%201", "1_0", "%D9%A1", "1e3", "0x1", "1%00"])
async def test_path_ids_are_decimal_digits_or_422(api: Api, segment: str) -> None:
    for path in (f"/api/v1/jobs/{segment}", f"/api/v1/batches/{segment}"):
        response = await api.call("GET", path)
        assert fields(await error_body(response, 422)) == {"id"}, path


@pytest.mark.parametrize("value", ["+5", "5_0", "%D9%A1"])
async def test_limits_are_decimal_digits_or_422(api: Api, value: str) -> None:
    response = await api.call("GET", f"/api/v1/jobs?limit={value}")
    assert fields(await error_body(response, 422)) == {"limit"}


# -- bodies ------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


async def test_json_body_nested_1000_deep_is_422_naming_body(api: Api) -> None:
    job = await api.enqueue("alice")
    deep = b"[" * 1000 + b"]" * 1000
    for path, body in [
        ("/api/v1/jobs", deep),
        ("/api/v1/jobs", b'{"task":"echo","args":{"value":' + deep + b"}}"),
        (f"/api/v1/jobs/{job}/retry", b'{"a":' * 100_000),
    ]:
        response = await api.call("POST", path, data=body, headers=JSON)
        answer = await error_body(response, 422)
        assert fields(answer) == {"body"}
        assert "64 levels" in answer["message"]


async def test_json_body_may_nest_exactly_64_levels(api: Api) -> None:
    # The body is level 1, args level 2: 62 arrays make 64.
    def body(arrays: int) -> bytes:
        return b'{"task":"echo","args":{"value":' + b"[" * arrays + b"]" * arrays + b"}}"

    ok = await api.call("POST", "/api/v1/jobs", data=body(62), headers=JSON)
    assert ok.status == 201, await ok.text()
    refused = await api.call("POST", "/api/v1/jobs", data=body(63), headers=JSON)
    assert fields(await error_body(refused, 422)) == {"body"}


async def test_body_over_max_body_bytes_is_a_json_413_naming_the_limit(
    aiohttp_client: Any, queue: pgqueue.Queue
) -> None:
    register_tasks(queue)
    app = create_app(queue, Settings(secret=SECRET, max_body_bytes=4096), close_queue=False)
    client = await aiohttp_client(app)
    body = json.dumps({"task": "echo", "args": {"value": "x" * 5000}})
    response = await client.post("/api/v1/jobs", data=body, headers={**JSON, **auth("alice")})
    answer = await error_body(response, 413)
    assert answer["error"] == "too_large"
    assert "4,096 bytes" in answer["message"]
    assert fields(answer) == {"body"}


async def test_a_job_with_a_full_mebibyte_of_args_fits_the_default_body_limit(api: Api) -> None:
    # {"value": "..."} is 13 bytes around the string: exactly the library's 1 MiB.
    args = {"value": "x" * (1_048_576 - 13)}
    body = json.dumps({"task": "echo", "args": args, "metadata": {"m": "y" * 100_000}})
    response = await api.call("POST", "/api/v1/jobs", data=body, headers=JSON)
    assert response.status == 201, (await response.text())[:300]


@pytest.mark.parametrize("run_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
async def test_run_at_that_could_not_be_read_back_is_422_naming_run_at(
    api: Api, run_at: str
) -> None:
    # Stored, these would fail every later read of the job (past year 9999 or
    # before year 1 once in UTC): refused before the insert.
    response = await api.call(
        "POST", "/api/v1/jobs", json={"task": "echo", "run_at": run_at}, headers=JSON
    )
    assert fields(await error_body(response, 422)) == {"run_at"}
    assert await api.sql("SELECT id FROM pgqueue.jobs") == []


async def test_body_that_does_not_match_its_content_encoding_is_400(api: Api) -> None:
    # aiohttp drops the connection after such a body: no reuse by the client.
    response = await api.call(
        "POST",
        "/api/v1/jobs",
        data=b'{"task":"echo"}',
        headers={**JSON, "Content-Encoding": "gzip", "Connection": "close"},
    )
    assert (await error_body(response, 400))["error"] == "invalid_body"
    packed = gzip.compress(b'{"task":"echo"}')
    response = await api.call(
        "POST", "/api/v1/jobs", data=packed, headers={**JSON, "Content-Encoding": "gzip"}
    )
    assert response.status == 201, await response.text()


@pytest.mark.parametrize(
    "body",
    [
        b'{"task":"echo","args":{"value":"\\ud800"}}',  # a lone surrogate
        b'{"task":"echo\xff"}',  # invalid UTF-8
        b'{"task":"echo","delay":NaN}',
        b'{"task":"echo","args":{"v":' + b"9" * 5000 + b"}}",  # beyond int parsing limits
    ],
)
async def test_body_that_is_not_json_is_400(api: Api, body: bytes) -> None:
    response = await api.call("POST", "/api/v1/jobs", data=body, headers=JSON)
    assert (await error_body(response, 400))["error"] == "invalid_json"


# -- last lines in the middleware -----------------------------------------------------------


async def test_a_value_the_database_refuses_is_422_not_500(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def out_of_range(*args: Any, **kwargs: Any) -> None:
        raise psycopg.errors.NumericValueOutOfRange("integer out of range")

    monkeypatch.setattr(api.queue, "get_job", out_of_range)
    response = await api.call("GET", "/api/v1/jobs/1")
    assert (await error_body(response, 422))["error"] == "invalid_request"


async def test_a_library_refusal_outside_enqueue_is_422_not_500(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(name: str) -> None:
        raise pgqueue.InvalidJobError("queue name must be 1 to 128 characters")

    monkeypatch.setattr(api.queue, "pause_queue", refuse)
    response = await api.call("POST", "/api/v1/queues/api/pause", admin=True)
    assert (await error_body(response, 422))["error"] == "invalid_request"


# -- the event stream --------------------------------------------------------------------


async def _first_event(response: ClientResponse) -> str:
    assert response.status == 200, await response.text()
    text = ""
    async for line in response.content:
        text += line.decode()
        if text.endswith("\n\n") and "event:" in text:
            break
    response.close()
    return text


@pytest.mark.parametrize("garbage", ["\xff\xfe", "x-1", "deadbeef-", "-", "a" * 3000])
async def test_last_event_id_garbage_gets_a_snapshot(api: Api, garbage: str) -> None:
    response = await api.call("GET", "/api/v1/events", headers={"Last-Event-ID": garbage})
    assert "event: snapshot" in await _first_event(response)


async def test_last_event_id_with_a_huge_sequence_gets_a_snapshot(api: Api) -> None:
    # The right epoch and thousands of digits: beyond what int() parses by default.
    epoch = api.client.app[keys.BROADCASTER].epoch
    for seq in ("9" * 5000, str(2**63)):
        response = await api.call(
            "GET", "/api/v1/events", headers={"Last-Event-ID": f"{epoch}-{seq}"}
        )
        assert "event: snapshot" in await _first_event(response)


async def test_an_event_stream_that_fails_after_it_started_just_ends(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a row the server cannot read")

    monkeypatch.setattr(api.client.app[keys.READS], "active_jobs", broken)
    response = await api.call("GET", "/api/v1/events")
    assert response.status == 200
    text = (await response.read()).decode()
    assert text == "retry: 2000\n\n"  # no second status line inside the stream


# -- the dashboard's files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.js", "a" * 300, "app.js%2Fx", "%FF", "app.js%00"])
async def test_a_static_name_outside_the_dashboard_files_is_a_json_404(api: Api, name: str) -> None:
    # aiohttp's static route answered an empty 404 for a missing file and a
    # 500 for a name longer than the file system allows.
    response = await api.client.get(f"/static/{name}")
    assert (await error_body(response, 404))["error"] == "not_found"


async def test_the_dashboard_files_are_served(api: Api) -> None:
    for name, kind in [("app.js", "javascript"), ("app.css", "text/css")]:
        response = await api.client.get(f"/static/{name}")
        assert response.status == 200
        assert kind in response.content_type
        assert "Content-Security-Policy" in response.headers
