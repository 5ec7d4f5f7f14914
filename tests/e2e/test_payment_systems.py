"""Each real payment system's adapter, end to end: the real daemon against a local fake of it.

``paydispatch run`` (API, sweeper, worker) in its own process, the fake of the payment system
(``adapters/fakes/<name>.py``, written from the public reference) on a loopback port, and orders
that are paid, declined, left to expire, paid after their deadline, named in a forged callback,
and created through an accept-then-time-out fault. Every order must end where it should, with one
invoice per order at the payment system and one wallet credit per paid order.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from uuid import UUID

import httpx
import pytest

from adapters.fakes.common import FakeControl, PaymentRef, running_fake
from dispatcher.services import Services, free_port
from orders import Money, NewOrder, OrderStatus
from orders.model import Order
from orders.repository import OrderRepository, open_pool
from tests.dispatch_support import own_namespace, wait_until

S = OrderStatus
ROOT = Path(__file__).resolve().parents[2]
CURRENCY = {"stripe": "USD", "paypal": "USD", "robokassa": "RUB", "tbank": "RUB"}
SETTLE = 60.0  # seconds an order gets to reach its status; far above what it needs


def fake_of(name: str) -> ModuleType:
    return importlib.import_module(f"adapters.fakes.{name}")


def ref(order: Order) -> PaymentRef:
    return PaymentRef(
        order_id=str(order.id), number=order.number, psp_id=order.psp_id, pay_url=order.pay_url
    )


@dataclass
class Running:
    name: str
    repo: OrderRepository
    api: str
    control: FakeControl
    log_path: Path
    site: str = "shop"
    made: int = 0

    def create(self, label: str, expires_in: timedelta) -> Order:
        self.made += 1
        new = NewOrder(
            site=self.site,
            site_ref=f"{label}-{self.made}",
            user_id=f"user-{self.made}",
            money=Money(12_300 + self.made, CURRENCY[self.name]),
            adapter=self.name,
            description=f"Top-up ({label})",
            return_url="https://shop.example/balance",
            expires_in=expires_in,
        )
        return self.repo.create(new).order

    def wait_for(self, order: Order, status: OrderStatus) -> Order:
        def there() -> bool:
            return self.repo.get(order.id).status is status

        try:
            wait_until(there, timeout=SETTLE, what=f"{order.site_ref} -> {status}")
        except AssertionError:
            now = self.repo.get(order.id)
            tail = self.log_path.read_text(errors="replace")[-6000:]
            raise AssertionError(
                f"{self.name} order {order.site_ref} is {now.status}, not {status} "
                f"(last error: {now.last_error}); the daemon's log ends:\n{tail}"
            ) from None
        return self.repo.get(order.id)


def daemon_env(
    name: str, database_url: str, broker_url: str, fake_url: str, api_port: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    prefix = f"PAYDISPATCH_{name.upper()}_"
    env.update(
        {prefix + key: value for key, value in fake_of(name).adapter_settings(fake_url).items()}
    )
    env.update(
        {
            "PAYDISPATCH_DATABASE_URL": database_url,
            "PAYDISPATCH_BROKER_URL": broker_url,
            "PAYDISPATCH_BROKER_NAMESPACE": own_namespace(),
            "PAYDISPATCH_ADAPTERS": name,
            "PAYDISPATCH_BILLING_HOOKS": "wallet",
            "PAYDISPATCH_API_PORT": str(api_port),
            "PAYDISPATCH_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
            "PAYDISPATCH_LOG_FORMAT": "json",
            prefix + "POLL_FIRST": "0.3",
            prefix + "POLL_CAP": "0.6",
            prefix + "LATE_INTERVAL": "0.3",
            # Short enough that an accept-then-time-out fault is given up quickly.
            prefix + "TIMEOUT": "1.5",
            prefix + "RETRIES": "2",
        }
    )
    return env


@pytest.fixture(params=sorted(CURRENCY))
def running(
    request: pytest.FixtureRequest, found_services: Services, own_database_url: str, tmp_path: Path
) -> Iterator[Running]:
    name: str = request.param
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    app = fake_of(name).create_app(notify_url=f"{api}/v1/callbacks/{name}")
    with running_fake(app) as fake_url:
        env = daemon_env(name, own_database_url, found_services.broker_url, fake_url, api_port)
        log_path = tmp_path / "daemon.log"
        pool = open_pool(own_database_url, max_size=4, name=f"e2e-{name}")
        control = FakeControl(fake_url)
        with log_path.open("wb") as log_file:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "dispatcher.cli", "run", "--workers", "1"],
                env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                wait_until(lambda: _ready(api), timeout=60, what=f"the API of the {name} daemon")
                repo = OrderRepository(pool, {name: timedelta(minutes=15)})
                yield Running(name, repo, api, control, log_path)
            finally:
                daemon.terminate()
                try:
                    daemon.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                control.close()
                pool.close()


def _ready(api: str) -> bool:
    try:
        return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _credits(repo: OrderRepository, order_ids: list[UUID]) -> dict[UUID, int]:
    with repo.pool.connection() as conn:
        rows = conn.execute(
            "SELECT order_id, count(*) AS n FROM wallet_entries "
            "WHERE kind = 'topup' AND order_id = ANY(%s) GROUP BY order_id",
            (order_ids,),
        ).fetchall()
    return {row["order_id"]: row["n"] for row in rows}


def test_orders_settle_through_the_fake_with_one_invoice_and_one_credit_each(
    running: Running,
) -> None:
    # Given the daemon and the fake; an accept-then-time-out fault waits for the first create.
    long, short = timedelta(minutes=10), timedelta(seconds=12)
    running.control.accept_then_timeout(1)
    timed_out = running.create("timed-out-create", long)
    timed_out = running.wait_for(timed_out, S.AWAITING_PAYMENT)
    paid = running.create("paid", long)
    declined = running.create("declined", long)
    forged = running.create("forged", long)
    expired = running.create("expired", short)
    late = running.create("late", short)
    for order in (paid, declined, forged, expired, late):
        running.wait_for(order, S.AWAITING_PAYMENT)

    # When the buyers act at the payment system...
    running.control.pay(ref(running.repo.get(timed_out.id)))
    running.control.pay(ref(running.repo.get(paid.id)))
    running.control.decline(ref(running.repo.get(declined.id)))
    # ...a forger claims an order was paid...
    headers, body = fake_of(running.name).forged_callback(running.repo.get(forged.id))
    answer = httpx.post(
        f"{running.api}/v1/callbacks/{running.name}", headers=headers, content=body, timeout=10
    )
    assert answer.status_code < 500, answer.text
    # (a verified notification is applied within the request: the forged one must not be)
    assert running.repo.get(forged.id).status is S.AWAITING_PAYMENT, answer.text

    # Then each order ends where it should.
    running.wait_for(timed_out, S.PAID)
    running.wait_for(paid, S.PAID)
    running.wait_for(declined, S.REJECTED)
    running.wait_for(expired, S.EXPIRED)
    running.wait_for(late, S.EXPIRED)
    running.control.pay(ref(running.repo.get(late.id)))  # paid after the deadline
    running.wait_for(late, S.PAID)
    assert any(
        e.from_status is S.EXPIRED and e.to_status is S.PAID for e in running.repo.events(late.id)
    ), "the late payment went expired -> paid"
    running.control.pay(ref(running.repo.get(forged.id)))  # the genuine payment still counts
    running.wait_for(forged, S.PAID)

    # One invoice per order at the payment system, one credit per paid order.
    invoices = running.control.stats()["invoices"]
    everything = [timed_out, paid, declined, forged, expired, late]
    for order in everything:
        assert invoices.get(str(order.id), 0) <= 1, (order.site_ref, invoices)
    paid_orders = [timed_out, paid, forged, late]
    for order in paid_orders:
        assert invoices.get(str(order.id)) == 1, (order.site_ref, invoices)
    credits = _credits(running.repo, [o.id for o in everything])
    assert credits == {o.id: 1 for o in paid_orders}
