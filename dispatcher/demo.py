"""The demo: the whole daemon on embedded (or configured) services with the sandbox.

It starts the sandbox payment system, ``paydispatch run`` (sweeper and worker), creates a batch
of orders whose outcome the sandbox scripts — most paid, some declined, some left to expire,
one paid after its deadline — shows a live count per status, and exits 0 only if every order
ended where it should and no order got two invoices.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import httpx
import psycopg

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.runner import running_sandbox
from dispatcher import services
from dispatcher.config import Settings
from orders import Money, NewOrder, OrderStatus, schema
from orders.repository import OrderRepository, open_pool

S = OrderStatus
DEADLINE = 60.0  # seconds the orders get to settle


@dataclass(frozen=True, slots=True)
class Plan:
    scenario: str
    expected: OrderStatus
    expires_in: timedelta
    label: str


def plans(n: int, rng: random.Random) -> list[Plan]:
    """Most paid, about a sixth declined, a few expired, exactly one paid late."""
    short = timedelta(seconds=12)
    made = [Plan("pay_late:2", S.PAID, short, "paid late")]
    for i in range(n - 1):
        if i % 6 == 0:
            made.append(Plan(f"decline_after:{rng.randint(1, 3)}", S.REJECTED, short, "declined"))
        elif i % 8 == 1:
            made.append(Plan("never", S.EXPIRED, short, "expired"))
        else:
            made.append(Plan(f"pay_after:{rng.randint(1, 4)}", S.PAID, short, "paid"))
    return made


def _line(counts: Counter[str], total: int, elapsed: float) -> str:
    order = [S.NEW, S.SUBMITTING, S.AWAITING_PAYMENT, S.PAID, S.REJECTED, S.EXPIRED]
    parts = [f"{status}={counts.get(status, 0)}" for status in order]
    other = total - sum(counts.get(s, 0) for s in order)
    if other:
        parts.append(f"other={other}")
    return f"[{elapsed:5.1f}s] " + "  ".join(parts)


def run(settings: Settings, *, orders: int = 30) -> int:
    found = services.ensure(settings)
    print(f"services: {found.describe()}")
    with psycopg.connect(found.database_url, autocommit=True) as conn:
        for line in schema.init(conn) or ["schema up to date"]:
            print(f"database: {line}")
    rng = random.Random()  # noqa: S311 - demo outcomes, not cryptography
    site = f"demo-{secrets.token_hex(3)}"
    with running_sandbox() as sandbox:
        print(f"sandbox payment system: {sandbox.url} (pay pages at {sandbox.url}/pay/<id>)")
        api_port = services.free_port()
        public_url = f"http://127.0.0.1:{api_port}"
        env = dict(os.environ)
        env.update(
            {
                "PAYDISPATCH_API_PORT": str(api_port),
                "PAYDISPATCH_PUBLIC_URL": public_url,
                # Signed webhooks from the sandbox reach the API's callback endpoint.
                "PAYDISPATCH_SANDBOX_NOTIFY_URL": f"{public_url}/v1/callbacks/sandbox",
                "PAYDISPATCH_DATABASE_URL": found.database_url,
                "PAYDISPATCH_BROKER_URL": found.broker_url,
                "PAYDISPATCH_ADAPTERS": "sandbox",
                "PAYDISPATCH_BILLING_HOOKS": "wallet",
                "PAYDISPATCH_SANDBOX_API_URL": sandbox.url,
                "PAYDISPATCH_SANDBOX_POLL_FIRST": "0.5",
                "PAYDISPATCH_SANDBOX_POLL_CAP": "2",
                "PAYDISPATCH_SANDBOX_LATE_INTERVAL": "1",
                "PAYDISPATCH_LOG_FORMAT": "json",
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
                return _drive(
                    found.database_url,
                    site,
                    n=orders,
                    rng=rng,
                    sandbox_url=sandbox.url,
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


def _drive(
    database_url: str,
    site: str,
    *,
    n: int,
    rng: random.Random,
    sandbox_url: str,
    daemon: subprocess.Popen[bytes],
) -> int:
    pool = open_pool(database_url, max_size=4, name="demo")
    try:
        repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
        expected: dict[UUID, Plan] = {}
        for i, plan in enumerate(plans(n, rng)):
            new = NewOrder(
                site=site,
                site_ref=f"{site}-{i + 1}",
                user_id=f"user-{i % 5 + 1}",
                money=Money(rng.randrange(100, 50_000), rng.choice(["USD", "EUR", "RUB"])),
                adapter="sandbox",
                description=f"Top-up #{i + 1} ({plan.label})",
                expires_in=plan.expires_in,
                metadata={SCENARIO_METADATA_KEY: plan.scenario},
            )
            expected[repo.create(new).order.id] = plan
        print(f"created {len(expected)} orders for site {site}\n")
        started = time.monotonic()
        tty = sys.stdout.isatty()
        last_print = 0.0
        while True:
            elapsed = time.monotonic() - started
            statuses = {oid: repo.get(oid).status for oid in expected}
            counts = Counter(str(s) for s in statuses.values())
            done = all(statuses[oid] is plan.expected for oid, plan in expected.items())
            if tty or elapsed - last_print >= 2 or done:
                end = "\r" if tty and not done else "\n"
                print(_line(counts, len(expected), elapsed).ljust(100), end=end, flush=True)
                last_print = elapsed
            if done or elapsed > DEADLINE or daemon.poll() is not None:
                break
            time.sleep(0.25)
        return _summary(repo, expected, sandbox_url, time.monotonic() - started)
    finally:
        pool.close()


def _summary(
    repo: OrderRepository, expected: dict[UUID, Plan], sandbox_url: str, elapsed: float
) -> int:
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
    stats = httpx.get(f"{sandbox_url}/_control/stats", timeout=5).json()
    most = stats.get("max_invoices_per_order", 0)
    print(f"\nsummary after {elapsed:.1f}s:")
    for label in ("paid", "declined", "expired", "paid late"):
        print(f"  {label:<10} {by_label[label]:>4} as expected")
    print(f"  late payment went expired -> paid: {'yes' if late_seen else 'NO'}")
    print(f"  sandbox invoices: {stats.get('invoices')}, most for one order: {most}")
    paid_ids = [oid for oid, plan in expected.items() if plan.expected is S.PAID]
    with repo.pool.connection() as conn:
        rows = conn.execute(
            "SELECT order_id, count(*) AS n FROM wallet_entries "
            "WHERE kind = 'topup' AND order_id = ANY(%s) GROUP BY order_id",
            (paid_ids,),
        ).fetchall()
    credits = {row["order_id"]: row["n"] for row in rows}
    credited_once = sum(1 for oid in paid_ids if credits.get(oid) == 1)
    print(f"  wallets credited exactly once: {credited_once} of {len(paid_ids)} paid orders")
    for number, label, want, got, error in wrong:
        print(f"  order {number} ({label}): expected {want}, ended {got} {error or ''}")
    ok = not wrong and late_seen == 1 and most == 1 and credited_once == len(paid_ids)
    print("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1
