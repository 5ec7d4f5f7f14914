"""``paydispatch wallet audit``: prove the ledger from the database, or say what is wrong.

Checks, each one SQL statement over the whole database (or one site):

1. every wallet's balance (and held) equals the sum of its entries' amounts (held amounts), and
   the last entry's ``balance_after`` (``held_after``);
2. every entry's ``balance_after`` and ``held_after`` equal the running sums up to it;
3. every paid order has exactly one ``topup`` credit (when the wallet hook is on) and one outbox
   event (when the webhook hook is on), of the order's user, amount and currency;
4. no credit names an order that is not paid;
5. refunds never exceed the order's top-up;
6. (wallet hook on) every succeeded refund transfer has exactly one ``refund`` entry of its
   amount, no other refund transfer has one (but a reversed chargeback, which also has one
   ``refund_reversal`` entry of its amount), and no final one left its request's hold open;
7. no bonus reversal takes back more than the bonus granted;
8. every withdrawal's hold is its amount + fee, settled as both once it succeeded, released
   whole once it failed or was cancelled, neither while it is open.

Late payments (paid from expired, rejected or cancelled), refunds, wallets that are overdrawn
or hold money, and refund entries no refund accounts for (written by the retired ``wallet
refund``: a person checks each against the order's refunds) are listed in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orders.db import AsyncPool, database_errors, query

# The checks: named queries of orders/db/sql/audit.sql.
CHECKS = (
    "audit_totals",
    "audit_balances",
    "audit_running",
    "audit_paid_without_one_credit",
    "audit_paid_without_one_event",
    "audit_credits_without_paid_order",
    "audit_refunds",
    "audit_late_payments",
    "audit_refund_transfers",
    "audit_unlinked_refunds",
    "audit_bonus_reversals",
    "audit_overdrawn",
    "audit_withdrawals",  # orders/db/sql/withdrawals.sql
)
Rows = dict[str, list[dict[str, Any]]]


@dataclass
class AuditReport:
    """What the audit found; ``ok`` when there is no discrepancy."""

    totals: dict[str, int] = field(default_factory=dict)
    discrepancies: list[str] = field(default_factory=list)
    late_payments: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)
    wallets: list[str] = field(default_factory=list)  # overdrawn, or holding money
    unlinked: list[str] = field(default_factory=list)  # refund entries no refund accounts for

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
            f"overdrawn or holding: {len(self.wallets)}",
            *(f"  {line}" for line in self.wallets),
        ]
        if self.unlinked:
            out.append(
                f"refund entries no refund records (the retired `wallet refund`; check each "
                f"against `paydispatch orders refunds`): {len(self.unlinked)}"
            )
            out.extend(f"  {line}" for line in self.unlinked)
        if self.ok:
            out.append("OK: every balance matches its entries; every paid order is credited once")
        else:
            out.append(f"DISCREPANCIES: {len(self.discrepancies)}")
            out.extend(f"  {line}" for line in self.discrepancies)
        return out


async def audit(
    pool: AsyncPool,
    *,
    site: str | None = None,
    wallet_hook: bool = True,
    webhook_hook: bool = False,
) -> AuditReport:
    """Run every check (over one site, or all); the paid orders' credits only with the wallet
    hook on, their webhook events only with the webhook hook on."""
    skip = {
        "audit_paid_without_one_credit": not wallet_hook,
        "audit_paid_without_one_event": not webhook_hook,
        "audit_refund_transfers": not wallet_hook,
    }
    return report(await _fetch(pool, site, [name for name in CHECKS if not skip.get(name)]))


async def _fetch(pool: AsyncPool, site: str | None, names: Sequence[str]) -> Rows:
    with database_errors():
        async with pool.connection() as conn:
            return {
                name: await (await conn.execute(query(name), {"site": site})).fetchall()
                for name in names
            }


def report(found: Rows) -> AuditReport:
    """The report of the checks' rows (``found``: query name -> rows; a check left out has
    none)."""
    result = AuditReport()
    totals = found["audit_totals"]
    result.totals = {k: int(v) for k, v in totals[0].items()} if totals else {}
    bad = result.discrepancies
    for r in found["audit_balances"]:
        bad.append(
            f"balance: wallet {r['site']}/{r['user_id']}/{r['currency']} holds {r['balance']}, "
            f"its entries sum to {r['entries_sum']}, last balance_after {r['last_after']}; "
            f"held {r['held']}, its entries' held sum to {r['held_sum']}, last held_after "
            f"{r['last_held_after']}"
        )
    for r in found["audit_running"]:
        bad.append(
            f"entry {r['id']} ({r['site']}/{r['user_id']}/{r['currency']}): balance_after "
            f"{r['balance_after']}, running sum {r['running']}; held_after {r['held_after']}, "
            f"running sum {r['held_running']}"
        )
    for r in found.get("audit_paid_without_one_credit", []):
        bad.append(
            f"paid order {r['id']} ({r['site']}, user {r['user_id']}, {r['amount']} "
            f"{r['currency']}): {r['credits']} top-up credit(s)"
            + (f" of {r['credited']} {r['currencies']} to {r['users']}" if r["credits"] else "")
        )
    for r in found.get("audit_paid_without_one_event", []):
        bad.append(f"paid order {r['id']} ({r['site']}): {r['events']} webhook event(s)")
    for r in found["audit_credits_without_paid_order"]:
        bad.append(
            f"entry {r['id']}: {r['kind']} {r['amount']} {r['currency']} to {r['site']}/"
            f"{r['user_id']} for order {r['order_id']}, which is {r['status']}, not paid"
        )
    for r in found["audit_refunds"]:
        line = (
            f"order {r['order_id']} ({r['site']}): refunded {r['refunded']} of "
            f"{r['credited']} {r['currency']} credited"
        )
        result.refunds.append(line)
        if r["refunded"] > r["credited"]:
            bad.append(f"refund exceeds credit: {line}")
    _money_going_out(found, result)
    for r in found["audit_late_payments"]:
        result.late_payments.append(
            f"order {r['id']} ({r['site']}, user {r['user_id']}): {r['amount']} {r['currency']} "
            f"paid after {r['from_status']}; "
            + ("credited" if r["credited"] else "no wallet credit")
        )
    return result


def _money_going_out(found: Rows, result: AuditReport) -> None:
    """The checks of refunds, bonus reversals and holds (issue #14)."""
    for r in found.get("audit_refund_transfers", []):
        what = f"refund {r['id']} ({r['site']}, order {r['order_id']}, {r['status']})"
        given_back = r.get("given_back", 0)
        if r["status"] in ("succeeded", "reversed") and r["billed"] != r["amount"]:
            result.discrepancies.append(
                f"{what}: {r['amount']} {r['currency']} refunded, {r['billed']} billed"
            )
        elif given_back != (r["amount"] if r["status"] == "reversed" else 0):
            result.discrepancies.append(
                f"{what}: {given_back} {r['currency']} given back for a chargeback reversal"
            )
        elif r["status"] not in ("succeeded", "reversed") and r["billed"]:
            result.discrepancies.append(
                f"{what}: not succeeded, yet {r['billed']} {r['currency']} billed"
            )
        elif r["status"] in ("failed", "cancelled") and r["held"] and not r["closed"]:
            result.discrepancies.append(f"{what}: its hold was never released")
    for r in found.get("audit_unlinked_refunds", []):
        result.unlinked.append(
            f"entry {r['id']}: {r['amount']} {r['currency']} from {r['site']}/{r['user_id']} "
            f"for order {r['order_id']} (key {r['idempotency_key']})"
        )
    for r in found.get("audit_bonus_reversals", []):
        result.discrepancies.append(
            f"order {r['order_id']} ({r['site']}): bonus reversals took back {r['reversed']} "
            f"{r['currency']} from {r['user_id']}, who was granted {r['granted']}"
        )
    for r in found.get("audit_withdrawals", []):
        result.discrepancies.append(
            f"withdrawal {r['id']} ({r['site']}/{r['user_id']}, {r['status']}, {r['amount']} + fee "
            f"{r['fee']} {r['currency']}): held {r['held']}, paid out {r['paid']}, fee "
            f"{r['fee_paid']}, released {r['released']}"
        )
    for r in found.get("audit_overdrawn", []):
        result.wallets.append(
            f"wallet {r['site']}/{r['user_id']}/{r['currency']}: balance {r['balance']}, "
            f"held {r['held']}" + (", overdrawn" if r["overdrawn"] else "")
        )
