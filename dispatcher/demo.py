"""The demo: the whole daemon on embedded (or configured) services with one payment system.

It starts the payment system — the sandbox, or with ``--adapter stripe|paypal|robokassa|tbank``
the local fake of that system (``adapters/fakes/``) — then ``paydispatch run`` (API, sweeper and
worker), creates a batch of orders — most paid, some declined, some left to expire, one paid
after its deadline — shows a live count per status, and exits 0 only if every order ended where
it should, no order got two invoices, and every paid order credited its wallet exactly once.
The sandbox scripts the outcomes itself (``metadata.sandbox_scenario``); a fake is driven by the
demo through its control API, as a buyer would pay or be declined. Then money goes back out
(:mod:`dispatcher.demo_money_out`): one partial refund and one withdrawal through the API, each
followed until final, and exit 0 only if they too hold the invariants.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg

from adapters.fakes.common import FakeControl, PaymentRef, running_fake
from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.runner import running_sandbox
from dispatcher import demo_money_out as money_out
from dispatcher import services
from dispatcher.compose import Root
from dispatcher.config import Settings
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool, open_pool, query, schema
from orders.model import Order
from orders.repository import OrderRepository

S = OrderStatus
DEADLINE = 60.0  # seconds the orders get to settle
READY_WITHIN = 120.0  # seconds the daemon gets to start
FAKES = ("stripe", "paypal", "robokassa", "tbank")
ADAPTERS = ("sandbox", *FAKES)
# What each payment system takes: the fakes of the Russian systems work in roubles.
CURRENCIES = {
    "robokassa": ["RUB"],
    "tbank": ["RUB"],
    "stripe": ["USD", "EUR"],
    "paypal": ["USD", "EUR"],
}


@dataclass(frozen=True, slots=True)
class Plan:
    scenario: str  # the sandbox's script; fakes read the delay N of "pay_after:N" and such
    expected: OrderStatus
    expires_in: timedelta
    label: str

    @property
    def delay(self) -> float:
        """Seconds after the invoice exists before the buyer acts (fakes only)."""
        _, _, n = self.scenario.partition(":")
        return float(n) if n else 0.0


def plans(n: int, rng: random.Random) -> list[Plan]:
    """Most paid, about a sixth declined, a few expired, exactly one paid late.

    Only the orders meant to expire get the short deadline; the ones paid or declined in a few
    seconds get a roomy one, so a busy machine that slows the buyers (the demo's own loop plays
    them at a fake) cannot turn a payment into an expiry."""
    short, roomy = timedelta(seconds=12), timedelta(seconds=45)
    made = [Plan("pay_late:2", S.PAID, short, "paid late")]
    for i in range(n - 1):
        if i % 6 == 0:
            made.append(Plan(f"decline_after:{rng.randint(1, 3)}", S.REJECTED, roomy, "declined"))
        elif i % 8 == 1:
            made.append(Plan("never", S.EXPIRED, short, "expired"))
        else:
            made.append(Plan(f"pay_after:{rng.randint(1, 4)}", S.PAID, roomy, "paid"))
    return made


def _line(counts: Counter[str], total: int, elapsed: float) -> str:
    order = [S.NEW, S.SUBMITTING, S.AWAITING_PAYMENT, S.PAID, S.REJECTED, S.EXPIRED]
    parts = [f"{status}={counts.get(status, 0)}" for status in order]
    other = total - sum(counts.get(s, 0) for s in order)
    if other:
        parts.append(f"other={other}")
    return f"[{elapsed:5.1f}s] " + "  ".join(parts)


@contextlib.contextmanager
def _payment_system(adapter: str, public_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The payment system running for the demo: its URL and the daemon's settings for it."""
    if adapter == "sandbox":
        with running_sandbox() as sandbox:
            print(f"sandbox payment system: {sandbox.url} (pay pages at {sandbox.url}/pay/<id>)")
            yield (
                sandbox.url,
                {
                    # Signed webhooks from the sandbox reach the API's callback endpoint.
                    "PAYDISPATCH_SANDBOX_NOTIFY_URL": f"{public_url}/v1/callbacks/sandbox",
                    "PAYDISPATCH_SANDBOX_API_URL": sandbox.url,
                },
            )
        return
    fake = importlib.import_module(f"adapters.fakes.{adapter}")
    with running_fake(fake.create_app(notify_url=f"{public_url}/v1/callbacks/{adapter}")) as url:
        print(f"local fake of {adapter}: {url} (control API at {url}/_control/)")
        prefix = f"PAYDISPATCH_{adapter.upper()}_"
        yield url, {prefix + k: v for k, v in fake.adapter_settings(url).items()}


def run(settings: Settings, *, orders: int = 30, adapter: str = "sandbox") -> int:
    if adapter not in ADAPTERS:
        print(f"unknown adapter {adapter!r}: choose one of {', '.join(ADAPTERS)}")
        return 2
    found = Root(settings, name="demo").services
    print(f"services: {found.describe()}")
    with psycopg.connect(found.database_url, autocommit=True) as conn:
        for line in schema.init(conn) or ["schema up to date"]:
            print(f"database: {line}")
    rng = random.Random()  # noqa: S311 - demo outcomes, not cryptography
    site = f"demo-{secrets.token_hex(3)}"
    api_port = services.free_port()
    public_url = f"http://127.0.0.1:{api_port}"
    with _payment_system(adapter, public_url) as (psp_url, psp_env):
        prefix = f"PAYDISPATCH_{adapter.upper()}_"
        env = dict(os.environ)
        env.update(
            {
                "PAYDISPATCH_API_PORT": str(api_port),
                "PAYDISPATCH_PUBLIC_URL": public_url,
                "PAYDISPATCH_DATABASE_URL": found.database_url,
                "PAYDISPATCH_BROKER_URL": found.broker_url,
                "PAYDISPATCH_ADAPTERS": adapter,
                # A development setup: the sandbox's published credentials are accepted.
                "PAYDISPATCH_DEV": "1",
                "PAYDISPATCH_BILLING_HOOKS": "wallet",
                prefix + "POLL_FIRST": "0.5",
                prefix + "POLL_CAP": "2",
                prefix + "LATE_INTERVAL": "1",
                "PAYDISPATCH_LOG_FORMAT": "json",
                **money_out.daemon_env(adapter),
                **psp_env,
            }
        )
        log_path = settings.home / "demo-daemon.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as daemon_log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "dispatcher.cli", "run", "--workers", "1"],
                env=env,
                stdout=daemon_log,
                stderr=subprocess.STDOUT,
            )
            print(f"daemon: paydispatch run (pid {daemon.pid}), API {public_url}, log {log_path}")
            try:
                if not _wait_ready(public_url, log_path, daemon):
                    print("daemon did not become ready: see its log")
                    return 1
                return _drive(
                    found.database_url,
                    site,
                    n=orders,
                    rng=rng,
                    adapter=adapter,
                    psp_url=psp_url,
                    public_url=public_url,
                    daemon=daemon,
                )
            finally:
                daemon.send_signal(signal.SIGTERM)
                try:
                    code = daemon.wait(timeout=45)
                    print(f"daemon stopped cleanly (exit {code})")
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    print("daemon did not stop in time; killed")


def _wait_ready(public_url: str, log_path: Path, daemon: subprocess.Popen[bytes]) -> bool:
    """Until the API answers ready and a worker has started (its log line): the orders' short
    deadlines must not run out while the processes are still starting on a busy machine."""
    started = time.monotonic()
    while time.monotonic() - started < READY_WITHIN and daemon.poll() is None:
        try:
            ready = httpx.get(f"{public_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready and b'"worker started"' in log_path.read_bytes():
            print(f"daemon ready after {time.monotonic() - started:.1f}s")
            return True
        time.sleep(0.2)
    return False


class Buyers:
    """Plays the buyers at a fake payment system: pays or declines each order as planned."""

    def __init__(self, control: FakeControl) -> None:
        self.control = control
        self.invoiced_at: dict[UUID, float] = {}
        self.acted: set[UUID] = set()

    def act(self, order: Order, plan: Plan, now: float) -> None:
        if order.id in self.acted:
            return
        if order.status is S.AWAITING_PAYMENT:
            since = self.invoiced_at.setdefault(order.id, now)
            if plan.expected is S.REJECTED and now - since >= plan.delay:
                self.control.decline(_ref(order))
                self.acted.add(order.id)
            elif plan.label == "paid" and now - since >= plan.delay:
                self.control.pay(_ref(order))
                self.acted.add(order.id)
        elif order.status is S.EXPIRED and plan.label == "paid late":
            self.control.pay(_ref(order))  # the buyer pays after the deadline
            self.acted.add(order.id)

    def invoice_counts(self) -> list[int]:
        return list(self.control.stats()["invoices"].values())


def _ref(order: Order) -> PaymentRef:
    return PaymentRef(
        order_id=str(order.id), number=order.number, psp_id=order.psp_id, pay_url=order.pay_url
    )


def _drive(
    database_url: str,
    site: str,
    *,
    n: int,
    rng: random.Random,
    adapter: str,
    psp_url: str,
    public_url: str,
    daemon: subprocess.Popen[bytes],
) -> int:
    pool = open_pool(database_url, max_size=4, name="demo")
    buyers = None if adapter == "sandbox" else Buyers(FakeControl(psp_url))
    repo = OrderRepository(pool, {adapter: timedelta(minutes=15)})
    try:
        expected: dict[UUID, Plan] = {}
        currencies = CURRENCIES.get(adapter, ["USD", "EUR", "RUB"])
        for i, plan in enumerate(plans(n, rng)):
            metadata: dict[str, Any] = {}
            if buyers is None:
                metadata[SCENARIO_METADATA_KEY] = plan.scenario
            new = NewOrder(
                site=site,
                site_ref=f"{site}-{i + 1}",
                user_id=f"user-{i % 5 + 1}",
                money=Money(rng.randrange(100, 50_000), rng.choice(currencies)),
                adapter=adapter,
                description=f"Top-up #{i + 1} ({plan.label})",
                expires_in=plan.expires_in,
                metadata=metadata,
            )
            # As the API does: the buyer comes back to the order's status page.
            order_id = uuid4()
            created = repo.create(
                new, order_id=order_id, default_return_url=f"{public_url}/pay/{order_id}"
            )
            expected[created.order.id] = plan
        print(f"created {len(expected)} orders for site {site}\n")
        started = time.monotonic()
        tty = sys.stdout.isatty()
        last_print = 0.0
        while True:
            elapsed = time.monotonic() - started
            current = {oid: repo.get(oid) for oid in expected}
            if buyers is not None:
                for oid, order in current.items():
                    buyers.act(order, expected[oid], elapsed)
            counts = Counter(str(order.status) for order in current.values())
            done = all(current[oid].status is plan.expected for oid, plan in expected.items())
            if tty or elapsed - last_print >= 2 or done:
                end = "\r" if tty and not done else "\n"
                print(_line(counts, len(expected), elapsed).ljust(100), end=end, flush=True)
                last_print = elapsed
            if done or elapsed > DEADLINE or daemon.poll() is not None:
                break
            time.sleep(0.25)
        if buyers is None:
            stats = httpx.get(f"{psp_url}/_control/stats", timeout=5).json()
            invoices, most = stats.get("invoices"), stats.get("max_invoices_per_order", 0)
        else:
            counts_per_order = buyers.invoice_counts()
            invoices, most = sum(counts_per_order), max(counts_per_order, default=0)
        ok = _summary(
            repo,
            expected,
            adapter=adapter,
            invoices=invoices,
            most=most,
            elapsed=time.monotonic() - started,
        )
        print()
        ok &= _money_out(
            pool,
            repo,
            expected,
            site=site,
            adapter=adapter,
            psp_url=psp_url,
            public_url=public_url,
            daemon=daemon,
        )
        print("demo " + ("succeeded" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        if buyers is not None:
            buyers.control.close()
        repo.close()
        pool.close()


def _summary(
    repo: OrderRepository,
    expected: dict[UUID, Plan],
    *,
    adapter: str,
    invoices: int,
    most: int,
    elapsed: float,
) -> bool:
    wrong = []
    by_label: Counter[str] = Counter()
    late_seen = 0
    for oid, plan in expected.items():
        order = repo.get(oid)
        if order.status is not plan.expected:
            wrong.append((order.number, plan.label, plan.expected, order.status, order.last_error))
            continue
        by_label[plan.label] += 1
        if plan.label == "paid late":
            events = repo.events(oid)
            late_seen += any(e.from_status is S.EXPIRED and e.to_status is S.PAID for e in events)
    print(f"\nsummary after {elapsed:.1f}s:")
    for label in ("paid", "declined", "expired", "paid late"):
        print(f"  {label:<10} {by_label[label]:>4} as expected")
    print(f"  late payment went expired -> paid: {'yes' if late_seen else 'NO'}")
    print(f"  {adapter} invoices: {invoices}, most for one order: {most}")
    paid_ids = [oid for oid, plan in expected.items() if plan.expected is S.PAID]
    with repo.pool.connection() as conn:
        rows = conn.execute(query("demo_topups_per_order"), {"ids": paid_ids}).fetchall()
    credits = {row["order_id"]: row["n"] for row in rows}
    credited_once = sum(1 for oid in paid_ids if credits.get(oid) == 1)
    print(f"  wallets credited exactly once: {credited_once} of {len(paid_ids)} paid orders")
    for number, label, want, got, error in wrong:
        print(f"  order {number} ({label}): expected {want}, ended {got} {error or ''}")
    return not wrong and late_seen == 1 and most == 1 and credited_once == len(paid_ids)


def _money_out(
    pool: Pool,
    repo: OrderRepository,
    expected: dict[UUID, Plan],
    *,
    site: str,
    adapter: str,
    psp_url: str,
    public_url: str,
    daemon: subprocess.Popen[bytes],
) -> bool:
    """After the orders: one partial refund and one withdrawal through the API
    (:mod:`dispatcher.demo_money_out`)."""
    paid = [repo.get(oid) for oid, plan in expected.items() if plan.label == "paid"]
    users = sorted({order.user_id for order in paid})
    flow = money_out.MoneyOut(
        pool=pool,
        repo=repo,
        site=site,
        adapter=adapter,
        psp_url=psp_url,
        public_url=public_url,
        daemon=daemon,
    )
    try:
        return flow.run([order for order in paid if order.status is S.PAID], users)
    finally:
        flow.close()
