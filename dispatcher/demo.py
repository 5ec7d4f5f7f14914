"""The demo: services up, schema applied, a few orders made and moved through their states."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import timedelta

import psycopg

from dispatcher import services
from dispatcher.config import Settings
from orders import InvalidInput, Money, NewOrder, Order, OrderStatus, schema
from orders.repository import OrderRepository, open_pool

SITE = "demo-shop"


def _print_orders(title: str, orders: list[Order]) -> None:
    print(f"\n{title}")
    print(f"  {'number':>6}  {'site_ref':<18} {'amount':>14}  {'adapter':<9} status")
    for order in orders:
        print(
            f"  {order.number:>6}  {order.site_ref or '-':<18} {order.money!s:>14}  "
            f"{order.adapter:<9} {order.status}"
        )


def run(settings: Settings, *, orders: int = 6) -> int:
    found = services.ensure(settings)
    print(f"services: {found.describe()}")
    with psycopg.connect(found.database_url, autocommit=True) as conn:
        for line in schema.init(conn) or ["schema up to date"]:
            print(f"database: {line}")
    pool = open_pool(found.database_url, max_size=4, name="demo")
    try:
        repo = OrderRepository(pool, {"sandbox": timedelta(hours=1)})
        run_id = secrets.token_hex(3)
        amounts = ["9.99", "25.00", "1500", "120.50", "3.75", "42.00"]
        currencies = ["USD", "EUR", "JPY", "RUB", "GBP", "USD"]
        made = []
        for i in range(orders):
            new = NewOrder(
                site=SITE,
                site_ref=f"demo-{run_id}-{i + 1}",
                user_id=f"user-{i % 3 + 1}",
                money=Money.parse(amounts[i % 6], currencies[i % 6]),
                adapter="sandbox",
                description=f"Top-up #{i + 1}",
            )
            made.append(repo.create(new).order)
        replay = repo.create(
            NewOrder(
                site=SITE,
                site_ref=made[0].site_ref,
                user_id=made[0].user_id,
                money=made[0].money,
                adapter="sandbox",
                description=made[0].description,
            )
        )
        print(
            f"\nreplaying site_ref {made[0].site_ref}: same order = {replay.order.id == made[0].id}"
        )
        good = NewOrder(site=SITE, user_id="user-1", money=Money(100, "USD"), adapter="sandbox")
        bad_requests = {
            "a negative amount": replace(good, money=Money(-500, "USD")),
            "an unknown adapter": replace(good, adapter="nowhere"),
            "an oversized description": replace(good, description="x" * 5000),
        }
        for label, bad in bad_requests.items():
            try:
                repo.create(bad)
            except InvalidInput as exc:
                print(f"refused {label}: {exc}")
        for label, value, currency in [("XYZ", "5", "XYZ"), ("10.5 JPY", "10.5", "JPY")]:
            try:
                Money.parse(value, currency)
            except InvalidInput as exc:
                print(f"refused {label}: {exc}")
        _print_orders("created:", [repo.get(o.id) for o in made])

        claimed = repo.claim(limit=orders, lease=timedelta(seconds=30))
        print(f"\nclaimed {len(claimed)} due orders with one lease")
        mine = {o.id: o for o in claimed}
        outcomes = [OrderStatus.PAID, OrderStatus.REJECTED, OrderStatus.EXPIRED]
        for i, order in enumerate(made):
            if order.id not in mine:
                continue
            leased = mine[order.id]
            if i == len(made) - 1:
                repo.cancel(order.id, actor="demo", reason="buyer changed their mind")
                continue
            step = repo.transition(
                order.id,
                OrderStatus.NEW,
                OrderStatus.SUBMITTING,
                actor="demo",
                lease_token=leased.lease_token,
                keep_lease=True,
            )
            step = repo.transition(
                order.id,
                OrderStatus.SUBMITTING,
                OrderStatus.AWAITING_PAYMENT,
                actor="demo",
                lease_token=step.lease_token,
                psp_id=f"demo-{order.number}",
                pay_url=f"http://127.0.0.1/pay/{order.number}",
            )
            if i < len(outcomes):
                repo.transition(order.id, OrderStatus.AWAITING_PAYMENT, outcomes[i], actor="demo")
        final = [repo.get(o.id) for o in made]
        _print_orders("after one pass:", final)
        events = repo.events(made[0].id)
        print(f"\nhistory of order {made[0].number}: " + " -> ".join(e.to_status for e in events))
        counts: dict[str, int] = {}
        for order in final:
            counts[order.status] = counts.get(order.status, 0) + 1
        print("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    finally:
        pool.close()
    return 0
