"""The reconciliation report (issue #16): what it holds, the pure comparison of what paydispatch
recorded with what a payment system shows, and the report's text, JSON and CSV forms.

No I/O: ``dispatcher.ops.reconcile`` (the ``paydispatch reconcile`` command) reads the database and
the payment systems and hands the readings here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, TextIO
from uuid import UUID

from adapters.base import CanonicalState, StatusReport
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

S = OrderStatus
C = CanonicalState


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
    """One difference: the order as recorded here (if any) and the payment as shown there."""

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
    """A day's report over every payment system read; ``[since, until)`` is the UTC day."""

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


def owner(seen: Seen, by_psp: Mapping[str, Order], by_id: Mapping[UUID, Order]) -> Order | None:
    """The order a payment belongs to: the one recording its id, else the one it names."""
    order = by_psp.get(seen.report.psp_id or "")
    if order is None and seen.order_id is not None:
        order = by_id.get(seen.order_id)
    return order


def _difference(
    kind: Kind, adapter: str, detail: str, order: Order | None, report: StatusReport | None
) -> Difference:
    psp_id = report.psp_id if report is not None else None
    if psp_id is None and order is not None:
        psp_id = order.psp_id
    return Difference(
        kind=kind,
        adapter=adapter,
        site=None if order is None else order.site,
        detail=detail,
        order_id=None if order is None else order.id,
        number=None if order is None else order.number,
        psp_id=psp_id,
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
        order = owner(item, by_psp, by_id)
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
            found = owner(item, by_psp, by_id)
            summary = of(None if found is None else found.site)
            summary.paid_there += 1
            _add(summary.paid_there_amounts, item.report.money)
    for difference in differences:
        of(difference.site).differences += 1
    return sorted(summaries.values(), key=lambda s: (s.site is None, s.site or ""))


def _index(orders: Iterable[Order]) -> tuple[dict[str, Order], dict[UUID, Order]]:
    listed = list(orders)
    return {o.psp_id: o for o in listed if o.psp_id}, {o.id: o for o in listed}


def day_window(day: date) -> tuple[datetime, datetime]:
    """The UTC day as ``[since, until)``."""
    since = datetime.combine(day, time(0), tzinfo=UTC)
    return since, since + timedelta(days=1)


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
