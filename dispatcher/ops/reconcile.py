"""``paydispatch reconcile``: one day's payments as paydispatch recorded them against what each
payment system says (issue #16).

Per site and payment system: the orders paid that day (count, sum per currency), the refunds
recorded that day (the ledger's ``refund`` entries), what the payment system shows paid, and every
difference (:class:`dispatcher.ops.reconciliation.Kind`). How a payment system is read:

- one that lists payments (``Capabilities.list_payments``) is asked for every payment created that
  day, page by page; an order paid that day whose payment the list does not show (made on an
  earlier day) is re-read with its status call;
- one without a list gets a status call for each order paid that day and for each order of that
  day that ended unpaid (rejected, expired, cancelled): the only way it can show a payment the
  dispatcher missed.

Every call goes through the dispatcher's transport (timeouts, retries, rate limit, breaker), at
most ``--concurrency`` at once. Exit status: 0 without differences, 1 with differences, 2 when the
report is incomplete (a payment system or an order's payment could not be read). This module reads;
:mod:`dispatcher.ops.reconciliation` compares and writes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from adapters.base import MalformedResponse, NotSupported
from dispatcher import config, services
from dispatcher.compose import Root
from dispatcher.ops.reconciliation import (
    WRITERS,
    Books,
    Problem,
    Report,
    Seen,
    compare,
    day_window,
    owner,
    summarise,
)
from dispatcher.runtime import AdapterRuntime
from orders.db import Pool, database_errors, query
from orders.errors import DispatchError
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

if TYPE_CHECKING:
    from dispatcher.worker.transport import Transport

S = OrderStatus

# A page of a list is one call; more pages than this for one day means something loops.
MAX_PAGES = 10_000
PROGRESS_EVERY = 50  # status re-reads between two progress lines


# -- reading the books and the payment systems ----------------------------------------------


def _orders(pool: Pool, sql: str, params: Mapping[str, Any]) -> list[Order]:
    with database_errors(), pool.connection() as conn:
        return [Order.from_row(row) for row in conn.execute(sql, params).fetchall()]


def _uuid(text: str | None) -> UUID | None:
    try:
        return None if text is None else UUID(text)
    except ValueError:
        return None


Progress = Callable[[str], None]


async def _list_payments(
    runtime: AdapterRuntime,
    transport: Transport,
    since: datetime,
    until: datetime,
    progress: Progress,
) -> list[Seen]:
    adapter, settings = runtime.adapter, runtime.settings
    seen: list[Seen] = []
    cursor: str | None = None
    for pages in range(1, MAX_PAGES + 1):
        request = adapter.build_list(settings, since, until, cursor)
        page = adapter.parse_list(await transport.send(request), settings)
        seen.extend(Seen(p.report, _uuid(p.ref.order_id), "list") for p in page.payments)
        progress(f"{adapter.name}: listed {len(seen)} payments ({pages} page(s))")
        if page.next_cursor is None:
            return seen
        if page.next_cursor == cursor:
            raise MalformedResponse(f"{adapter.name}: the list repeats its cursor {cursor!r}")
        cursor = page.next_cursor
    raise MalformedResponse(f"{adapter.name}: more than {MAX_PAGES} pages for one day")


async def _read_statuses(
    runtime: AdapterRuntime,
    transport: Transport,
    orders: Sequence[Order],
    concurrency: int,
    progress: Progress,
) -> tuple[list[Seen], list[Problem]]:
    adapter, settings = runtime.adapter, runtime.settings
    slots = asyncio.Semaphore(concurrency)
    seen: list[Seen] = []
    problems: list[Problem] = []

    async def read(order: Order) -> None:
        async with slots:
            try:
                response = await transport.send(adapter.build_status(order, settings))
                report = adapter.parse_status(order, response, settings)
            except (DispatchError, NotSupported, ValueError) as exc:
                message = f"order {order.number}: status not read: {type(exc).__name__}: {exc}"
                problems.append(Problem(adapter.name, message, order.id))
                return
        seen.append(Seen(replace(report, psp_id=report.psp_id or order.psp_id), order.id, "status"))
        done = len(seen) + len(problems)
        if done % PROGRESS_EVERY == 0 or done == len(orders):
            progress(f"{adapter.name}: re-read {done}/{len(orders)} orders")

    await asyncio.gather(*(read(order) for order in orders))
    return seen, problems


async def _read_payment_system(
    runtime: AdapterRuntime,
    *,
    paid_today: Sequence[Order],
    unpaid_today: Sequence[Order],
    window: tuple[datetime, datetime],
    concurrency: int,
    progress: Progress,
) -> tuple[list[Seen] | None, list[Problem]]:
    """What the payment system shows; None (with the problem) when its list could not be read."""
    # The HTTP stack is imported by this command only, not by every `paydispatch` start.
    from dispatcher.worker.transport import Transport

    transport = Transport(runtime.adapter, runtime.settings, runtime.policy)
    try:
        seen: list[Seen] = []
        to_read = [o for o in [*paid_today, *unpaid_today] if o.psp_id]
        if runtime.adapter.capabilities.list_payments:
            try:
                seen = await _list_payments(runtime, transport, *window, progress)
            except (DispatchError, NotSupported, ValueError) as exc:
                return None, [Problem(runtime.name, f"payments not listed: {exc}")]
            listed = {item.report.psp_id for item in seen}
            to_read = [o for o in paid_today if o.psp_id and o.psp_id not in listed]
        read, problems = await _read_statuses(runtime, transport, to_read, concurrency, progress)
        return seen + read, problems
    finally:
        await transport.aclose()


def _refunds(pool: Pool, params: Mapping[str, Any]) -> list[tuple[str, Money, int]]:
    """Refunds recorded on the day: (site, sum, count) per site and currency."""
    with database_errors(), pool.connection() as conn:
        rows = conn.execute(query("reconcile_day_refunds"), params).fetchall()
    return [(r["site"], Money(int(r["refunded"]), r["currency"]), int(r["refunds"])) for r in rows]


def _books(pool: Pool, name: str, paid_today: list[Order], seen: Sequence[Seen]) -> Books:
    """The orders the readings concern, and the refunds recorded for the paid ones."""
    psp_ids = [s.report.psp_id for s in seen if s.report.psp_id]
    ids = [s.order_id for s in seen if s.order_id is not None]
    known = _orders(
        pool, query("reconcile_named"), {"adapter": name, "psp_ids": psp_ids, "ids": ids}
    )
    paid_ids = [o.id for o in [*paid_today, *known] if o.status is S.PAID]
    with database_errors(), pool.connection() as conn:
        rows = conn.execute(query("reconcile_refunded"), {"ids": paid_ids}).fetchall()
    return Books(paid_today, known, {r["order_id"]: int(r["refunded"]) for r in rows})


def reconcile_adapter(
    pool: Pool,
    runtime: AdapterRuntime,
    report: Report,
    *,
    site: str | None,
    concurrency: int,
    progress: Progress,
) -> None:
    """Read one payment system's day and add its summaries, differences and problems."""
    name = runtime.name
    params = {"adapter": name, "since": report.since, "until": report.until, "site": site}
    paid_today = _orders(pool, query("reconcile_paid"), params)
    review = _orders(pool, query("reconcile_review"), params)
    refunds = _refunds(pool, params)
    listing = runtime.adapter.capabilities.list_payments
    unpaid_today = [] if listing else _orders(pool, query("reconcile_unpaid"), params)
    seen, problems = asyncio.run(
        _read_payment_system(
            runtime,
            paid_today=paid_today,
            unpaid_today=unpaid_today,
            window=(report.since, report.until),
            concurrency=concurrency,
            progress=progress,
        )
    )
    report.problems.extend(problems)
    if seen is None:
        # Nothing to compare with: what was recorded is summed, and only reviews are listed.
        books, seen = Books(paid_today), []
        differences = compare(name, Books(review=review), seen)
    else:
        books = replace(
            _books(pool, name, paid_today, seen),
            review=review,
            unread=frozenset(p.order_id for p in problems if p.order_id is not None),
        )
        differences = compare(name, books, seen)
    if site is not None:
        # Other sites' payments are theirs; a payment that names no order of ours stays.
        by_psp, by_id = books.index()
        differences = [d for d in differences if d.site in (site, None)]
        seen = [s for s in seen if _site_of(owner(s, by_psp, by_id)) in (site, None)]
    method = "list" if listing else "status"
    report.summaries.extend(
        summarise(name, books, seen, method=method, refunds=refunds, differences=differences)
    )
    report.differences.extend(differences)


def _site_of(order: Order | None) -> str | None:
    return None if order is None else order.site


def run(
    settings: config.Settings,
    day: date,
    *,
    site: str | None = None,
    adapter: str | None = None,
    concurrency: int = 10,
    progress: Progress | None = None,
) -> Report:
    """The report of ``day`` for every enabled payment system (or the one named)."""
    since, until = day_window(day)
    report = Report(day, since, until)
    if adapter is not None:
        settings = replace(settings, enabled_adapters=(adapter,))
    if not settings.enabled_adapters:
        raise config.ConfigError("no payment system enabled: set PAYDISPATCH_ADAPTERS or --adapter")
    with Root(settings, name="reconcile") as root:
        for runtime in root.adapters(check=False).values():
            reconcile_adapter(
                root.pool(2),
                runtime,
                report,
                site=site,
                concurrency=concurrency,
                progress=progress or _quiet,
            )
    return report


def _quiet(line: str) -> None:
    del line


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def _progress(line: str) -> None:
    print(f"reconcile: {line}", file=sys.stderr, flush=True)


def cmd_reconcile(args: argparse.Namespace) -> int:
    day = args.date or (datetime.now(UTC).date() - timedelta(days=1))
    try:
        report = run(
            config.load(),
            day,
            site=args.site,
            adapter=args.adapter,
            concurrency=args.concurrency,
            progress=_progress,
        )
    except (config.ConfigError, services.ServiceError, DispatchError) as exc:
        print(f"paydispatch: {exc}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            WRITERS[args.format](report, out)
    else:
        WRITERS[args.format](report, sys.stdout)
    return report.exit_code


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "reconcile",
        help="a day's payments here against the payment systems; exit 1 on differences",
        description="One UTC day's paid orders, refunds and reviews per site and payment system, "
        "against what each payment system lists (or answers to a status call). Exit 0: no "
        "difference; 1: differences (listed); 2: the report is incomplete.",
    )
    parser.add_argument(
        "--date", type=_day, help="the UTC day, YYYY-MM-DD (default: yesterday, UTC)"
    )
    parser.add_argument("--site", help="only this site's orders")
    parser.add_argument("--adapter", help="only this payment system (default: every enabled)")
    parser.add_argument("--format", choices=sorted(WRITERS), default="text")
    parser.add_argument("--output", help="write the report to this file instead of stdout")
    parser.add_argument(
        "--concurrency",
        type=_positive,
        default=10,
        help="status calls in flight at once (default 10)",
    )
    parser.set_defaults(func=cmd_reconcile)
