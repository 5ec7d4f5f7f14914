"""Operator commands: ``paydispatch status``,
``paydispatch orders list|show|stuck|poll|resolve|refund|refunds``.

Every listing takes ``--json`` for scripts. ``resolve`` is how a person settles an order in
``needs_review``: it records who, why and the evidence in ``order_events``, and a resolution to
``paid`` runs the billing hook like any other payment. ``refund`` requests a refund of a paid
order as an operator (``--by`` recorded as who asked), the way a site's API request does;
``refund --record`` records one made at the payment system outside paydispatch (the one way to
record a refund by hand: counted and reversed like every refund, once per payment-system id).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import config, settle
from dispatcher.compose import Root
from dispatcher.refunds import order_refunds, refund_status, request_refund
from orders.db import database_errors, query
from orders.errors import DispatchError, InvalidTransition
from orders.model import Order, OrderEvent, PaidHook, Transfer, check_text
from orders.money import Money
from orders.repository import OrderRepository
from orders.status import OrderStatus
from orders.transfers import Transfers

S = OrderStatus

BREAKER_NAMES = {0: "closed", 1: "half-open", 2: "open"}


@contextmanager
def _repo() -> Iterator[OrderRepository]:
    with Root(config.load(), name="ops") as root:
        yield root.repository(pool_size=2, adapters=False)


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": str(order.id),
        "number": order.number,
        "site": order.site,
        "site_ref": order.site_ref,
        "user_id": order.user_id,
        "amount": order.money.amount,
        "currency": order.money.currency,
        "adapter": order.adapter,
        "status": str(order.status),
        "psp_id": order.psp_id,
        "attempts": order.attempts,
        "polls": order.polls,
        "next_run_at": _iso(order.next_run_at),
        "expires_at": _iso(order.expires_at),
        "last_error": order.last_error,
        "created_at": _iso(order.created_at),
        "paid_at": _iso(order.paid_at),
        "refunded_amount": order.refunded_amount,
        "refund_status": refund_status(order),
        "psp_payment_id": order.psp_payment_id,
    }


def event_json(event: OrderEvent) -> dict[str, Any]:
    return {
        "at": _iso(event.at),
        "from": None if event.from_status is None else str(event.from_status),
        "to": str(event.to_status),
        "actor": event.actor,
        "detail": dict(event.detail),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _table(orders: Sequence[Order]) -> None:
    print(f"{'number':>7}  {'id':<36}  {'adapter':<9} {'status':<17} {'amount':>14}  expires_at")
    for o in orders:
        print(
            f"{o.number:>7}  {o.id!s:<36}  {o.adapter:<9} {o.status!s:<17} "
            f"{o.money!s:>14}  {o.expires_at:%Y-%m-%d %H:%M}"
            + (f"  last error: {o.last_error[:60]}" if o.last_error else "")
        )


def breaker_states(targets: Sequence[str]) -> dict[str, dict[str, str]]:
    """``paydispatch_breaker_state`` per worker (metrics endpoint) and adapter."""
    found: dict[str, dict[str, str]] = {}
    for target in targets:
        url = target if "://" in target else f"http://{target}/metrics"
        try:
            text = httpx.get(url, timeout=2).text
        except httpx.HTTPError as exc:
            found[target] = {"*": f"unreachable ({type(exc).__name__})"}
            continue
        states: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "paydispatch_breaker_state":
                continue
            for sample in family.samples:
                adapter = sample.labels.get("adapter", "?")
                states[adapter] = BREAKER_NAMES.get(int(sample.value), str(sample.value))
        found[target] = states
    return found


def cmd_status(args: argparse.Namespace) -> int:
    with _repo() as repo, database_errors(), repo.pool.connection() as conn:
        counts = repo.status_counts()
        due = conn.execute(query("ops_due_counts")).fetchone() or {}
        outbox = conn.execute(query("ops_outbox_counts")).fetchone() or {}
    targets = [t.strip() for t in (args.metrics or "").split(",") if t.strip()]
    adapters = sorted({a for a, _ in counts})
    data: dict[str, Any] = {
        "orders": {a: {str(s): n for (a2, s), n in counts.items() if a2 == a} for a in adapters},
        "due_now": due.get("due", 0),
        "oldest_due_seconds": round(float(due.get("oldest_due_seconds", 0)), 1),
        "due_now_active": due.get("due_active", 0),
        "oldest_active_due_seconds": round(float(due.get("oldest_active_seconds", 0)), 1),
        "due_now_late_watch": due.get("due_late_watch", 0),
        "leased": due.get("leased", 0),
        "outbox": {
            "pending": outbox.get("pending", 0),
            "parked": outbox.get("parked", 0),
            "oldest_pending_seconds": round(float(outbox.get("oldest_pending_seconds", 0)), 1),
        },
        "breakers": breaker_states(targets),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    statuses = [str(s) for s in S]
    print(f"{'adapter':<10}" + "".join(f"{s[:12]:>13}" for s in statuses))
    for adapter in adapters:
        row = data["orders"][adapter]
        print(f"{adapter:<10}" + "".join(f"{row.get(s, 0):>13}" for s in statuses))
    print(
        f"\nactive orders due now: {data['due_now_active']} "
        f"(oldest due: {data['oldest_active_due_seconds']}s)   "
        f"leased (in flight): {data['leased']}\n"
        "finished orders watched for late payments (expired, rejected, cancelled), due now: "
        f"{data['due_now_late_watch']}"
    )
    box = data["outbox"]
    print(
        f"billing outbox: {box['pending']} pending (oldest {box['oldest_pending_seconds']}s), "
        f"{box['parked']} parked"
    )
    if not targets:
        print("breakers: give --metrics HOST:PORT,... (or PAYDISPATCH_METRICS_TARGETS) to show")
    for target, states in data["breakers"].items():
        shown = ", ".join(f"{a} {state}" for a, state in sorted(states.items())) or "no adapters"
        print(f"breakers at {target}: {shown}")
    return 0


def cmd_orders(args: argparse.Namespace) -> int:
    try:
        with _repo() as repo:
            return int(_ORDER_ACTIONS[args.action](repo, args))
    except DispatchError as exc:
        print(f"paydispatch: {exc}", file=sys.stderr)
        return 1


def _list(repo: OrderRepository, args: argparse.Namespace) -> int:
    page = repo.list_orders(
        site=args.site,
        status=OrderStatus(args.status) if args.status else None,
        user_id=args.user,
        adapter=args.adapter,
        limit=args.limit,
    )
    if args.json:
        print(json.dumps([order_json(o) for o in page.items], indent=2))
    else:
        _table(page.items)
    return 0


def _show(repo: OrderRepository, args: argparse.Namespace) -> int:
    order = repo.get(args.order_id)
    events = repo.events(order.id)
    if args.json:
        print(json.dumps(order_json(order) | {"events": [event_json(e) for e in events]}, indent=2))
        return 0
    for key, value in order_json(order).items():
        print(f"{key:>12}: {value}")
    print("      events:")
    for e in events:
        detail = f"  {json.dumps(dict(e.detail))}" if e.detail else ""
        move = f"{e.from_status or '-'} -> {e.to_status}"
        print(f"    {e.at:%Y-%m-%d %H:%M:%S}  {move}  {e.actor}{detail}")
    return 0


def _stuck(repo: OrderRepository, args: argparse.Namespace) -> int:
    with database_errors(), repo.pool.connection() as conn:
        params = {"grace": args.grace, "limit": args.limit}
        rows = conn.execute(query("ops_stuck"), params).fetchall()
    orders = [Order.from_row(r) for r in rows]
    if args.json:
        print(json.dumps([order_json(o) for o in orders], indent=2))
    elif orders:
        _table(orders)
    else:
        print("no stuck orders")
    return 0


def _poll(repo: OrderRepository, args: argparse.Namespace) -> int:
    with database_errors(), repo.pool.connection() as conn:
        row = conn.execute(query("ops_poll_now"), {"id": args.order_id}).fetchone()
    if row is None:
        order = repo.get(args.order_id)
        print(
            f"order {order.id} is {order.status}: nothing scheduled to poll, or a worker holds it"
        )
        return 1
    print(f"order {args.order_id} will be polled on the next sweep")
    return 0


# What a resolve records: who (``ops:<by>`` must fit an event's 200-character actor), why and
# the evidence; the console's text areas take as much.
RESOLVED_BY_MAX = 196
REASON_MAX = 1000
EVIDENCE_MAX = 2000


def resolve(
    repo: OrderRepository,
    order: Order,
    to: OrderStatus,
    *,
    by: str,
    reason: str,
    evidence: str,
    hook: PaidHook | None,
    also: settle.Also | None = None,
) -> Order:
    """Settle a ``needs_review`` order by hand: the one way a person does it, from
    ``orders resolve`` or the web console, so both record who, why and the evidence alike.

    Raises :class:`InvalidTransition` unless the order is in needs_review and ``to`` is paid
    or rejected, and :class:`StaleOrder` if it moved meanwhile. A move to paid runs the
    billing ``hook`` in the same transaction, like any other payment; so does ``also`` (the
    console's own record of the action). Written by :func:`dispatcher.settle.apply` on the
    repository's own loop (``repo.run``): the caller is synchronous.
    """
    if order.status is not S.NEEDS_REVIEW or to not in (S.PAID, S.REJECTED):
        raise InvalidTransition(order.status, to, "only needs_review orders are resolved")
    # Checked here, for the command line and the console alike: what the database cannot hold
    # (a NUL, a lone surrogate from bytes that were not UTF-8) is bad input, not a crash.
    check_text("by", by, limit=RESOLVED_BY_MAX)
    check_text("reason", reason, limit=REASON_MAX, controls=True)
    check_text("evidence", evidence, limit=EVIDENCE_MAX, required=False, controls=True)
    detail = {
        "resolved_by": by,
        "reason": reason,
        "evidence": evidence,
        "at": datetime.now(UTC).isoformat(),
    }
    decision = settle.Decision(to, detail)
    return repo.run(
        settle.apply(
            repo.orders, order, decision, actor=f"ops:{by}", hook=hook, use_lease=False, also=also
        )
    )


def _resolve(repo: OrderRepository, args: argparse.Namespace) -> int:
    order = repo.get(args.order_id)
    if order.status is not S.NEEDS_REVIEW:
        print(f"order {order.id} is {order.status}; only needs_review orders are resolved")
        return 1
    moved = resolve(
        repo,
        order,
        S(args.to),
        by=args.by,
        reason=args.reason,
        evidence=args.evidence,
        hook=Root(config.load()).paid_hook(),
    )
    print(f"order {moved.id} resolved: {order.status} -> {moved.status} by {args.by}")
    return 0


def refund_json(refund: Transfer) -> dict[str, Any]:
    return {
        "id": str(refund.id),
        "order_id": str(refund.order_id),
        "amount": refund.money.amount,
        "currency": refund.money.currency,
        "status": str(refund.status),
        "origin": refund.origin,
        "reason": refund.reason,
        "requested_by": refund.requested_by,
        "psp_refund_id": refund.psp_transfer_id,
        "attempts": refund.attempts,
        "last_error": refund.last_error,
        "created_at": _iso(refund.created_at),
        "settled_at": _iso(refund.settled_at),
    }


def _refund(repo: OrderRepository, args: argparse.Namespace) -> int:
    """Request a refund as an operator: written like a site's (``dispatcher.refunds``, with
    billing's check), then sent by the worker. ``--by`` is recorded as who asked. With
    ``--record``, a refund made at the payment system outside paydispatch is recorded instead."""
    if args.record != (args.psp_refund_id is not None) or (args.record and args.key):
        print(
            "paydispatch: --record takes --psp-refund-id (the payment system's id of the refund,"
            " which keys it: --key is for refunds paydispatch sends), and only --record does",
            file=sys.stderr,
        )
        return 2
    settings = config.load()
    order = repo.get(args.order_id)
    money = None if args.amount is None else Money.parse(args.amount, order.money.currency)
    if money is not None and money.amount <= 0:
        print(f"paydispatch: the amount must be positive, got {args.amount}", file=sys.stderr)
        return 2
    root = Root(settings, name="ops")
    if args.record:
        return _record_refund(repo, root, order, money, args)
    # What each payment system can do (nothing is sent from here: their settings unchecked).
    runtimes = root.adapters(check=False)
    capabilities = {name: rt.adapter.capabilities for name, rt in runtimes.items()}
    transfers = Transfers(repo.orders.pool, capabilities=capabilities)
    refund, created = repo.run(
        request_refund(
            transfers,
            order.id,
            money,
            site=None,
            idempotency_key=args.key,
            reason=args.reason,
            requested_by=args.by,
            origin="operator",
            check=root.refund_hold(),
        )
    )
    if args.json:
        print(json.dumps(refund_json(refund) | {"created": created}, indent=2))
        return 0
    said = "requested" if created else "was requested already (the same --key)"
    print(
        f"refund {refund.id} of {refund.money} for order {order.id} {said} by "
        f"{refund.requested_by}: {refund.status}; the worker sends it"
    )
    return 0


def _record_refund(
    repo: OrderRepository, root: Root, order: Order, money: Money | None, args: argparse.Namespace
) -> int:
    """Record a refund made at the payment system outside paydispatch (its dashboard, its
    support): a succeeded refund of origin ``operator`` keyed by the payment system's id,
    counted against what is left to refund and reversed in the wallet by billing's refund hook,
    like every refund; recorded once, whoever records it first (orders.transfers)."""
    transfers = Transfers(repo.orders.pool, hook=root.transfer_hook())
    refund, created = repo.run(
        transfers.record_refund(
            order.id,
            money,
            psp_refund_id=args.psp_refund_id,
            reason=args.reason,
            requested_by=args.by,
        )
    )
    if args.json:
        print(json.dumps(refund_json(refund) | {"created": created}, indent=2))
        return 0
    said = "recorded" if created else "was recorded already"
    print(
        f"refund {refund.id} of {refund.money} for order {order.id} ({order.adapter} refund "
        f"{refund.psp_transfer_id}) {said}: {refund.status}, origin {refund.origin}"
    )
    return 0


def _refunds(repo: OrderRepository, args: argparse.Namespace) -> int:
    order = repo.get(args.order_id)
    refunds = repo.run(order_refunds(Transfers(repo.orders.pool), order.id, site=None))
    if args.json:
        print(json.dumps([refund_json(r) for r in refunds], indent=2))
        return 0
    if not refunds:
        print(f"order {order.id} has no refunds")
        return 0
    print(f"{'id':<36}  {'status':<12} {'amount':>14}  {'by':<20} reason")
    for r in refunds:
        print(f"{r.id!s:<36}  {r.status!s:<12} {r.money!s:>14}  {r.requested_by:<20} {r.reason}")
    print(f"refunded: {Money(order.refunded_amount, order.money.currency)} of {order.money}")
    return 0


_ORDER_ACTIONS = {
    "list": _list,
    "show": _show,
    "stuck": _stuck,
    "poll": _poll,
    "resolve": _resolve,
    "refund": _refund,
    "refunds": _refunds,
}


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="orders, due work, outbox and breakers in one screen")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--metrics",
        default=os.environ.get("PAYDISPATCH_METRICS_TARGETS"),
        help="workers' metrics endpoints (HOST:PORT,...) to read breaker states from",
    )
    status.set_defaults(func=cmd_status)

    orders = sub.add_parser("orders", help="list, inspect, poll and resolve orders")
    actions = orders.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="orders newest first")
    listing.add_argument("--status", choices=[str(s) for s in S])
    listing.add_argument("--adapter")
    listing.add_argument("--site")
    listing.add_argument("--user")
    listing.add_argument("--limit", type=int, default=50)
    show = actions.add_parser("show", help="one order with its history")
    show.add_argument("order_id", type=UUID)
    stuck = actions.add_parser(
        "stuck", help="orders past their deadline or overdue, and needs_review"
    )
    stuck.add_argument("--grace", type=int, default=5, help="minutes of slack (default 5)")
    stuck.add_argument("--limit", type=int, default=100)
    poll = actions.add_parser("poll", help="poll an order on the next sweep")
    poll.add_argument("order_id", type=UUID)
    resolve = actions.add_parser("resolve", help="settle a needs_review order by hand")
    resolve.add_argument("order_id", type=UUID)
    resolve.add_argument("--to", required=True, choices=["paid", "rejected"])
    resolve.add_argument("--by", required=True, help="who decides (recorded)")
    resolve.add_argument("--reason", required=True, help="why (recorded)")
    resolve.add_argument("--evidence", default="", help="what was checked (recorded)")
    refund = actions.add_parser(
        "refund",
        help="refund a paid order, in full or in part (or --record one made at the payment system)",
    )
    refund.add_argument("order_id", type=UUID)
    refund.add_argument(
        "--amount", help="major units of the order's currency, e.g. 12.50 (default: all left)"
    )
    refund.add_argument("--by", required=True, help="who asks (recorded)")
    refund.add_argument("--reason", required=True, help="why (recorded)")
    refund.add_argument("--key", help="an idempotency key: the same one never refunds twice")
    refund.add_argument(
        "--record",
        action="store_true",
        help="record a refund made at the payment system outside paydispatch (nothing is sent); "
        "the wallet is reversed once, whoever records the refund first",
    )
    refund.add_argument(
        "--psp-refund-id",
        help="with --record: the payment system's id of the refund (one record per id)",
    )
    refunds = actions.add_parser("refunds", help="an order's refunds")
    refunds.add_argument("order_id", type=UUID)
    for parser in (listing, show, stuck, refund, refunds):
        parser.add_argument("--json", action="store_true")
    for parser in (listing, show, stuck, poll, resolve, refund, refunds):
        parser.set_defaults(func=cmd_orders)
