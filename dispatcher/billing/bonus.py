"""Bonus rules, examples of what a paid hook can do; both off by default.

* **Cashback**: ``cashback_percent`` of each top-up, credited to the user's ``points`` wallet,
  one point per minor unit (1 % of 10.00 USD = 10 points), rounded down.
* **Referral**: ``referral_percents[i]`` of each top-up to the inviter ``i + 1`` levels up the
  ``referrals`` chain, in the order's currency, rounded down; a cycle ends the chain.

Both write entries that name the order, so a replay credits nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from dispatcher.billing.face import Face
from dispatcher.billing.wallet import POINTS, EntryKind, Points, Wallets
from orders.db import AsyncConnection, AsyncPool, database_errors, query
from orders.errors import InvalidInput
from orders.model import LIMITS, Order, check_text
from orders.money import Money


def share(amount: int, percent: Decimal) -> int:
    """``percent`` of ``amount`` minor units, rounded down (never credit more than promised)."""
    return int((Decimal(amount) * percent / 100).to_integral_value(rounding=ROUND_DOWN))


@dataclass(frozen=True, slots=True)
class BonusRules:
    cashback_percent: Decimal = Decimal(0)
    referral_percents: Sequence[Decimal] = ()

    @property
    def active(self) -> bool:
        return self.cashback_percent > 0 or any(p > 0 for p in self.referral_percents)

    async def apply(self, wallets: Wallets, conn: AsyncConnection, order: Order) -> None:
        """Credit the bonuses of one paid order, inside the paid transaction."""
        points = share(order.money.amount, self.cashback_percent)
        if points > 0:
            await wallets.credit(
                order.site,
                order.user_id,
                Points(points, POINTS),
                kind=EntryKind.CASHBACK,
                key=None,
                description=f"{self.cashback_percent}% cashback on order {order.id}",
                order_id=order.id,
                conn=conn,
            )
        if not self.referral_percents:
            return
        params = {
            "site": order.site,
            "user_id": order.user_id,
            "levels": len(self.referral_percents),
        }
        chain = await (await conn.execute(query("referral_chain"), params)).fetchall()
        for row in chain:
            level = row["level"]
            percent = self.referral_percents[level - 1]
            amount = share(order.money.amount, percent)
            if amount <= 0:
                continue
            await wallets.credit(
                order.site,
                row["user_id"],
                Money(amount, order.money.currency),
                kind=EntryKind.REFERRAL,
                key=None,
                description=f"level {level} referral bonus ({percent}%) for order {order.id}",
                order_id=order.id,
                conn=conn,
            )


class Referrals:
    """Who invited whom, per site."""

    def __init__(self, pool: AsyncPool) -> None:
        self.pool = pool

    async def invite(self, site: str, user_id: str, invited_by: str) -> str:
        """Record that ``invited_by`` invited ``user_id``; returns the inviter on record
        (a user's inviter never changes once set)."""
        for name, value in (("site", site), ("user_id", user_id), ("invited_by", invited_by)):
            limit = LIMITS["site" if name == "site" else "user_id"]
            check_text(name, value, limit=limit, controls=True)
        if user_id == invited_by:
            raise InvalidInput("invited_by", "a user cannot invite themselves")
        params = {"site": site, "user_id": user_id, "invited_by": invited_by}
        with database_errors():
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query("insert_referral"), params)).fetchone()
                if row is None:
                    row = await (await conn.execute(query("get_referral"), params)).fetchone()
        assert row is not None
        inviter: str = row["invited_by"]
        return inviter


class SyncReferrals(Face):
    """:class:`Referrals` for synchronous callers (the CLI, tests); see
    :mod:`dispatcher.billing.face`."""

    def invite(self, site: str, user_id: str, invited_by: str) -> str:
        return self.run(lambda pool: Referrals(pool).invite(site, user_id, invited_by))
