"""Schemathesis over /openapi.json: generated requests, valid and invalid, against the real app on
a real database must never get a 5xx, and every answer must match the published schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from orders.repository import Pool
from tests.integration.test_api import Api, running_api

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 150  # bounded, so the suite stays quick; raise locally to dig deeper


@pytest.fixture(scope="module")
def api(pool: Pool, found_services: Any) -> Iterator[Api]:
    with running_api(pool, broker_url=found_services.broker_url) as running:
        yield running


def test_the_published_schema_names_every_endpoint_of_the_design(api: Api) -> None:
    paths = httpx.get(f"{api.url}/openapi.json", timeout=10).json()["paths"]
    assert {
        "/v1/orders", "/v1/orders/{order_id}", "/v1/adapters", "/pay/{order_id}",
        "/pay/{order_id}/status", "/v1/callbacks/{adapter}", "/v1/wallets/{user_id}",
        "/v1/wallets/{user_id}/entries", "/v1/wallets/{user_id}/debit", "/healthz", "/readyz",
        "/metrics",
    } <= set(paths)  # fmt: skip
    assert set(paths["/v1/orders/{order_id}"]) == {"get", "delete"}


def test_generated_requests_get_no_5xx_and_answers_that_match_the_schema(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    _, key = api.ctx.keys.create("schemathesis")
    headers = {"Authorization": f"Bearer {key}"}
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, authorised=st.booleans())
    def run(case: Any, authorised: bool) -> None:
        sent = dict(case.headers or {})
        if authorised and "Authorization" not in sent:
            sent |= headers
        response = case.call(base_url=api.url, headers=sent)
        case.validate_response(response, checks=CHECKS)

    run()


def test_invalid_order_bodies_are_refused(api: Api) -> None:
    """Negative data on the create endpoint must never be accepted (no order from bad input)."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    _, key = api.ctx.keys.create("schemathesis-negative")
    create = schema["/v1/orders"]["POST"]

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=create.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def run(case: Any) -> None:
        response = case.call(base_url=api.url, headers={"Authorization": f"Bearer {key}"})
        case.validate_response(response, checks=[*CHECKS, negative_data_rejection])

    run()
