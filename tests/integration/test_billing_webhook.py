"""The webhook hook end to end: outbox row in the paid transaction, sweeper, dramatiq ``deliver``
actor on the engine's loop, a real HTTP receiver that fails for a while, parking and replay; each
site's own URL and secret, and a secret rotation (issue #12, item 6)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
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
from dispatcher.billing.hooks import WebhookHook
from dispatcher.billing.receiver import HEADER, verify
from dispatcher.billing.sites import SyncSiteWebhooks
from dispatcher.billing.webhook import Backoff, Delivery, Outbox, SyncOutbox
from dispatcher.services import Services
from dispatcher.steps import BILLING_QUEUE, Steps, make_broker
from dispatcher.sweeper import Sweeper
from dispatcher.worker import actors
from dispatcher.worker.engine import Engine
from dispatcher.worker.host import EngineHost
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool, open_async_pool
from orders.errors import InvalidSignature
from orders.repository import OrderRepository
from tests.billing_support import pay as pay_with
from tests.conftest import cli
from tests.dispatch_support import own_namespace, wait_until

S = OrderStatus


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
        routes=[
            Route(p, state.endpoint, methods=["POST"])
            for p in ("/hook", "/slow", "/flag", "/a", "/b", "/rotating", "/late")
        ]
    )
    with serve_in_thread(app) as url:
        state.url = url
        yield state
        state.release.set()


@dataclass
class Billing:
    repo: OrderRepository
    outbox: SyncOutbox
    delivery: Delivery
    sites: SyncSiteWebhooks
    secrets: dict[str, str] = field(default_factory=dict)  # site -> its secret

    def site_for(self, url: str) -> str:
        """A new site whose webhook is ``url``; its secret is kept in ``secrets``."""
        site = f"site-{uuid.uuid4().hex[:12]}"
        _, secret = self.sites.set(site, url)
        assert secret is not None
        self.secrets[site] = secret
        return site

    def verify(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """The event, checked with the secret of the site it names."""
        site = json.loads(body)["data"]["site"]
        return verify(self.secrets[site], headers[HEADER.lower()], body)


@pytest.fixture
def billing(
    found_services: Services, database_url: str, pool: Pool, repo: OrderRepository
) -> Iterator[Billing]:
    """Sweeper thread + dramatiq worker on the billing queue + the engine host's loop."""
    broker = make_broker(found_services.broker_url, namespace=own_namespace())
    actors.Actors(broker, ["sandbox"])
    dispatch = Steps(broker, ["sandbox"])
    host = EngineHost.open(
        database_url, repo.adapters, lambda orders: Engine(orders, {}), pool_size=1,
        max_in_flight=50, name="tests-engine",
    )  # fmt: skip
    host.start()
    # The deliveries run on the host's loop, so their pool is opened there.
    delivery_pool = asyncio.run_coroutine_threadsafe(
        open_async_pool(database_url, max_size=4, name="tests-delivery"), host.loop
    ).result(timeout=30)
    delivery = Delivery(
        delivery_pool,
        timeout=1.0,
        backoff=Backoff(first=timedelta(seconds=0.05), cap=timedelta(seconds=0.3)),
    )
    actors.set_host(host)
    actors.set_delivery(delivery)
    worker = dramatiq.Worker(broker, queues={BILLING_QUEUE}, worker_threads=2)
    worker.start()
    outbox = SyncOutbox(pool, max_age=timedelta(minutes=5))
    sites = SyncSiteWebhooks(pool)
    sweeper = Sweeper(repo, dispatch, [], interval=0.1, lease=timedelta(seconds=30), outbox=outbox)
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop, database_url), daemon=True)
    thread.start()
    try:
        yield Billing(repo, outbox, delivery, sites)
    finally:
        stop.set()
        thread.join(timeout=10)
        worker.stop(timeout=5000)
        host.drain(timeout=5)
        asyncio.run_coroutine_threadsafe(delivery.aclose(), host.loop).result(timeout=10)
        asyncio.run_coroutine_threadsafe(delivery_pool.close(), host.loop).result(timeout=10)
        host.stop()
        outbox.close()
        sites.close()
        actors.set_host(None)
        actors.set_delivery(None)
        broker.close()


def pay(billing: Billing, site: str, *, max_age: timedelta | None = None) -> UUID:
    """An order of ``site`` moved to paid with the webhook hook writing its event."""
    repo = billing.repo
    new = NewOrder(site=site, user_id="buyer", money=Money(1999, "EUR"), adapter="sandbox")
    order = repo.create(new).order
    repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test", next_run_at=None)
    repo.transition(order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", next_run_at=None)
    outbox = Outbox(None, max_age=max_age or billing.outbox.max_age)  # the hook needs no pool
    pay_with(repo, order.id, S.AWAITING_PAYMENT, WebhookHook(outbox))
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
    billing: Billing, receiver: Receiver, pool: Pool
) -> None:
    # Given a receiver that answers 500 to its first four requests,
    receiver.fail_first = 4
    site = billing.site_for(f"{receiver.url}/hook")
    # when three orders are paid,
    orders = [pay(billing, site) for _ in range(3)]
    # then every event ends delivered,
    wait_until(
        lambda: all(status(pool, o) == "delivered" for o in orders), timeout=30, what="delivered"
    )
    requests = receiver.seen("/hook")
    assert len(requests) >= 3 + 4
    by_event: dict[str, set[bytes]] = {}
    for headers, body in requests:
        # each request signed over its body, with the event id in the body and a header,
        event = billing.verify(headers, body)
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


def test_paid_event_body(billing: Billing, receiver: Receiver, pool: Pool) -> None:
    receiver.fail_first = 0
    site = billing.site_for(f"{receiver.url}/hook")
    order_id = pay(billing, site)
    wait_until(lambda: status(pool, order_id) == "delivered", timeout=30, what="delivered")
    row = outbox_row(pool, order_id)
    bodies = [b for _, b in receiver.seen("/hook") if str(row["id"]).encode() in b]
    headers = [h for h, b in receiver.seen("/hook") if b == bodies[-1]][-1]
    event = billing.verify(headers, bodies[-1])
    assert event["type"] == "order.paid"
    assert event["data"]["site"] == site
    assert row["url"] == f"{receiver.url}/hook"
    assert event["data"]["order_id"] == str(order_id)
    assert event["data"]["amount"] == 1999
    assert event["data"]["currency"] == "EUR"
    assert event["data"]["amount_decimal"] == "19.99"
    assert event["data"]["late"] is False


def test_slow_and_unreachable_receivers_do_not_block_other_deliveries(
    billing: Billing, receiver: Receiver, pool: Pool
) -> None:
    receiver.fail_first = 0
    slow = pay(billing, billing.site_for(f"{receiver.url}/slow"))
    dead = pay(billing, billing.site_for("http://127.0.0.1:9/unreachable"))
    wait_until(lambda: receiver.slow_started >= 1, timeout=10, what="slow request started")
    good_site = billing.site_for(f"{receiver.url}/hook")
    good = [pay(billing, good_site) for _ in range(5)]
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
    billing: Billing, receiver: Receiver, pool: Pool, database_url: str
) -> None:
    parked_before = REGISTRY.get_sample_value("paydispatch_billing_events_parked_total") or 0.0
    receiver.failing = True
    order_id = pay(billing, billing.site_for(f"{receiver.url}/flag"), max_age=timedelta(seconds=1))
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
    assert billing.verify(headers, body)["id"] == str(row["id"])
    nothing = cli(database_url, "hooks", "replay", "--all")
    assert "0 parked event(s)" in nothing.stdout


def delivered(pool: Pool, *orders: UUID) -> None:
    wait_until(
        lambda: all(status(pool, o) == "delivered" for o in orders), timeout=30, what="delivered"
    )


def test_issue12_item6_each_site_gets_its_events_at_its_url_signed_with_its_secret(
    billing: Billing, receiver: Receiver, pool: Pool
) -> None:
    # Given two sites with webhooks of their own,
    site_a = billing.site_for(f"{receiver.url}/a")
    site_b = billing.site_for(f"{receiver.url}/b")
    assert billing.secrets[site_a] != billing.secrets[site_b]
    # when each has an order paid,
    delivered(pool, pay(billing, site_a), pay(billing, site_b))
    # then each site's URL saw only its own events, signed with its own secret,
    for site, other, path in ((site_a, site_b, "/a"), (site_b, site_a, "/b")):
        requests = receiver.seen(path)
        assert len(requests) == 1
        headers, body = requests[0]
        assert verify(billing.secrets[site], headers[HEADER.lower()], body)["data"]["site"] == site
        # which the other site's secret cannot check (nor forge).
        with pytest.raises(InvalidSignature):
            verify(billing.secrets[other], headers[HEADER.lower()], body)


def test_issue12_item6_rotation_signs_with_both_secrets_until_the_overlap_ends(
    billing: Billing, receiver: Receiver, pool: Pool
) -> None:
    site = billing.site_for(f"{receiver.url}/rotating")
    first = billing.secrets[site]
    # Given a rotation whose previous secret stays valid for an hour,
    rotated = billing.sites.rotate(site, timedelta(hours=1))
    assert rotated is not None
    hook, second = rotated
    assert hook.previous_until is not None
    delivered(pool, pay(billing, site))
    headers, body = receiver.seen("/rotating")[-1]
    # then an event verifies with the new secret and with the previous one (two v1 values);
    assert headers[HEADER.lower()].count("v1=") == 2
    for secret in (first, second):
        assert verify(secret, headers[HEADER.lower()], body)["data"]["site"] == site
    # after a rotation with no overlap, only the newest secret signs.
    again = billing.sites.rotate(site, timedelta(0))
    assert again is not None
    hook, third = again
    assert hook.previous_until is None
    delivered(pool, pay(billing, site))
    headers, body = receiver.seen("/rotating")[-1]
    assert verify(third, headers[HEADER.lower()], body)["data"]["site"] == site
    for old in (first, second):
        with pytest.raises(InvalidSignature):
            verify(old, headers[HEADER.lower()], body)


def test_issue12_item6_event_of_a_site_without_a_webhook_waits_for_one(
    billing: Billing, receiver: Receiver, pool: Pool, site: str
) -> None:
    # Given a site with no webhook yet,
    order_id = pay(billing, site)
    # its paid event is not sent anywhere: it is retried, saying why,
    wait_until(lambda: outbox_row(pool, order_id)["attempts"] >= 1, what="an attempt")
    row = outbox_row(pool, order_id)
    assert row["status"] == "pending"
    assert "no webhook" in row["last_error"]
    assert row["url"] is None
    # and goes out once the site's webhook is set.
    _, secret = billing.sites.set(site, f"{receiver.url}/late")
    assert secret is not None
    delivered(pool, order_id)
    headers, body = receiver.seen("/late")[-1]
    assert verify(secret, headers[HEADER.lower()], body)["data"]["order_id"] == str(order_id)


def test_issue12_item6_cli_shows_a_site_secret_once(database_url: str, site: str) -> None:
    created = cli(database_url, "sites", "set-webhook", site, "https://shop.example/hook")
    assert created.returncode == 0, created.stdout + created.stderr
    secret = created.stdout.split()[0]
    assert secret.startswith("whsec_")
    assert len(secret) >= 40
    # Changing the URL keeps the secret, and does not show it again;
    moved = cli(database_url, "sites", "set-webhook", site, "https://shop.example/hook2")
    assert moved.returncode == 0
    assert secret not in moved.stdout
    assert "shop.example/hook2" in moved.stdout
    # the listing never shows a secret;
    listed = cli(database_url, "sites", "list", site)
    assert listed.returncode == 0
    assert "https://shop.example/hook2" in listed.stdout
    assert "whsec_" not in listed.stdout
    # a rotation shows the new one once.
    rotated = cli(database_url, "sites", "rotate-secret", site, "--overlap", "2")
    assert rotated.returncode == 0
    new = rotated.stdout.split()[0]
    assert new.startswith("whsec_")
    assert new != secret
    assert "whsec_" not in cli(database_url, "sites", "list").stdout
    # Bad input is refused before anything is written.
    bad = cli(database_url, "sites", "set-webhook", site, "ftp://shop.example/x")
    assert bad.returncode != 0
    assert "url" in bad.stdout
