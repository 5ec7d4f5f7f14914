"""Fakes for driving the real Engine without PostgreSQL, a network or real time.

The engine, the transport, the adapters and the state machine are the real ones; only the
async repository (a dict that enforces the transition table, the compare-and-set and the lease,
with ``Orders.get`` and ``Orders.write``), the
wire (``httpx.MockTransport`` answering by method and path) and the clock are replaced. The
sweeper's part, claiming a due order with a new lease at its ``next_run_at``, is done by
:func:`drive`, which moves the fake clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, cast

import httpx

from adapters import registry, yookassa
from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    Invoice,
    InvoiceMayExist,
    MalformedResponse,
    PspRequest,
    PspResponse,
    SettingSpec,
    StatusReport,
)
from adapters.testing import SAMPLE_TIME, sample_order
from dispatcher.policy import DispatchPolicy
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import Action, action_for
from dispatcher.worker.engine import Engine
from orders.errors import OrderNotFound, StaleOrder
from orders.model import Order, PaidHook
from orders.money import Money
from orders.repository import Orders, Write
from orders.status import OrderStatus, check_transition
from tests.dispatch_support import FAST

S = OrderStatus
NOW = SAMPLE_TIME + timedelta(minutes=10)
LEASE = uuid.UUID("00000000-0000-4000-8000-00000000beef")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yookassa"
PAYMENT_ID = "2f3b588d-000f-5000-8000-1d6e87c7fbde"
POLICY = replace(FAST, retries=0, breaker_failures=1000, breaker_reset=30.0)

Move = tuple[OrderStatus, OrderStatus, dict[str, Any]]


class FakeClock:
    """The engine's clock, moved by the test instead of by waiting."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def set(self, moment: datetime) -> None:
        """Jump forward to ``moment``; time never runs backwards."""
        self.now = max(self.now, moment)


class FakeOrders:
    """The async repository's calls the engine and ``settle.apply`` make (``get`` and
    ``write``), on a dict, with the real state machine."""

    def __init__(self, *orders: Order, clock: Callable[[], datetime] = lambda: NOW) -> None:
        self.orders = {order.id: order for order in orders}
        self.moves: list[Move] = []
        self.actors: list[str] = []  # who wrote each move
        self.withins = 0  # writes run in a transaction of their own, with ``within``
        self.clock = clock

    async def get(self, order_id: uuid.UUID, *, site: str | None = None) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise OrderNotFound(str(order_id))
        return order

    async def write(
        self,
        write: Write,
        *,
        within: Callable[[Any, Order], Awaitable[None]] | None = None,
        conn: Any = None,
    ) -> Order:
        """One write, as ``Orders.write``: ``within`` (the billing hook) runs after the update
        in the same transaction, and if it raises nothing is kept."""
        before = (dict(self.orders), list(self.moves), list(self.actors))
        moved = self._write(write)
        if isinstance(moved, Exception):
            raise moved
        if within is not None:
            self.withins += 1
            try:
                await within(None, moved)
            except Exception:
                self.orders, self.moves, self.actors = before
                raise
        return moved

    def _write(self, write: Write) -> Order | Exception:
        current = self.orders.get(write.order_id)
        if current is None:
            return OrderNotFound(str(write.order_id))
        if write.token is not None and current.lease_token != write.token:
            return StaleOrder("lease")
        if write.expected is not None and current.status is not write.expected:
            return StaleOrder("status")
        changes = dict(write.changes)
        if write.to is not None:
            check_transition(current.status, write.to)
            changes["status"] = write.to
            if write.to is S.PAID:
                changes["paid_at"] = self.clock()
            self.moves.append((current.status, write.to, dict(write.detail)))
            self.actors.append(write.actor)
        if not write.keep_lease:
            changes.update(lease_token=None, lease_until=None)
        moved = replace(current, **changes)
        self.orders[moved.id] = moved
        return moved

    def statuses(self) -> list[tuple[OrderStatus, OrderStatus]]:
        """The moves written, without their details."""
        return [(start, to) for start, to, _ in self.moves]


# A wire answer: a response, or a transport error raised as the request goes out.
Answer = httpx.Response | type[httpx.TransportError]


@dataclass
class Wire:
    """A payment system behind httpx.MockTransport: answers by (method, path), logs requests.

    Answers are served in order; the last one repeats.
    """

    answers: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self.answers.setdefault((method, path), []).extend(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.answers.get((request.method, request.url.path))
        assert queue, f"unexpected {request.method} {request.url.path}"
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, httpx.Response):
            # A copy: one answer may be served again, in this test or another.
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        raise answer(f"{answer.__name__} (a fake wire's fault)", request=request)

    @property
    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def yk(name: str, status_code: int = 200, **changes: Any) -> httpx.Response:
    """A YooKassa answer from the fixtures (reconstructed from YooKassa's API reference)."""
    body = json.loads((FIXTURES / f"{name}.json").read_text())
    body.update(changes)
    return httpx.Response(status_code, json=body)


def yookassa_runtime(policy: DispatchPolicy = POLICY, **values: str) -> AdapterRuntime:
    configured = {"SHOP_ID": "100500", "SECRET_KEY": "test_key", "API_URL": "https://yk.test/v3"}
    settings = registry.resolve_settings(yookassa.adapter, configured | values, environ={})
    return AdapterRuntime(yookassa.adapter, settings, policy)


def leased(**changes: Any) -> Order:
    """The sample order of the YooKassa adapter, claimed with the lease ``LEASE``."""
    return replace(sample_order(adapter="yookassa"), lease_token=LEASE, **changes)


def engine_for(
    repo: FakeOrders,
    runtime: AdapterRuntime,
    wire: Wire,
    clock: Callable[[], datetime],
    paid_hook: PaidHook | None = None,
) -> Engine:
    return Engine(
        cast(Orders, repo),
        {runtime.name: runtime},
        paid_hook=paid_hook,
        clock=clock,
        http_transport=httpx.MockTransport(wire),
    )


def run_step(
    runtime: AdapterRuntime,
    wire: Wire,
    order: Order,
    action: Action,
    *,
    repo: FakeOrders | None = None,
    now: datetime = NOW,
    paid_hook: PaidHook | None = None,
) -> tuple[Order, FakeOrders, Engine]:
    """One engine step for ``order``; the order as written afterwards."""
    repo = repo or FakeOrders(order, clock=lambda: now)
    repo.orders.setdefault(order.id, order)

    async def go() -> Engine:
        engine = engine_for(repo, runtime, wire, lambda: now, paid_hook)
        try:
            await engine.run(order.id, order.lease_token or LEASE, action)
        finally:
            await engine.aclose()
        return engine

    engine = asyncio.run(go())
    return repo.orders[order.id], repo, engine


@dataclass(frozen=True, slots=True)
class Look:
    """One step :func:`drive` ran: when, what for, and the order it left."""

    at: datetime
    action: Action
    after: Order


def drive(
    runtime: AdapterRuntime,
    wire: Wire,
    order: Order,
    *,
    clock: FakeClock,
    repo: FakeOrders | None = None,
    until: Callable[[Order], bool] = lambda order: False,
    max_steps: int = 200,
) -> tuple[list[Look], FakeOrders]:
    """Run the order's steps as the sweeper would schedule them, on one engine.

    Each round sets the clock to the order's ``next_run_at`` (never backwards), claims it with
    a fresh lease, and runs the action :func:`action_for` picks. Stops when nothing is left to
    do (no ``next_run_at`` or no action), when ``until`` holds, or after ``max_steps`` (which
    fails the test: a step that schedules nothing new would otherwise loop forever).
    """
    repo = repo or FakeOrders(order, clock=clock)
    repo.orders.setdefault(order.id, order)
    looks: list[Look] = []

    async def go() -> None:
        engine = engine_for(repo, runtime, wire, clock)
        try:
            for _ in range(max_steps):
                current = repo.orders[order.id]
                if current.next_run_at is None or until(current):
                    return
                clock.set(current.next_run_at)
                action = action_for(current, clock.now)
                if action is None:
                    return
                token = uuid.uuid4()
                repo.orders[order.id] = replace(current, lease_token=token)
                await engine.run(order.id, token, action)
                looks.append(Look(clock.now, action, repo.orders[order.id]))
            raise AssertionError(f"still not done after {max_steps} steps: {looks[-1]}")
        finally:
            await engine.aclose()

    asyncio.run(go())
    return looks, repo


def counter(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


class NoKeys(Adapter):
    """A payment system without idempotency keys that answers a repeated create "it may exist"
    (T-Bank's duplicate OrderId) and finds invoices by our reference."""

    name: ClassVar[str] = "nokeys"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False, lookup_by_reference=True
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default="https://nokeys.test"),
    )

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("POST", f"{settings.api_url}/init", "create", json={"ref": order.number})

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        body = response.json()
        if body.get("error") == "duplicate":
            raise InvoiceMayExist("an invoice for this reference exists")
        return Invoice(body["id"], body.get("pay_url"))

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("GET", f"{settings.api_url}/state/{order.psp_id}", "status")

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        raise MalformedResponse("not used here")

    def build_lookup(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("POST", f"{settings.api_url}/check", "lookup", json={"ref": order.number})

    def parse_lookup(
        self, order: Order, response: PspResponse, settings: AdapterSettings
    ) -> Invoice | None:
        body = response.json()
        return Invoice(body["id"], body.get("pay_url")) if body.get("id") else None


class NoLookup(NoKeys):
    """Without idempotency keys and without a lookup: only a person can tell whether an
    earlier create made an invoice."""

    name: ClassVar[str] = "nolookup"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False, lookup_by_reference=False
    )


class Cancels(NoKeys):
    """A payment system that cancels pending invoices and reports states as plain JSON:
    ``{"state": "<canonical state>", "amount": <minor units>, "currency": "RUB"}``."""

    name: ClassVar[str] = "cancels"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False, lookup_by_reference=True, cancel=True
    )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        body = response.json()
        money = Money(body["amount"], body["currency"]) if "amount" in body else None
        state = CanonicalState(body["state"])
        return StatusReport(state, order.psp_id, money, raw_status=body["state"])

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("POST", f"{settings.api_url}/cancel/{order.psp_id}", "cancel")


def plain(state: str, amount: int = 10000, currency: str = "RUB") -> httpx.Response:
    """An answer of :class:`Cancels`: the sample order's 100.00 RUB unless told otherwise."""
    return httpx.Response(200, json={"state": state, "amount": amount, "currency": currency})


def fake_runtime(adapter: Adapter, policy: DispatchPolicy = POLICY) -> AdapterRuntime:
    settings = registry.resolve_settings(adapter, {}, environ={})
    return AdapterRuntime(adapter, settings, policy)


def nokeys_runtime(policy: DispatchPolicy = POLICY) -> AdapterRuntime:
    return fake_runtime(NoKeys(), policy)
