"""The webhook hook end to end: outbox row in the paid transaction, sweeper, dramatiq ``deliver``
actor on the engine's loop, a real HTTP receiver that fails for a while, parking and replay."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

import dramatiq
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.sandbox.runner import serve_in_thread
from dispatcher import actors
from dispatcher.billing.receiver import HEADER, verify
from dispatcher.billing.webhook import Backoff, Delivery, Outbox
from dispatcher.engine import Engine
from dispatcher.host import EngineHost
from dispatcher.services import Services
from dispatcher.sweeper import Sweeper
from orders import Money, NewOrder, OrderStatus
from orders.repository import OrderRepository, Pool
from tests.conftest import cli
from tests.dispatch_support import own_namespace, wait_until

S = OrderStatus
SECRET = "whsec-test-0123456789abcdef"


@dataclass
class Receiver:
    """A site's webhook endpoint: records every request; paths decide the answer."""

    url: str = ""
    fail_first: int = 0  # /hook answers 500 to this many requests first
    failing: bool = False  # /flag answers 500 while set
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    slow_started: int = 0
    slow_finished: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.requests if p == path]

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        with self.lock:
            self.requests.append((path, dict(request.headers), body))
            count = sum(1 for p, _, _ in self.requests if p == path)
        if path == "/slow":
            self.slow_started += 1
            while not self.release.is_set():  # hangs until the test ends
                await asyncio.sleep(0.05)
            self.slow_finished += 1
        if path == "/hook" and count <= self.fail_first:
            return Response("temporarily broken", status_code=500)
        if path == "/flag" and self.failing:
            return Response("still broken", status_code=503)
        return Response("ok")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    app = Starlette(
        routes=[Route(p, state.endpoint, methods=["POST"]) for p in ("/hook", "/slow", "/flag")]
    )
    with serve_in_thread(app) as url:
        state.url = url
        yield state
        state.release.set()


@dataclass
class Billing:
    repo: OrderRepository
    outbox: Outbox
    delivery: Delivery


@pytest.fixture
def billing(
    found_services: Services, database_url: str, pool: Pool, repo: OrderRepository
) -> Iterator[Billing]:
    """Sweeper thread + dramatiq worker on the billing queue + the engine host's loop."""
    broker = actors.make_broker(found_services.broker_url, namespace=own_namespace())
    dispatch = actors.Dispatch(broker, ["sandbox"])
    host = EngineHost(Engine(repo, {}, db_threads=1), max_in_flight=50)
    host.start()
    delivery = Delivery(
        pool,
        SECRET,
        timeout=1.0,
        backoff=Backoff(first=timedelta(seconds=0.05), cap=timedelta(seconds=0.3)),
    )
    actors.set_host(host)
    actors.set_delivery(delivery)
    worker = dramatiq.Worker(broker, queues={actors.BILLING_QUEUE}, worker_threads=2)
    worker.start()
    outbox = Outbox(pool, max_age=timedelta(minutes=5))
    sweeper = Sweeper(repo, dispatch, [], interval=0.1, lease=timedelta(seconds=30), outbox=outbox)
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop, database_url), daemon=True)
    thread.start()
    try:
        yield Billing(repo, outbox, delivery)
    finally:
        stop.set()
        thread.join(timeout=10)
        worker.stop(timeout=5000)
        host.drain(timeout=5)
        asyncio.run_coroutine_threadsafe(delivery.aclose(), host.loop).result(timeout=10)
        host.stop()
        actors.set_host(None)
        actors.set_delivery(None)
        broker.close()


def pay(billing: Billing, site: str, url: str, *, outbox: Outbox | None = None) -> UUID:
    """An order moved to paid with the webhook hook writing its event for ``url``."""
    repo = billing.repo
    new = NewOrder(site=site, user_id="buyer", money=Money(1999, "EUR"), adapter="sandbox")
    order = repo.create(new).order
    repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test", next_run_at=None)
    repo.transition(order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", next_run_at=None)
    box = outbox or billing.outbox
    repo.transition(
        order.id,
        S.AWAITING_PAYMENT,
        S.PAID,
        actor="test",
        within=lambda conn, o: box.enqueue(conn, o, url),
    )
    return order.id


def outbox_row(pool: Pool, order_id: UUID) -> dict[str, Any]:
    with pool.connection() as conn:
        row = conn.execute("SELECT * FROM billing_outbox WHERE order_id = %s", (order_id,))
        found = row.fetchone()
    assert found is not None
    return found


def status(pool: Pool, order_id: UUID) -> str:
    return str(outbox_row(pool, order_id)["status"])


def test_receiver_sees_every_event_signed_with_a_stable_id_through_500s(
    billing: Billing, receiver: Receiver, pool: Pool, site: str
) -> None:
    # Given a receiver that answers 500 to its first four requests,
    receiver.fail_first = 4
    # when three orders are paid,
    orders = [pay(billing, site, f"{receiver.url}/hook") for _ in range(3)]
    # then every event ends delivered,
    wait_until(
        lambda: all(status(pool, o) == "delivered" for o in orders), timeout=30, what="delivered"
    )
    requests = receiver.seen("/hook")
    assert len(requests) >= 3 + 4
    by_event: dict[str, set[bytes]] = {}
    for headers, body in requests:
        # each request signed over its body, with the event id in the body and a header,
        event = verify(SECRET, headers[HEADER.lower()], body)
        assert headers["paydispatch-event-id"] == event["id"]
        by_event.setdefault(event["id"], set()).add(body)
    rows = {str(outbox_row(pool, o)["id"]): outbox_row(pool, o) for o in orders}
    # each event seen at least once, always with the same bytes (a stable id to deduplicate),
    assert set(by_event) == set(rows)
    assert all(len(bodies) == 1 for bodies in by_event.values())
    for event_id, row in rows.items():
        assert len(by_event[event_id]) == 1
        assert row["last_status"] == 200
        assert row["delivered_at"] is not None
    # and the retries show in the attempt counts: four failures spread over the events.
    assert sum(row["attempts"] for row in rows.values()) == len(requests)


def test_paid_event_body(billing: Billing, receiver: Receiver, pool: Pool, site: str) -> None:
    receiver.fail_first = 0
    order_id = pay(billing, site, f"{receiver.url}/hook")
    wait_until(lambda: status(pool, order_id) == "delivered", timeout=30, what="delivered")
    row = outbox_row(pool, order_id)
    bodies = [b for _, b in receiver.seen("/hook") if str(row["id"]).encode() in b]
    event = verify(SECRET, receiver.seen("/hook")[-1][0][HEADER.lower()], bodies[-1])
    assert event["type"] == "order.paid"
    assert event["data"]["order_id"] == str(order_id)
    assert event["data"]["amount"] == 1999
    assert event["data"]["currency"] == "EUR"
    assert event["data"]["amount_decimal"] == "19.99"
    assert event["data"]["late"] is False


def test_slow_and_unreachable_receivers_do_not_block_other_deliveries(
    billing: Billing, receiver: Receiver, pool: Pool, site: str
) -> None:
    receiver.fail_first = 0
    slow = pay(billing, site, f"{receiver.url}/slow")
    dead = pay(billing, site, "http://127.0.0.1:9/unreachable")
    wait_until(lambda: receiver.slow_started >= 1, timeout=10, what="slow request started")
    good = [pay(billing, site, f"{receiver.url}/hook") for _ in range(5)]
    wait_until(
        lambda: all(status(pool, o) == "delivered" for o in good), timeout=10, what="delivered"
    )
    # The good ones went through while the slow receiver still held its request open,
    assert receiver.slow_finished == 0
    # and the other two are retried, not lost.
    for order_id in (slow, dead):
        wait_until(lambda o=order_id: outbox_row(pool, o)["attempts"] >= 1, what="retried")
        row = outbox_row(pool, order_id)
        assert row["status"] == "pending"
        assert row["last_error"]


def test_event_is_parked_when_retries_run_out_and_replay_delivers_it(
    billing: Billing, receiver: Receiver, pool: Pool, site: str, database_url: str
) -> None:
    parked_before = REGISTRY.get_sample_value("paydispatch_billing_events_parked_total") or 0.0
    receiver.failing = True
    short = Outbox(pool, max_age=timedelta(seconds=1))
    order_id = pay(billing, site, f"{receiver.url}/flag", outbox=short)
    wait_until(lambda: status(pool, order_id) == "parked", timeout=20, what="parked")
    row = outbox_row(pool, order_id)
    assert row["parked_at"] is not None
    assert row["last_status"] == 503
    assert REGISTRY.get_sample_value("paydispatch_billing_events_parked_total") == (
        parked_before + 1
    )
    seen_before = len(receiver.seen("/flag"))
    assert seen_before == row["attempts"]
    # A parked event is left alone,
    billing.outbox.update_metrics()
    assert (REGISTRY.get_sample_value("paydispatch_billing_outbox_parked") or 0) >= 1
    # until ops replay it once the site is fixed.
    receiver.failing = False
    result = cli(database_url, "hooks", "replay", "--event", str(row["id"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"replaying {row['id']}" in result.stdout
    wait_until(lambda: status(pool, order_id) == "delivered", timeout=20, what="replayed")
    headers, body = receiver.seen("/flag")[-1]
    assert verify(SECRET, headers[HEADER.lower()], body)["id"] == str(row["id"])
    nothing = cli(database_url, "hooks", "replay", "--all")
    assert "0 parked event(s)" in nothing.stdout
