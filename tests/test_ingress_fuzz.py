"""Property tests generated from the served OpenAPI document (schemathesis), on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import schemathesis
from conftest import FOX_SECRET
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance
from test_ingress import LiveServer

from config.ingress import IngressConfig
from worker.ingress.openapi import openapi_document
from worker.ingress.service import create_app
from worker.producer import QUEUE

SECRET_HEADERS = ("Fox-Secret-Key", "Fox-Secret")
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def server(redis_url: str) -> Iterator[str]:
    """The app on a live uvicorn server, on this test's clean Redis database."""
    config = IngressConfig(secret=SecretStr(FOX_SECRET), redis_url=redis_url, broker_timeout_s=0.5)
    with LiveServer(create_app(config)) as live:
        yield live.url


# From the document the app serves (a test elsewhere checks they are equal); the app itself is
# per test, on that test's clean Redis database.
schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@FUZZ
def test_authenticated_requests_conform_and_never_fail(case: Case, server: str) -> None:
    # The right secret on every request: bodies and other headers are what vary. Given
    # explicitly, so schemathesis also probes the same request without it and with a wrong one.
    auth = {"Fox-Secret-Key": FOX_SECRET}
    response = case.call(base_url=server, headers=auth)

    assert response.status_code < 500, response.text
    # The document cannot say that session_id is required for INGRESS_EVENT_TYPES only (a
    # setting), so a generated event without one may rightly get a 422.
    case.validate_response(
        response,
        headers=auth,
        transport_kwargs={"base_url": server},
        excluded_checks=[positive_data_acceptance],
    )


@schema.parametrize()
@FUZZ
def test_unauthenticated_requests_queue_nothing(
    case: Case, server: str, redis_client: redis.Redis
) -> None:
    headers = dict(case.headers or {})
    if any(headers.get(name) == FOX_SECRET for name in SECRET_HEADERS):
        return  # generated the real secret: not an unauthenticated request
    response = case.call(base_url=server)

    assert response.status_code < 500, response.text
    if case.operation.path == "/webhooks/funnelfox" and case.method.upper() == "POST":
        assert response.status_code == 401
    assert redis_client.llen(QUEUE) == 0
    assert not redis_client.keys("ffe:event:*")
