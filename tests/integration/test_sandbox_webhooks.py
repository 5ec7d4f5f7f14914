"""The sandbox's webhook sender under load and failure: a bounded number of requests on the wire,
and every failed attempt counted by its reason (issue #15 item 3).

Each test runs its own sandbox and receiver over real HTTP; waits are on conditions with
deadlines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters.sandbox import SandboxConfig
from adapters.sandbox.runner import running_sandbox, serve_in_thread
from tests import dispatch_support
from tests.integration.test_sandbox_server import invoice_body

pytestmark = pytest.mark.integration

API_KEY = "it-api-key"
WAIT = 10.0  # seconds any awaited condition gets before the test fails


class HoldingReceiver:
    """Answers 200, but holds every request until :meth:`release`; counts what it holds."""

    def __init__(self) -> None:
        self.held = 0
        self.peak = 0
        self.received = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Event | None = None

    async def endpoint(self, request: Request) -> Response:
        await request.body()
        if self._gate is None:
            self._loop, self._gate = asyncio.get_running_loop(), asyncio.Event()
        with self._lock:
            self.held += 1
            self.received += 1
            self.peak = max(self.peak, self.held)
        try:
            await self._gate.wait()
        finally:
            with self._lock:
                self.held -= 1
        return PlainTextResponse("ok")

    def release(self) -> None:
        if self._loop is not None and self._gate is not None:
            self._loop.call_soon_threadsafe(self._gate.set)


@contextlib.contextmanager
def receiving(endpoint: Callable[[Request], Any]) -> Iterator[str]:
    """The URL of ``endpoint``, served over real HTTP while the block runs."""
    app = Starlette(routes=[Route("/hooks", endpoint, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield f"{url}/hooks"


@contextlib.contextmanager
def sandbox(**config: Any) -> Iterator[httpx.Client]:
    """A sandbox with these settings, and a client of its API."""
    with (
        running_sandbox(SandboxConfig(api_key=API_KEY, **config)) as handle,
        httpx.Client(
            base_url=handle.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=WAIT
        ) as client,
    ):
        yield client


def wait_until(condition: Callable[[], bool], what: str) -> None:
    dispatch_support.wait_until(condition, WAIT, what)


def pay_invoices(client: httpx.Client, notify_url: str, count: int) -> None:
    """``count`` invoices made and paid: one webhook each to ``notify_url``."""
    for _ in range(count):
        body = invoice_body(notify_url=notify_url)
        made = client.post(
            "/api/v1/invoices", json=body, headers={"Idempotency-Key": body["order_id"]}
        )
        assert made.status_code == 201, made.text
        client.post(f"/pay/{made.json()['id']}/pay").raise_for_status()


def webhooks(client: httpx.Client) -> dict[str, Any]:
    found: dict[str, Any] = client.get("/_control/stats").json()["webhooks"]
    return found


def test_a_slow_receiver_gets_at_most_concurrency_webhooks_at_once_and_the_rest_wait() -> None:
    # Given a receiver that holds every request, and a sandbox sending two webhooks at a time
    receiver = HoldingReceiver()
    with receiving(receiver.endpoint) as url, sandbox(webhook_concurrency=2) as client:
        try:
            # When six invoices are paid
            pay_invoices(client, url, 6)
            # Then two requests are on the wire and four wait their turn in the sandbox
            wait_until(
                lambda: receiver.held == 2 and webhooks(client)["pending"] == 6,
                "two webhooks held by the receiver, six pending",
            )
            assert webhooks(client)["in_flight"] == 2
        finally:
            receiver.release()
        # And once the receiver answers, all six are delivered, each at its first attempt
        wait_until(lambda: webhooks(client).get("delivered") == 6, "six webhooks delivered")
        stats = webhooks(client)
    assert receiver.peak == 2
    assert receiver.received == 6
    assert stats["attempts"] == 6
    assert "failed" not in stats
    assert stats["attempt_failures"] == {}
    assert stats["pending"] == 0


async def unavailable(request: Request) -> Response:
    return PlainTextResponse("busy", 503)


def test_each_failed_attempt_is_counted_by_its_reason() -> None:
    # Given a receiver that answers 503, and an address where nothing listens
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{unused.getsockname()[1]}/hooks"
    with (
        receiving(unavailable) as busy_url,
        sandbox(webhook_attempts=2, webhook_backoff=0.01) as client,
    ):
        # When an invoice notifies each of them, and each webhook is given up
        pay_invoices(client, busy_url, 1)
        pay_invoices(client, closed_url, 1)
        wait_until(lambda: webhooks(client).get("failed") == 2, "both webhooks given up")
        stats = webhooks(client)
    # Then every failed attempt has its reason
    assert stats["attempts"] == 4
    assert stats["attempt_failures"] == {"HTTP 503": 2, "connection refused": 2}
    assert "delivered" not in stats


def test_a_webhook_held_back_for_reordering_counts_as_pending() -> None:
    # Given a sandbox reordering webhooks with a window longer than the test
    receiver = HoldingReceiver()
    with (
        receiving(receiver.endpoint) as url,
        sandbox(reorder_window=3 * WAIT) as client,
    ):
        client.post("/_control/webhooks", json={"reorder": True}).raise_for_status()
        try:
            # When one invoice is paid, its webhook is held back for a second one to swap with,
            pay_invoices(client, url, 1)
            # then it is pending, though neither queued for sending nor on the wire
            assert webhooks(client) | {"attempt_failures": {}} == {
                "queued": 1,
                "attempt_failures": {},
                "pending": 1,
                "in_flight": 0,
            }
            # and a second one sends both, the second first.
            pay_invoices(client, url, 1)
            wait_until(lambda: receiver.received == 2, "both webhooks sent")
        finally:
            receiver.release()
        wait_until(lambda: webhooks(client).get("delivered") == 2, "both delivered")
        assert webhooks(client)["pending"] == 0
