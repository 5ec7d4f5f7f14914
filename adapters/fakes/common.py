"""What every local fake shares: a store of payments, the control API, faults and a runner.

Each fake (``adapters/fakes/<name>.py``) serves its payment system's merchant API as the public
reference describes it, and the same control API, so the end-to-end tests and the demo drive any
of them alike::

    POST /_control/pay          {"order_id", "number", "psp_id", "pay_url"}: the buyer pays
    POST /_control/decline      same body: the buyer's payment is declined
    POST /_control/faults       {"accept_then_timeout": N}: the next N creates are recorded,
                                then answered only after the client has given up;
                                {"refund_accept_then_timeout": N} the same for refunds;
                                {"refuse_refunds": N}: the next N refunds are refused (the
                                payment system's definite "no"; nothing is refunded)
    POST /_control/notifications {"enabled": false}: stop (or resume) push notifications
    GET  /_control/stats        {"invoices": {order_id: n}, "calls": {operation: n},
                                "refunds": {key: n}}: invoices made per order (a replayed
                                idempotent create makes none), requests received per
                                operation, and refunds made per idempotency key (per payment
                                where the payment system takes no key)
    GET  /_control/             this list

The control API is unauthenticated: a fake binds to a loopback address only. The body of pay
and decline names the order every way paydispatch knows it; each fake uses what its payment
system would (our id, our number, its own payment id, or the pay URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

CONTROL_ROUTES = {
    "POST /_control/pay": "the buyer pays: body {order_id, number, psp_id, pay_url}",
    "POST /_control/decline": "the payment is declined: same body",
    "POST /_control/faults": "{accept_then_timeout: N}: the next N creates hang after recording; "
    "{refund_accept_then_timeout: N}: the same for refunds; {refuse_refunds: N}: refuse the next N",
    "POST /_control/notifications": "{enabled: bool}: push notifications on or off",
    "GET /_control/stats": "invoices made per order, requests per operation, refunds per key",
}


@dataclass(frozen=True, slots=True)
class PaymentRef:
    """How the control API names a payment: every identifier paydispatch has for it."""

    order_id: str | None = None
    number: int | None = None
    psp_id: str | None = None
    pay_url: str | None = None

    @classmethod
    def from_body(cls, body: Any) -> PaymentRef:
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        number = body.get("number")
        return cls(
            order_id=body.get("order_id"),
            number=int(number) if number is not None else None,
            psp_id=body.get("psp_id"),
            pay_url=body.get("pay_url"),
        )


@dataclass
class FakeState:
    """Counters, faults and switches every fake keeps; a fake's own store extends it.

    Thread-safe: the control API, the merchant API and the notification sender may run on
    different threads.
    """

    notifications: bool = True
    accept_then_timeout: int = 0
    invoices: Counter[str] = field(default_factory=Counter)  # our order id -> invoices made
    calls: Counter[str] = field(default_factory=Counter)  # operation -> requests received
    lock: threading.Lock = field(default_factory=threading.Lock)
    holds: list[asyncio.Event] = field(default_factory=list)
    hold_seconds: float = 60.0
    # Refunds (issue #14): faults, and refunds made per idempotency key (or per payment).
    refund_accept_then_timeout: int = 0
    refuse_refunds: int = 0
    refunds: Counter[str] = field(default_factory=Counter)

    def count(self, operation: str) -> None:
        """A request for ``operation`` arrived (counted whatever its answer)."""
        with self.lock:
            self.calls[operation] += 1

    def invoice_made(self, order_id: str) -> None:
        """A new invoice (session, order, payment) was made for our order ``order_id``."""
        with self.lock:
            self.invoices[order_id] += 1

    def take_timeout_fault(self) -> bool:
        """True once for each of the next ``accept_then_timeout`` creates."""
        with self.lock:
            if self.accept_then_timeout > 0:
                self.accept_then_timeout -= 1
                return True
            return False

    def refund_made(self, key: str) -> None:
        """A refund was made under ``key`` (our idempotency key, or the payment's id)."""
        with self.lock:
            self.refunds[key] += 1

    def take_refund_timeout_fault(self) -> bool:
        """True once for each of the next ``refund_accept_then_timeout`` refunds."""
        with self.lock:
            if self.refund_accept_then_timeout > 0:
                self.refund_accept_then_timeout -= 1
                return True
            return False

    def take_refusal_fault(self) -> bool:
        """True once for each of the next ``refuse_refunds`` refunds."""
        with self.lock:
            if self.refuse_refunds > 0:
                self.refuse_refunds -= 1
                return True
            return False

    async def hang(self) -> None:
        """Hold a request until the client gave up (or the server stops)."""
        event = asyncio.Event()
        with self.lock:
            self.holds.append(event)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.hold_seconds)

    def release_holds(self) -> None:
        with self.lock:
            holds, self.holds = self.holds, []
        for event in holds:
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                event._loop.call_soon_threadsafe(event.set)  # type: ignore[attr-defined]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "invoices": dict(self.invoices),
                "calls": dict(self.calls),
                "refunds": dict(self.refunds),
            }


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except ValueError:
        return None


def control_routes(
    state: FakeState,
    pay: Callable[[PaymentRef], Awaitable[None]],
    decline: Callable[[PaymentRef], Awaitable[None]],
) -> list[BaseRoute]:
    """The control API over ``state`` and the fake's own ``pay`` and ``decline``."""

    async def index(request: Request) -> Response:
        return JSONResponse(CONTROL_ROUTES)

    def acting(action: Callable[[PaymentRef], Awaitable[None]]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            try:
                ref = PaymentRef.from_body(await _json(request))
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, 400)
            try:
                await action(ref)
            except LookupError as exc:
                return JSONResponse({"error": f"no such payment: {exc}"}, 404)
            return JSONResponse({"ok": True})

        return endpoint

    async def faults(request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, 400)
        known = ("accept_then_timeout", "refund_accept_then_timeout", "refuse_refunds")
        with state.lock:
            # Each fault named is set; the others keep their count ({} clears the create one).
            for name in known if any(k in body for k in known) else known[:1]:
                setattr(state, name, int(body.get(name, 0)))
            return JSONResponse(
                {
                    "accept_then_timeout": state.accept_then_timeout,
                    "refund_accept_then_timeout": state.refund_accept_then_timeout,
                    "refuse_refunds": state.refuse_refunds,
                }
            )

    async def notifications(request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            return JSONResponse({"error": "send {enabled: true|false}"}, 400)
        state.notifications = body["enabled"]
        return JSONResponse({"enabled": state.notifications})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    return [
        Route("/_control/", index, methods=["GET"]),
        Route("/_control/pay", acting(pay), methods=["POST"]),
        Route("/_control/decline", acting(decline), methods=["POST"]),
        Route("/_control/faults", faults, methods=["POST"]),
        Route("/_control/notifications", notifications, methods=["POST"]),
        Route("/_control/stats", stats, methods=["GET"]),
    ]


def fake_app(state: FakeState, routes: list[BaseRoute]) -> Starlette:
    """A Starlette app whose held requests are released when the server stops."""
    app = Starlette(routes=routes)
    app.state.fake = state
    return app


@contextlib.contextmanager
def running_fake(app: Starlette) -> Iterator[str]:
    """Serve a fake from a background thread on a free loopback port; yields its base URL."""
    from adapters.sandbox.runner import serve_in_thread

    with serve_in_thread(app) as url:
        yield url


class FakeControl:
    """A client of the control API, for tests and the demo."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=10.0)

    def close(self) -> None:
        self.client.close()

    def _act(self, action: str, ref: PaymentRef) -> None:
        body = {k: v for k, v in vars_of(ref).items() if v is not None}
        response = self.client.post(f"/_control/{action}", json=body)
        response.raise_for_status()

    def pay(self, ref: PaymentRef) -> None:
        self._act("pay", ref)

    def decline(self, ref: PaymentRef) -> None:
        self._act("decline", ref)

    def accept_then_timeout(self, count: int = 1) -> None:
        self.client.post("/_control/faults", json={"accept_then_timeout": count}).raise_for_status()

    def refund_faults(self, accept_then_timeout: int = 0, refuse: int = 0) -> None:
        """The next refunds: ``accept_then_timeout`` made then never answered; ``refuse``
        refused (checked first)."""
        body = {"refund_accept_then_timeout": accept_then_timeout, "refuse_refunds": refuse}
        self.client.post("/_control/faults", json=body).raise_for_status()

    def notifications(self, enabled: bool) -> None:
        self.client.post("/_control/notifications", json={"enabled": enabled}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.client.get("/_control/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def vars_of(ref: PaymentRef) -> dict[str, Any]:
    return {
        "order_id": ref.order_id,
        "number": ref.number,
        "psp_id": ref.psp_id,
        "pay_url": ref.pay_url,
    }
