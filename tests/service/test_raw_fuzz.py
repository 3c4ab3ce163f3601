"""Beyond the OpenAPI document: hostile bytes to every route of the app.

Where schemathesis sends what the document describes, this sends what a
client can put on the wire: arbitrary text (non-ASCII included) in
``Authorization``, ``Last-Event-ID``, ``Content-Type`` and ``Accept``;
percent-encoded arbitrary bytes (NUL, invalid UTF-8) in path segments and
query values; bodies of raw bytes, deep nesting, NaN, huge numbers and NUL,
compressed as their Content-Encoding says or not.
The routes are read from the app's route table, so a new one is fuzzed too.

Every answer is below 500, and every error is a JSON ``{"error", "message"}``.
Requests are raw HTTP/1.1 over a socket (no client rewrites them); they stay
valid HTTP, since a request aiohttp's parser refuses never reaches the app.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgqueue
from pgqueue_service import Settings, create_app, mint_token

from .conftest import SECRET, live_server

SHARED_DATABASE = True
pytestmark = pytest.mark.timeout(120)


def _routes() -> list[tuple[str, str]]:
    # A queue that is never opened: only the route table is read.
    app = create_app(pgqueue.Queue("postgresql://unused/"), Settings(secret=SECRET))
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else "/"
        if route.method == "*":
            continue
        found.add((route.method, path))
    return sorted(found)


ROUTES = _routes()


@pytest.fixture(scope="module")
def server(module_db_dsn: str) -> Iterator[tuple[str, int]]:
    with live_server(module_db_dsn) as url:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        yield parts.hostname, parts.port


# -- strategies --------------------------------------------------------------------------

# What HTTP allows in a header value (aiohttp's parser refuses other control
# characters before the app runs): tab, visible ASCII, and bytes >= 0x80.
HEADER_CHARS = st.characters(
    codec="latin-1", exclude_categories=("Cc",), include_characters="\t\x80\x9f"
)
header_text = st.text(HEADER_CHARS, max_size=120).map(str.strip)
ALICE = f"Bearer {mint_token(SECRET, 'alice')}"
ADMIN = f"Bearer {mint_token(SECRET, 'root', admin=True)}"


def pct(data: bytes) -> str:
    return quote(data, safe="")


raw_text = st.one_of(
    st.binary(max_size=60).map(pct),
    st.text(max_size=60).map(lambda t: pct(t.encode("utf-8", "surrogatepass"))),
)
cursor = st.builds(
    lambda kind, key: base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("="),
    st.sampled_from(["job", "batch", "queue", "progress", "x", ""]),
    st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.text(max_size=30).map(lambda t: t.encode("utf-8", "replace").decode()),
        st.just("1\x00"),
    ),
)
segment = st.one_of(
    st.sampled_from(["1", "2", "api", "0", "-1", str(2**63), "9" * 40, "%00", "1%00", "%FF"]),
    st.sampled_from(["%ED%A0%80", "%C0%AF", "app.js", "index.html", "..%2F..%2Fetc%2Fpasswd"]),
    raw_text,
)
query_value = st.one_of(
    st.sampled_from(["1", "0", "-1", "500", "1e3", str(2**64), "pending", "failed,pending"]),
    st.sampled_from(["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2020-01-01"]),
    st.sampled_from(["%00", "%FF", "x" * 3000, ALICE.split()[1], "a.b.c"]),
    cursor,
    raw_text,
)
query_key = st.one_of(
    st.sampled_from(["limit", "cursor", "status", "since", "queue", "task", "owner"]),
    st.sampled_from(["access_token", "id", "extra"]),
    raw_text,
)
# aiohttp refuses a request line over 8,190 bytes (as plain text, before the
# app runs): the query stays well under it.
query = (
    st.lists(st.tuples(query_key, query_value), max_size=4)
    .map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
    .filter(lambda text: len(text) <= 6000)
)

json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(["a\x00b", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
job_fields = st.fixed_dictionaries(
    {"task": st.one_of(st.just("echo"), st.text(max_size=10))},
    optional={
        name: json_value
        for name in ("args", "queue", "priority", "delay", "run_at", "max_attempts", "timeout")
    }
    | {"metadata": json_value, "extra_attempts": json_value},
)


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


body = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    job_fields.map(lambda v: json.dumps(v).encode()),  # NaN and Infinity as JSON words
    json_value.map(lambda v: json.dumps(v).encode()),
    st.builds(nested, st.integers(min_value=1, max_value=3000), st.sampled_from(["array", "obj"])),
    st.builds(
        lambda inner: b'{"task":"echo","args":{"value":' + inner + b"}}",
        st.builds(nested, st.integers(min_value=50, max_value=1500), st.just("array")),
    ),
    st.sampled_from(
        [
            b'{"task":"\xff\xfe"}',
            b'{"task":"echo","args":{"v":"\\u0000"}}',
            b'{"task":"echo","priority":' + b"9" * 5000 + b"}",
            b'{"task":"echo","delay":1e999}',
            b'{"task":"echo","args":{"v":"\\ud800"}}',
            b"\x00" * 50,
        ]
    ),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.one_of(
            st.sampled_from([ALICE, ADMIN]),
            header_text.map(lambda t: f"Bearer {t}"),
            header_text,
        ),
        "Last-Event-ID": header_text,
        "Content-Type": st.one_of(
            st.sampled_from(["application/json", "text/plain", "application/x+json"]),
            st.sampled_from(["application/json; charset=latin-1", "multipart/form-data"]),
            header_text,
        ),
        "Accept": header_text,
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "identity"]),
    },
)


def encode(data: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    return data


# -- the client --------------------------------------------------------------------------


def send(
    server: tuple[str, int], method: str, target: str, head: dict[str, str], data: bytes
) -> tuple[int, str, bytes]:
    """Status, content type and body of one raw request (an event stream's
    body is not read: it never ends)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in head.items()]
    if data or method == "POST":
        lines.append(f"Content-Length: {len(data)}")
    request = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + data
    with socket.create_connection(server, timeout=20) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        content_type = response.getheader("Content-Type", "")
        if content_type.startswith("text/event-stream"):
            return response.status, content_type, b""
        return response.status, content_type, response.read()


def target(path: str, segments: list[str], query_string: str) -> str:
    parts = path.split("/")
    filled = [segments.pop() if p.startswith("{") and segments else p for p in parts]
    out = "/".join(filled)
    return f"{out}?{query_string}" if query_string else out


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@settings(
    max_examples=30,
    deadline=None,
    database=None,  # no .hypothesis directory in the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    segments=st.lists(segment, min_size=2, max_size=2),
    query_string=query,
    head=headers,
    data=body,
    honest_encoding=st.booleans(),
)
def test_no_input_gets_a_5xx_and_every_error_is_json(
    server: tuple[str, int],
    method: str,
    path: str,
    segments: list[str],
    query_string: str,
    head: dict[str, str],
    data: bytes,
    honest_encoding: bool,
) -> None:
    if method in ("GET", "HEAD"):
        data = b""
    if honest_encoding:
        data = encode(data, head.get("Content-Encoding"))
    url = target(path, segments, query_string)
    status, content_type, raw = send(server, method, url, head, data)
    assert status < 500, (status, raw[:300])
    if status == 400 and not honest_encoding and content_type.startswith("text/plain"):
        # A body that is not what its Content-Encoding says may fail in
        # aiohttp's parser, which answers in plain text before the app runs.
        assert "Content-Encoding" in head and data, raw
    elif status >= 400 and method != "HEAD":
        assert content_type.startswith("application/json"), (status, content_type, raw[:300])
        answer: Any = json.loads(raw)
        assert answer["error"] and answer["message"], answer


def test_the_route_table_is_read() -> None:
    assert ("POST", "/api/v1/jobs") in ROUTES
    assert ("GET", "/api/v1/events") in ROUTES
    assert ("POST", "/api/v1/queues/{name}/pause") in ROUTES
    assert ("GET", "/static/{filename}") in ROUTES
