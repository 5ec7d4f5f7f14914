"""``paydispatch reconcile``: one day's payments as paydispatch recorded them against what each
payment system says (issue #16).

Per site and payment system: the orders paid that day (count, sum per currency), the refunds
recorded that day (``paydispatch wallet refund``), what the payment system shows paid, and every
difference (:class:`Kind`). How a payment system is read:

- one that lists payments (``Capabilities.list_payments``) is asked for every payment created that
  day, page by page; an order paid that day whose payment the list does not show (made on an
  earlier day) is re-read with its status call;
- one without a list gets a status call for each order paid that day and for each order of that
  day that ended unpaid (rejected, expired, cancelled): the only way it can show a payment the
  dispatcher missed.

Every call goes through the dispatcher's transport (timeouts, retries, rate limit, breaker), at
most ``--concurrency`` at once. Exit status: 0 without differences, 1 with differences, 2 when the
report is incomplete (a payment system or an order's payment could not be read). :func:`compare`
is the pure comparison; the rest reads and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, TextIO
from uuid import UUID

from adapters.base import CanonicalState, NotSupported, StatusReport
from dispatcher import config, services
from dispatcher.runtime import AdapterRuntime, build_adapters
from orders.errors import DispatchError
from orders.model import Order
from orders.money import Money
from orders.repository import Pool, database_errors, open_pool
from orders.status import OrderStatus

S = OrderStatus
C = CanonicalState

# A page of a list is one call; more pages than this for one day means something loops.
MAX_PAGES = 10_000
PROGRESS_EVERY = 50  # status re-reads between two progress lines


class Kind(StrEnum):
    """What kind of difference; each value's comment is what an operator checks."""

    PAID_HERE_NOT_THERE = "paid_here_not_there"  # credited here; did the money arrive?
    PAID_THERE_NOT_HERE = "paid_there_not_here"  # money arrived; nobody was credited for it
    AMOUNT_MISMATCH = "amount_mismatch"  # paid on both sides, other amount or currency
    REFUND_NOT_RECORDED = "refund_not_recorded"  # refunded there; the wallet still holds it
    NEEDS_REVIEW = "needs_review"  # waiting for `paydispatch orders resolve`


@dataclass(frozen=True, slots=True)
class Seen:
    """One payment as the payment system shows it, and the order it concerns if it says."""

    report: StatusReport  # with psp_id and money
    order_id: UUID | None = None  # the order the payment names (list) or was read for (status)
    via: str = "list"  # "list" or "status"


@dataclass(frozen=True, slots=True)
class Difference:
    kind: Kind
    adapter: str
    site: str | None  # None: the payment names no order of ours
    detail: str
    order_id: UUID | None = None
    number: int | None = None
    psp_id: str | None = None
    status_here: str | None = None
    state_there: str | None = None
    money_here: Money | None = None
    money_there: Money | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that could not be read: the report is incomplete (exit status 2)."""

    adapter: str
    message: str
    order_id: UUID | None = None


@dataclass(slots=True)
class Summary:
    """One site's day at one payment system. Amounts are minor units per currency."""

    site: str | None
    adapter: str
    method: str  # "list" or "status": how the payment system was read
    paid_orders: int = 0
    paid: dict[str, int] = field(default_factory=dict)
    refunds: int = 0
    refunded: dict[str, int] = field(default_factory=dict)
    paid_there: int = 0  # payments the payment system shows paid, of those compared
    paid_there_amounts: dict[str, int] = field(default_factory=dict)
    differences: int = 0


@dataclass(slots=True)
class Report:
    day: date
    since: datetime
    until: datetime
    summaries: list[Summary] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.problems else 1 if self.differences else 0


# -- the comparison (pure) ------------------------------------------------------------------


def _owner(seen: Seen, by_psp: Mapping[str, Order], by_id: Mapping[UUID, Order]) -> Order | None:
    """The order a payment belongs to: the one recording its id, else the one it names."""
    order = by_psp.get(seen.report.psp_id or "")
    if order is None and seen.order_id is not None:
        order = by_id.get(seen.order_id)
    return order


def _difference(
    kind: Kind, adapter: str, detail: str, order: Order | None, report: StatusReport | None
) -> Difference:
    return Difference(
        kind=kind,
        adapter=adapter,
        site=None if order is None else order.site,
        detail=detail,
        order_id=None if order is None else order.id,
        number=None if order is None else order.number,
        psp_id=report.psp_id if report is not None else None if order is None else order.psp_id,
        status_here=None if order is None else str(order.status),
        state_there=None if report is None else str(report.state),
        money_here=None if order is None else order.money,
        money_there=None if report is None else report.money,
    )


@dataclass(frozen=True, slots=True)
class Books:
    """What paydispatch recorded, as far as one payment system's day concerns it."""

    paid_today: Sequence[Order] = ()  # the orders paid on the day
    # Every other order the readings may concern: the orders the payments name, by our id or
    # the payment's (whatever their site, so no payment is taken for nobody's).
    known: Sequence[Order] = ()
    refunded: Mapping[UUID, int] = field(default_factory=dict)  # refunds recorded, minor units
    review: Sequence[Order] = ()  # orders in needs_review
    # Orders whose payment could not be read: problems, so not reported as missing payments.
    unread: Collection[UUID] = frozenset()

    def index(self) -> tuple[dict[str, Order], dict[UUID, Order]]:
        return _index([*self.paid_today, *self.known])


Verdict = tuple[Kind, str] | None


def _paid_there(report: StatusReport, order: Order | None) -> Verdict:
    """A payment the payment system shows paid, against the order recording it."""
    if order is None:
        return Kind.PAID_THERE_NOT_HERE, "no order records this payment"
    if order.psp_id != report.psp_id:
        other = order.psp_id or "no payment"
        detail = f"a second payment for this order, which records {other} and is {order.status}"
        return Kind.PAID_THERE_NOT_HERE, detail
    if order.status is not S.PAID:
        return Kind.PAID_THERE_NOT_HERE, f"the order is {order.status}"
    if report.money is not None and report.money != order.money:
        return Kind.AMOUNT_MISMATCH, f"paid {order.money} here, {report.money} there"
    return None


def _unpaid_there(report: StatusReport, order: Order, refunded: int) -> Verdict:
    """A payment the payment system shows unpaid or refunded, against an order paid here."""
    if report.state is not C.REFUNDED:
        shown = str(report.state)
        if report.raw_status and report.raw_status != shown:
            shown += f" ({report.raw_status})"
        return Kind.PAID_HERE_NOT_THERE, f"the payment system says {shown}"
    if refunded >= order.money.amount:
        return None
    recorded = Money(refunded, order.money.currency)
    return Kind.REFUND_NOT_RECORDED, f"refunded there; {recorded} of {order.money} recorded here"


def _judge(adapter: str, item: Seen, order: Order | None, books: Books) -> Difference | None:
    """The difference one reading shows, if any."""
    report = item.report
    verdict: Verdict = None
    if report.state is C.PAID:
        verdict = _paid_there(report, order)
    elif order is not None and order.psp_id == report.psp_id and order.status is S.PAID:
        verdict = _unpaid_there(report, order, books.refunded.get(order.id, 0))
    if verdict is None:
        return None
    return _difference(verdict[0], adapter, verdict[1], order, report)


def compare(adapter: str, books: Books, seen: Sequence[Seen]) -> list[Difference]:
    """The differences between what paydispatch recorded and what the payment system shows."""
    by_psp, by_id = books.index()
    differences: list[Difference] = []
    shown = {item.report.psp_id for item in seen}
    for item in seen:
        order = _owner(item, by_psp, by_id)
        if order is not None and order.status is S.NEEDS_REVIEW:
            continue  # listed below, once
        difference = _judge(adapter, item, order, books)
        if difference is not None:
            differences.append(difference)
    for order in books.paid_today:
        if order.id in books.unread or (order.psp_id is not None and order.psp_id in shown):
            continue
        detail = (
            "no payment id recorded"
            if order.psp_id is None
            else "the payment system shows no such payment"
        )
        differences.append(_difference(Kind.PAID_HERE_NOT_THERE, adapter, detail, order, None))
    for order in books.review:
        detail = f"waiting for a person: {order.last_error or 'see paydispatch orders show'}"
        differences.append(_difference(Kind.NEEDS_REVIEW, adapter, detail, order, None))
    return differences


def _add(amounts: dict[str, int], money: Money) -> None:
    amounts[money.currency] = amounts.get(money.currency, 0) + money.amount


def summarise(
    adapter: str,
    books: Books,
    seen: Sequence[Seen],
    *,
    method: str,
    refunds: Iterable[tuple[str, Money, int]],
    differences: Sequence[Difference],
) -> list[Summary]:
    """One summary per site; ``refunds`` are (site, sum, count) recorded on the day. Payments
    the payment system shows paid that name no order of ours go under no site."""
    by_psp, by_id = books.index()
    summaries: dict[str | None, Summary] = {}

    def of(site: str | None) -> Summary:
        return summaries.setdefault(site, Summary(site, adapter, method))

    for order in books.paid_today:
        summary = of(order.site)
        summary.paid_orders += 1
        _add(summary.paid, order.money)
    for site, money, count in refunds:
        summary = of(site)
        summary.refunds += count
        _add(summary.refunded, money)
    for item in seen:
        if item.report.state is C.PAID and item.report.money is not None:
            owner = _owner(item, by_psp, by_id)
            summary = of(None if owner is None else owner.site)
            summary.paid_there += 1
            _add(summary.paid_there_amounts, item.report.money)
    for difference in differences:
        of(difference.site).differences += 1
    return sorted(summaries.values(), key=lambda s: (s.site is None, s.site or ""))


# -- reading the books and the payment systems ----------------------------------------------

PAID_SQL = """
SELECT * FROM orders
WHERE adapter = %(adapter)s AND status = 'paid' AND paid_at >= %(since)s AND paid_at < %(until)s
  AND (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY paid_at, id
"""
# Orders of the day that ended unpaid: re-read where the payment system has no list.
UNPAID_SQL = """
SELECT * FROM orders
WHERE adapter = %(adapter)s AND status IN ('rejected', 'expired', 'cancelled')
  AND psp_id IS NOT NULL AND created_at >= %(since)s AND created_at < %(until)s
  AND (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY created_at, id
"""
REVIEW_SQL = """
SELECT * FROM orders
WHERE adapter = %(adapter)s AND status = 'needs_review' AND created_at < %(until)s
  AND (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY created_at, id
"""
# Every site's: a payment must be recognised as another site's order, not reported as nobody's.
NAMED_SQL = """
SELECT * FROM orders
WHERE adapter = %(adapter)s AND (psp_id = ANY(%(psp_ids)s) OR id = ANY(%(ids)s))
"""
REFUNDED_SQL = """
SELECT order_id, -sum(amount) AS refunded FROM wallet_entries
WHERE kind = 'refund' AND order_id = ANY(%(ids)s)
GROUP BY order_id
"""
DAY_REFUNDS_SQL = """
SELECT e.site, e.currency, count(*) AS refunds, -sum(e.amount) AS refunded
FROM wallet_entries e JOIN orders o ON o.id = e.order_id
WHERE e.kind = 'refund' AND o.adapter = %(adapter)s
  AND e.created_at >= %(since)s AND e.created_at < %(until)s
  AND (%(site)s::text IS NULL OR e.site = %(site)s)
GROUP BY e.site, e.currency
ORDER BY e.site, e.currency
"""


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
    runtime: AdapterRuntime, transport: Any, since: datetime, until: datetime, progress: Progress
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
            raise NotSupported(f"{adapter.name}: the list repeats its cursor {cursor!r}")
        cursor = page.next_cursor
    raise NotSupported(f"{adapter.name}: more than {MAX_PAGES} pages for one day")


async def _read_statuses(
    runtime: AdapterRuntime,
    transport: Any,
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
    from dispatcher.transport import Transport  # the HTTP stack only for this command

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


def _index(orders: Iterable[Order]) -> tuple[dict[str, Order], dict[UUID, Order]]:
    listed = list(orders)
    return {o.psp_id: o for o in listed if o.psp_id}, {o.id: o for o in listed}


def _refunds(pool: Pool, params: Mapping[str, Any]) -> list[tuple[str, Money, int]]:
    """Refunds recorded on the day: (site, sum, count) per site and currency."""
    with database_errors(), pool.connection() as conn:
        rows = conn.execute(DAY_REFUNDS_SQL, params).fetchall()
    return [(r["site"], Money(int(r["refunded"]), r["currency"]), int(r["refunds"])) for r in rows]


def _books(pool: Pool, name: str, paid_today: list[Order], seen: Sequence[Seen]) -> Books:
    """The orders the readings concern, and the refunds recorded for the paid ones."""
    psp_ids = [s.report.psp_id for s in seen if s.report.psp_id]
    ids = [s.order_id for s in seen if s.order_id is not None]
    known = _orders(pool, NAMED_SQL, {"adapter": name, "psp_ids": psp_ids, "ids": ids})
    paid_ids = [o.id for o in [*paid_today, *known] if o.status is S.PAID]
    with database_errors(), pool.connection() as conn:
        rows = conn.execute(REFUNDED_SQL, {"ids": paid_ids}).fetchall()
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
    paid_today = _orders(pool, PAID_SQL, params)
    review = _orders(pool, REVIEW_SQL, params)
    refunds = _refunds(pool, params)
    listing = runtime.adapter.capabilities.list_payments
    unpaid_today = [] if listing else _orders(pool, UNPAID_SQL, params)
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
        seen = [s for s in seen if _site_of(_owner(s, by_psp, by_id)) in (site, None)]
    method = "list" if listing else "status"
    report.summaries.extend(
        summarise(name, books, seen, method=method, refunds=refunds, differences=differences)
    )
    report.differences.extend(differences)


def _site_of(order: Order | None) -> str | None:
    return None if order is None else order.site


def day_window(day: date) -> tuple[datetime, datetime]:
    """The UTC day as ``[since, until)``."""
    since = datetime.combine(day, time(0), tzinfo=UTC)
    return since, since + timedelta(days=1)


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
    runtimes = build_adapters(settings)
    pool = open_pool(services.ensure(settings).database_url, max_size=2, name="reconcile")
    try:
        for runtime in runtimes.values():
            reconcile_adapter(
                pool,
                runtime,
                report,
                site=site,
                concurrency=concurrency,
                progress=progress or _quiet,
            )
    finally:
        pool.close()
    return report


def _quiet(line: str) -> None:
    del line


# -- output ---------------------------------------------------------------------------------


def _amounts(amounts: Mapping[str, int]) -> str:
    return ", ".join(str(Money(v, c)) for c, v in sorted(amounts.items())) or "-"


def _money_json(money: Money | None) -> dict[str, Any] | None:
    return None if money is None else {"amount": money.amount, "currency": money.currency}


def to_json(report: Report) -> dict[str, Any]:
    """The report as JSON: amounts in minor units, as the API writes them."""
    return {
        "date": report.day.isoformat(),
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "ok": report.exit_code == 0,
        "summaries": [
            {
                "site": s.site,
                "adapter": s.adapter,
                "method": s.method,
                "paid_orders": s.paid_orders,
                "paid": s.paid,
                "refunds": s.refunds,
                "refunded": s.refunded,
                "paid_there": s.paid_there,
                "paid_there_amounts": s.paid_there_amounts,
                "differences": s.differences,
            }
            for s in report.summaries
        ],
        "differences": [
            {
                "kind": str(d.kind),
                "site": d.site,
                "adapter": d.adapter,
                "order_id": None if d.order_id is None else str(d.order_id),
                "number": d.number,
                "psp_id": d.psp_id,
                "status_here": d.status_here,
                "state_there": d.state_there,
                "money_here": _money_json(d.money_here),
                "money_there": _money_json(d.money_there),
                "detail": d.detail,
            }
            for d in report.differences
        ],
        "errors": [
            {
                "adapter": p.adapter,
                "order_id": None if p.order_id is None else str(p.order_id),
                "message": p.message,
            }
            for p in report.problems
        ],
    }


CSV_COLUMNS = (
    "record",
    "date",
    "site",
    "adapter",
    "method",
    "currency",
    "paid_orders",
    "paid_amount",
    "refunds",
    "refunded_amount",
    "paid_there",
    "paid_there_amount",
    "differences",
    "kind",
    "order_id",
    "number",
    "psp_id",
    "status_here",
    "state_there",
    "amount_here",
    "currency_here",
    "amount_there",
    "currency_there",
    "detail",
)


def write_csv(report: Report, out: TextIO) -> None:
    """One file: ``summary`` rows (one per site, payment system and currency), then one
    ``difference`` row per difference and one ``error`` row per problem. Amounts are minor
    units; a summary of a day without money has one row with an empty currency."""
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    day = report.day.isoformat()
    for s in report.summaries:
        currencies = sorted({*s.paid, *s.refunded, *s.paid_there_amounts}) or [""]
        for currency in currencies:
            writer.writerow(
                {
                    "record": "summary",
                    "date": day,
                    "site": s.site or "",
                    "adapter": s.adapter,
                    "method": s.method,
                    "currency": currency,
                    "paid_orders": s.paid_orders,
                    "paid_amount": s.paid.get(currency, 0),
                    "refunds": s.refunds,
                    "refunded_amount": s.refunded.get(currency, 0),
                    "paid_there": s.paid_there,
                    "paid_there_amount": s.paid_there_amounts.get(currency, 0),
                    "differences": s.differences,
                }
            )
    for d in report.differences:
        writer.writerow(
            {
                "record": "difference",
                "date": day,
                "site": d.site or "",
                "adapter": d.adapter,
                "kind": str(d.kind),
                "order_id": d.order_id or "",
                "number": d.number or "",
                "psp_id": d.psp_id or "",
                "status_here": d.status_here or "",
                "state_there": d.state_there or "",
                "amount_here": "" if d.money_here is None else d.money_here.amount,
                "currency_here": "" if d.money_here is None else d.money_here.currency,
                "amount_there": "" if d.money_there is None else d.money_there.amount,
                "currency_there": "" if d.money_there is None else d.money_there.currency,
                "detail": d.detail,
            }
        )
    for p in report.problems:
        writer.writerow(
            {
                "record": "error",
                "date": day,
                "adapter": p.adapter,
                "order_id": p.order_id or "",
                "detail": p.message,
            }
        )


def write_text(report: Report, out: TextIO) -> None:
    print(
        f"Reconciliation of {report.day} (UTC, {report.since:%Y-%m-%d %H:%M} to "
        f"{report.until:%Y-%m-%d %H:%M})",
        file=out,
    )
    for s in report.summaries:
        print(
            f"\n{s.site or '(no order of ours)'} at {s.adapter} (read by {s.method}):\n"
            f"  paid here:   {s.paid_orders} orders, {_amounts(s.paid)}\n"
            f"  refunds:     {s.refunds}, {_amounts(s.refunded)}\n"
            f"  paid there:  {s.paid_there} payments, {_amounts(s.paid_there_amounts)}\n"
            f"  differences: {s.differences}",
            file=out,
        )
    if not report.summaries:
        print("\nnothing paid, refunded or waiting for review that day", file=out)
    print(f"\ndifferences: {len(report.differences) or 'none'}", file=out)
    for d in report.differences:
        order = "no order" if d.order_id is None else f"order {d.number} ({d.order_id})"
        print(
            f"  {d.kind}  {d.site or '-'}  {d.adapter}  {order}  payment {d.psp_id or '-'}: "
            f"{d.detail}",
            file=out,
        )
    if report.problems:
        print(f"\nnot read ({len(report.problems)}): the report is incomplete", file=out)
        for p in report.problems:
            print(f"  {p.adapter}: {p.message}", file=out)


WRITERS: Mapping[str, Callable[[Report, TextIO], None]] = {
    "text": write_text,
    "json": lambda report, out: print(json.dumps(to_json(report), indent=2), file=out),
    "csv": write_csv,
}


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


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
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--date", type=_day, help="the UTC day, YYYY-MM-DD (default: yesterday, UTC)"
    )
    parser.add_argument("--site", help="only this site's orders")
    parser.add_argument("--adapter", help="only this payment system (default: every enabled)")
    parser.add_argument("--format", choices=sorted(WRITERS), default="text")
    parser.add_argument("--output", help="write the report to this file instead of stdout")
    parser.add_argument(
        "--concurrency", type=int, default=10, help="status calls in flight at once (default 10)"
    )
    parser.set_defaults(func=cmd_reconcile)
