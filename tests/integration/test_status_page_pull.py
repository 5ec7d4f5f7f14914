"""The buyer's open status page and the poll it pulls forward (issue #15 item 3): a look that
pulled the poll tells the page to look again soon, when that poll has been answered, and a page
looking at its usual pace pulls a poll whenever the dispatcher has been quiet for a second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from dispatcher.api.pay import PULLED_RETRY_MS, WAITING_RETRY_MS
from orders import OrderStatus
from orders.db import Pool
from tests.integration.test_api import ORDER, Api, running_api

S = OrderStatus


@pytest.fixture(scope="module")
def api(pool: Pool, found_services: Any) -> Iterator[Api]:
    with running_api(pool, broker_url=found_services.broker_url) as running:
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


def awaiting(api: Api, http: httpx.Client, *, quiet_for: timedelta) -> tuple[UUID, datetime]:
    """An order awaiting payment, next polled in 5 minutes, last touched ``quiet_for`` ago."""
    auth = api.site_key("pull-site")
    oid = UUID(http.post("/v1/orders", json=ORDER, headers=auth).json()["id"])
    api.repo.transition(oid, S.NEW, S.SUBMITTING, actor="test")
    later = datetime.now(UTC) + timedelta(minutes=5)
    api.repo.transition(
        oid, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"p-{oid}",
        pay_url="https://psp.example/pay/3", next_run_at=later,
    )  # fmt: skip
    with api.ctx.pool.connection() as conn:
        conn.execute("UPDATE orders SET updated_at = now() - %s WHERE id = %s", (quiet_for, oid))
    return oid, later


def pulled(api: Api, oid: UUID) -> bool:
    due = api.repo.get(oid).next_run_at
    return due is not None and due <= datetime.now(UTC)


def test_a_look_that_pulled_the_poll_forward_tells_the_page_to_look_again_soon(
    api: Api, http: httpx.Client
) -> None:
    # Given an order awaiting payment that the dispatcher last looked at a minute ago
    oid, later = awaiting(api, http, quiet_for=timedelta(minutes=1))
    # When the buyer's page asks for its status
    first = http.get(f"/pay/{oid}/status").json()
    # Then the poll is due now, and the page asks again once that poll has been answered
    assert pulled(api, oid)
    assert first["state"] == "ready"
    assert first["retry_after_ms"] == PULLED_RETRY_MS < WAITING_RETRY_MS
    # A look that pulls nothing (debounced, the poll already due) keeps the page's usual pace
    with api.ctx.pool.connection() as conn:
        conn.execute("UPDATE orders SET next_run_at = %s WHERE id = %s", (later, oid))
    second = http.get(f"/pay/{oid}/status").json()
    assert not pulled(api, oid)
    assert second["retry_after_ms"] == WAITING_RETRY_MS


def test_a_page_looking_at_its_usual_pace_pulls_a_poll_after_a_second_of_quiet(
    api: Api, http: httpx.Client
) -> None:
    # Given an order whose dispatcher looked 1.2 s ago and whose page last pulled a poll forward
    # one page interval ago (under the old 2 s debounce neither would have let it pull)
    oid, _ = awaiting(api, http, quiet_for=timedelta(seconds=1.2))
    api.ctx.views[oid] = time.monotonic() - WAITING_RETRY_MS / 1000
    # When the page looks again
    answer = http.get(f"/pay/{oid}/status").json()
    # Then it pulls the poll forward
    assert pulled(api, oid)
    assert answer["retry_after_ms"] == PULLED_RETRY_MS


def test_a_finished_order_pulls_nothing_and_the_page_asks_rarely(
    api: Api, http: httpx.Client
) -> None:
    oid, _ = awaiting(api, http, quiet_for=timedelta(minutes=1))
    api.repo.transition(oid, S.AWAITING_PAYMENT, S.PAID, actor="test")
    answer = http.get(f"/pay/{oid}/status").json()
    assert answer["state"] == "paid"
    assert answer["retry_after_ms"] == 10_000
