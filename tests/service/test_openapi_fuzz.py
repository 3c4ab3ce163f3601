"""The API against its own OpenAPI document (schemathesis, property-based):
no request, valid or not, gets a 500, and every answer conforms to the
document (status codes, content types, bodies, headers). A live server on
127.0.0.1 runs in a thread (``live_server``); the examples per operation are few so the whole
module stays well under a minute."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from pgqueue_service._openapi import document

from .conftest import auth, live_server

SHARED_DATABASE = True
pytestmark = pytest.mark.timeout(120)

# /events never ends by itself; tests/service/test_events.py covers it.
schema = schemathesis.openapi.from_dict(document()).exclude(path="/api/v1/events")


def test_the_document_is_openapi_3_1_and_lists_every_route() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert {"/api/v1/jobs/active", "/api/v1/jobs", "/api/v1/jobs/{id}", "/api/v1/queues",
            "/api/v1/events", "/metrics", "/healthz", "/readyz"} <= set(doc["paths"])  # fmt: skip
    create = doc["paths"]["/api/v1/jobs"]["post"]
    assert {"201", "400", "401", "415", "422"} <= set(create["responses"])


@pytest.fixture(scope="module")
def live_url(module_db_dsn: str) -> Iterator[str]:
    with live_server(module_db_dsn) as url:
        yield url


@pytest.fixture(params=["alice", "admin"])
def headers(request: pytest.FixtureRequest) -> dict[str, str]:
    return auth(request.param, admin=request.param == "admin")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_document(
    case: schemathesis.Case, live_url: str, headers: dict[str, str]
) -> None:
    # positive_data_acceptance is left out on purpose: some schema-valid requests
    # are refused by meaning, not shape (an unknown task name, arguments that do
    # not fit the task, a cursor this API never issued), with a 422 naming the field.
    case.call_and_validate(
        base_url=live_url,
        headers=headers,
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
