"""``paydispatch wallet audit``: prove the ledger from the database, or say what is wrong.

Checks, each one SQL statement over the whole database (or one site):

1. every wallet's balance equals the sum of its entries, and the last entry's ``balance_after``;
2. every entry's ``balance_after`` equals the running sum of the wallet's entries up to it;
3. every paid order has exactly one ``topup`` credit (when the wallet hook is on) and one outbox
   event (when the webhook hook is on), of the order's user, amount and currency;
4. no credit names an order that is not paid;
5. refunds never exceed the order's top-up.

Late payments (paid from expired, rejected or cancelled) and refunds are listed in the report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orders.repository import Pool, database_errors

_BALANCES = """
SELECT * FROM (
    SELECT w.site, w.user_id, w.currency, w.balance,
           (SELECT coalesce(sum(e.amount), 0) FROM wallet_entries e
            WHERE (e.site, e.user_id, e.currency) = (w.site, w.user_id, w.currency))
               AS entries_sum,
           (SELECT e.balance_after FROM wallet_entries e
            WHERE (e.site, e.user_id, e.currency) = (w.site, w.user_id, w.currency)
            ORDER BY e.id DESC LIMIT 1) AS last_after
    FROM wallets w WHERE (%(site)s::text IS NULL OR w.site = %(site)s)
) x
WHERE balance <> entries_sum OR balance <> coalesce(last_after, 0)
ORDER BY site, user_id, currency
"""

_RUNNING = """
SELECT id, site, user_id, currency, balance_after, running FROM (
    SELECT e.*, sum(amount) OVER (PARTITION BY site, user_id, currency ORDER BY id) AS running
    FROM wallet_entries e WHERE (%(site)s::text IS NULL OR site = %(site)s)
) x WHERE balance_after <> running ORDER BY id
"""

_PAID_WITHOUT_ONE_CREDIT = """
SELECT o.id, o.site, o.user_id, o.amount, o.currency, count(e.id) AS credits,
       array_agg(DISTINCT e.user_id) FILTER (WHERE e.id IS NOT NULL) AS users,
       sum(e.amount) AS credited, array_agg(DISTINCT e.currency) FILTER (WHERE e.id IS NOT NULL)
           AS currencies
FROM orders o
LEFT JOIN wallet_entries e ON e.order_id = o.id AND e.kind = 'topup'
WHERE o.status = 'paid' AND (%(site)s::text IS NULL OR o.site = %(site)s)
GROUP BY o.id
HAVING count(e.id) <> 1 OR sum(e.amount) <> o.amount
    OR array_agg(DISTINCT e.currency) <> ARRAY[o.currency]
    OR array_agg(DISTINCT e.user_id) <> ARRAY[o.user_id]
    OR bool_or(e.site <> o.site)
ORDER BY o.site, o.id
"""

_PAID_WITHOUT_ONE_EVENT = """
SELECT o.id, o.site, count(b.id) AS events
FROM orders o LEFT JOIN billing_outbox b ON b.order_id = o.id AND b.event_type = 'order.paid'
WHERE o.status = 'paid' AND (%(site)s::text IS NULL OR o.site = %(site)s)
GROUP BY o.id HAVING count(b.id) <> 1
ORDER BY o.site, o.id
"""

_CREDITS_WITHOUT_PAID_ORDER = """
SELECT e.id, e.site, e.user_id, e.kind, e.amount, e.currency, e.order_id, o.status
FROM wallet_entries e JOIN orders o ON o.id = e.order_id
WHERE e.amount > 0 AND o.status <> 'paid' AND (%(site)s::text IS NULL OR e.site = %(site)s)
ORDER BY e.id
"""

_REFUNDS = """
SELECT r.order_id, r.site, r.currency, -sum(r.amount) AS refunded,
       coalesce((SELECT sum(t.amount) FROM wallet_entries t
                 WHERE t.order_id = r.order_id AND t.kind = 'topup'), 0) AS credited
FROM wallet_entries r
WHERE r.kind = 'refund' AND (%(site)s::text IS NULL OR r.site = %(site)s)
GROUP BY r.order_id, r.site, r.currency
ORDER BY r.site, r.order_id
"""

_LATE = """
SELECT o.id, o.site, o.user_id, o.amount, o.currency, ev.from_status,
       EXISTS (SELECT 1 FROM wallet_entries e WHERE e.order_id = o.id AND e.kind = 'topup')
           AS credited
FROM orders o
JOIN order_events ev ON ev.order_id = o.id AND ev.to_status = 'paid'
    AND ev.from_status IN ('expired', 'rejected', 'cancelled')
WHERE o.status = 'paid' AND (%(site)s::text IS NULL OR o.site = %(site)s)
ORDER BY o.site, o.paid_at
"""

_TOTALS = """
SELECT (SELECT count(*) FROM wallets WHERE (%(site)s::text IS NULL OR site = %(site)s))
           AS wallets,
       (SELECT count(*) FROM wallet_entries WHERE (%(site)s::text IS NULL OR site = %(site)s))
           AS entries,
       (SELECT count(*) FROM orders
        WHERE status = 'paid' AND (%(site)s::text IS NULL OR site = %(site)s)) AS paid_orders
"""


@dataclass
class AuditReport:
    """What the audit found; ``ok`` when there is no discrepancy."""

    totals: dict[str, int] = field(default_factory=dict)
    discrepancies: list[str] = field(default_factory=list)
    late_payments: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def lines(self) -> list[str]:
        t = self.totals
        out = [
            f"wallet audit: {t.get('wallets', 0)} wallets, {t.get('entries', 0)} entries, "
            f"{t.get('paid_orders', 0)} paid orders",
            f"late payments: {len(self.late_payments)}",
            *(f"  {line}" for line in self.late_payments),
            f"refunds: {len(self.refunds)}",
            *(f"  {line}" for line in self.refunds),
        ]
        if self.ok:
            out.append("OK: every balance matches its entries; every paid order is credited once")
        else:
            out.append(f"DISCREPANCIES: {len(self.discrepancies)}")
            out.extend(f"  {line}" for line in self.discrepancies)
        return out


def _rows(pool: Pool, statement: str, site: str | None) -> Iterable[dict[str, Any]]:
    with database_errors(), pool.connection() as conn:
        return conn.execute(statement, {"site": site}).fetchall()


def audit(
    pool: Pool, *, site: str | None = None, wallet_hook: bool = True, webhook_hook: bool = False
) -> AuditReport:
    """Run every check (over one site, or all)."""
    report = AuditReport()
    totals = list(_rows(pool, _TOTALS, site))
    report.totals = {k: int(v) for k, v in totals[0].items()} if totals else {}
    bad = report.discrepancies
    for r in _rows(pool, _BALANCES, site):
        bad.append(
            f"balance: wallet {r['site']}/{r['user_id']}/{r['currency']} holds {r['balance']}, "
            f"its entries sum to {r['entries_sum']}, last balance_after {r['last_after']}"
        )
    for r in _rows(pool, _RUNNING, site):
        bad.append(
            f"entry {r['id']} ({r['site']}/{r['user_id']}/{r['currency']}): balance_after "
            f"{r['balance_after']}, running sum {r['running']}"
        )
    if wallet_hook:
        for r in _rows(pool, _PAID_WITHOUT_ONE_CREDIT, site):
            bad.append(
                f"paid order {r['id']} ({r['site']}, user {r['user_id']}, {r['amount']} "
                f"{r['currency']}): {r['credits']} top-up credit(s)"
                + (f" of {r['credited']} {r['currencies']} to {r['users']}" if r["credits"] else "")
            )
    if webhook_hook:
        for r in _rows(pool, _PAID_WITHOUT_ONE_EVENT, site):
            bad.append(f"paid order {r['id']} ({r['site']}): {r['events']} webhook event(s)")
    for r in _rows(pool, _CREDITS_WITHOUT_PAID_ORDER, site):
        bad.append(
            f"entry {r['id']}: {r['kind']} {r['amount']} {r['currency']} to {r['site']}/"
            f"{r['user_id']} for order {r['order_id']}, which is {r['status']}, not paid"
        )
    for r in _rows(pool, _REFUNDS, site):
        line = (
            f"order {r['order_id']} ({r['site']}): refunded {r['refunded']} of "
            f"{r['credited']} {r['currency']} credited"
        )
        report.refunds.append(line)
        if r["refunded"] > r["credited"]:
            bad.append(f"refund exceeds credit: {line}")
    for r in _rows(pool, _LATE, site):
        report.late_payments.append(
            f"order {r['id']} ({r['site']}, user {r['user_id']}): {r['amount']} {r['currency']} "
            f"paid after {r['from_status']}; "
            + ("credited" if r["credited"] else "no wallet credit")
        )
    return report
