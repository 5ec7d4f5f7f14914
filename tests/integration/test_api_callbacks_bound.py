"""A payment system sending many notifications at once gets at most half the API's pool: the
buyers' pages still find a connection (issue #15 item 3)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from dispatcher.api import callbacks
from orders import OrderStatus
from orders.db import Pool
from tests import dispatch_support
from tests.integration.test_api import Api, running_api
from tests.integration.test_api_callbacks import awaiting, signed, webhook

pytestmark = pytest.mark.integration
S = OrderStatus
WAIT = 10.0  # seconds any awaited condition gets before the test fails


class CountCallbacks:
    """Counts the notifications that reached the app."""

    arrived: ClassVar[int] = 0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/callbacks/"):
            type(self).arrived += 1
        await self.app(scope, receive, send)


class HeldHook:
    """A paid hook that holds each paid transaction (and its connection) open until released."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Event | None = None

    async def __call__(self, tx: Any, event: Any) -> None:
        if self._gate is None:
            self._loop, self._gate = asyncio.get_running_loop(), asyncio.Event()
        with self._lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            await self._gate.wait()
        finally:
            with self._lock:
                self.inside -= 1

    def release(self) -> None:
        if self._loop is not None and self._gate is not None:
            self._loop.call_soon_threadsafe(self._gate.set)


@pytest.fixture(scope="module")
def api(pool: Pool) -> Iterator[Api]:
    with running_api(pool, middleware=[CountCallbacks]) as running:
        yield running


def wait_until(condition: Callable[[], bool], what: str) -> None:
    dispatch_support.wait_until(condition, WAIT, what)


def test_notifications_at_once_leave_the_pages_a_connection(
    api: Api, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an API whose paid transactions are held open (and notifications that wait for
    # their turn as long as the test may take), and as many orders awaiting payment as its
    # async pool has connections
    monkeypatch.setattr(callbacks, "SLOT_WAIT", 3 * WAIT)
    size = api.ctx.pool_size
    hook = HeldHook()
    api.ctx.paid_hook = hook
    orders = [awaiting(api, site) for _ in range(size)]
    page = awaiting(api, site)
    CountCallbacks.arrived = 0

    def notify(order: Any) -> int:
        body = webhook(order, "paid")
        with httpx.Client(base_url=api.url, timeout=3 * WAIT) as client:
            return client.post(
                "/v1/callbacks/sandbox", content=body, headers=signed(body)
            ).status_code

    with ThreadPoolExecutor(size) as senders:
        try:
            # When the payment system notifies every one of them at once
            answers = [senders.submit(notify, order) for order in orders]
            wait_until(
                lambda: CountCallbacks.arrived == size and hook.inside == size // 2,
                "every notification arrived, half of the pool's worth in their transactions",
            )
            # Then a buyer's page is still answered, and no more notifications got a connection
            with httpx.Client(base_url=api.url, timeout=WAIT) as client:
                shown = client.get(f"/pay/{page.id}/status")
            assert shown.status_code == 200
            assert shown.json()["state"] == "ready"
            assert hook.inside == size // 2
        finally:
            hook.release()
        # And once the transactions go on, every notification is applied
        assert [answer.result() for answer in answers] == [200] * size
    assert hook.peak == size // 2
    assert {api.repo.get(order.id).status for order in orders} == {S.PAID}


def test_a_notification_not_given_a_turn_soon_is_answered_503_to_be_sent_again(
    api: Api, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an API whose notification slots are all taken by held paid transactions,
    monkeypatch.setattr(callbacks, "SLOT_WAIT", 0.05)
    slots = api.ctx.pool_size // 2
    hook = HeldHook()
    api.ctx.paid_hook = hook
    held = [awaiting(api, site) for _ in range(slots)]
    late = awaiting(api, site)

    def notify(order: Any) -> httpx.Response:
        body = webhook(order, "paid")
        with httpx.Client(base_url=api.url, timeout=3 * WAIT) as client:
            return client.post("/v1/callbacks/sandbox", content=body, headers=signed(body))

    with ThreadPoolExecutor(slots) as senders:
        try:
            answers = [senders.submit(notify, order) for order in held]
            wait_until(lambda: hook.inside == slots, "every slot held")
            # when one more notification arrives, then it is answered 503 with Retry-After
            # once its wait is over, and its order is left as it was
            refused = notify(late)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "busy"
            assert refused.headers["Retry-After"] == "1"
            assert api.repo.get(late.id).status is S.AWAITING_PAYMENT
        finally:
            hook.release()
        assert [answer.result().status_code for answer in answers] == [200] * slots
    # and sent again once a slot is free, it is applied.
    assert notify(late).status_code == 200
    assert api.repo.get(late.id).status is S.PAID
