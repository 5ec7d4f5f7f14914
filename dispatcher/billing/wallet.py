"""The wallet ledger: one balance per site, user and currency, and its append-only entries.

Every operation is one transaction (or a savepoint inside the caller's, with ``conn=``): the
wallet row is updated under its row lock with ``balance + amount >= 0`` as the condition, and
one ``wallet_entries`` row records the change and the balance it left. A debit that would
overdraw matches no row, so the balance can never go below zero, whatever runs concurrently.

Holds (issue #14) move money from the balance into ``held``: a withdrawal's amount and fee, or a
refund's amount while it is sent. Settling a hold takes it out for good, releasing it gives it
back; each is one entry that carries the change of the balance (``amount``) and of the hold
(``held_amount``) and what it left of both, so the audit replays both. The one exception to
"never below zero": money of a paid order given back (``refund``, ``bonus_reversal``) with
``overdraft=True`` (the ``allow`` policy, or a refund the payment system made on its own), which
flags the wallet ``overdrawn`` while it is negative (see :mod:`dispatcher.billing.refunds`).

Idempotency: a ``key`` is unique per site; the same key with the same user, currency, amount
and kind returns the first entry, with anything else raises :class:`IdempotencyConflict`.
Credits for an order are unique per order (and kind and beneficiary): a replay returns the
existing entry instead of raising, so the paid transition it runs in is never lost.

:class:`Wallets` is async, over the one async pool of :mod:`orders.db`; :class:`SyncWallets` is
its synchronous face for the CLI, benchmarks and tests (each method runs the async one).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NoReturn
from uuid import UUID

from psycopg import errors as pg_errors

from dispatcher.billing.face import Face
from orders.db import AsyncConnection, AsyncPool, atransaction, database_errors, query
from orders.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    UnknownCurrency,
    WalletNotFound,
)
from orders.model import LIMITS, check_text
from orders.money import CURRENCY_EXPONENTS, MAX_AMOUNT, Money

# The loyalty balance: lower case, so it never collides with an ISO 4217 code (always upper).
POINTS = "points"
MAX_PAGE = 500
MAX_DESCRIPTION = 1000


class Points(Money):
    """An amount of loyalty points: whole points, currency ``"points"``, never an ISO code."""

    __slots__ = ()

    def __post_init__(self) -> None:
        if self.currency != POINTS:
            raise UnknownCurrency("currency", f"points must have currency {POINTS!r}")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise InvalidAmount("amount", f"points are whole numbers, got {self.amount!r}")
        if abs(self.amount) > MAX_AMOUNT:
            raise InvalidAmount("amount", f"{self.amount} is beyond the storable range")

    @property
    def exponent(self) -> int:
        return 0

    def __str__(self) -> str:
        return f"{self.amount} points"


def money(amount: int, currency: str) -> Money:
    """Money of an ISO currency, or :class:`Points` for ``"points"``."""
    return Points(amount, POINTS) if currency == POINTS else Money(amount, currency)


def parse_amount(value: str, currency: str) -> Money:
    """Major units as a decimal string (``"12.50"`` USD), whole numbers for points."""
    if currency == POINTS:
        if not value.strip().lstrip("-").isdigit():
            raise InvalidAmount("amount", f"points are whole numbers, got {value!r}")
        return Points(int(value), POINTS)
    return Money.parse(value, currency)


class EntryKind(StrEnum):
    TOPUP = "topup"  # a paid order
    ADJUSTMENT = "adjustment"  # a manual credit or correction, with a reason
    DEBIT = "debit"  # paying from the balance
    CASHBACK = "cashback"  # points for a top-up (bonus rule)
    REFERRAL = "referral"  # an inviter's share of a top-up (bonus rule)
    REFUND = "refund"  # money of a paid order given back at the payment system
    HOLD = "hold"  # balance set aside (a withdrawal, a refund being sent)
    RELEASE = "release"  # a hold given back to the balance
    WITHDRAWAL = "withdrawal"  # a hold paid out to the user
    FEE = "fee"  # a hold kept as the withdrawal's fee
    BONUS_REVERSAL = "bonus_reversal"  # cashback or referral bonus of a refunded order taken back
    REFUND_REVERSAL = "refund_reversal"  # a chargeback given back (a dispute won): credited again


CREDIT_KINDS = frozenset(
    {
        EntryKind.TOPUP,
        EntryKind.ADJUSTMENT,
        EntryKind.CASHBACK,
        EntryKind.REFERRAL,
        EntryKind.REFUND_REVERSAL,
    }
)
ORDER_KINDS = frozenset(
    {
        EntryKind.TOPUP,
        EntryKind.CASHBACK,
        EntryKind.REFERRAL,
        EntryKind.REFUND,
        EntryKind.BONUS_REVERSAL,
        EntryKind.REFUND_REVERSAL,
    }
)
# What settle_hold may call a hold that goes out for good.
SETTLE_KINDS = frozenset({EntryKind.WITHDRAWAL, EntryKind.FEE, EntryKind.REFUND})
# The only kinds that may leave a balance below zero (the schema's balance_after check).
OVERDRAFT_KINDS = frozenset({EntryKind.REFUND, EntryKind.BONUS_REVERSAL})


@dataclass(frozen=True, slots=True)
class Balance:
    """One wallet: a user's balance in one currency (or points), what holds keep out of it,
    and whether a refund left it below zero."""

    site: str
    user_id: str
    money: Money
    updated_at: datetime
    held: Money
    overdrawn: bool

    @property
    def currency(self) -> str:
        return self.money.currency

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Balance:
        return cls(
            row["site"],
            row["user_id"],
            money(row["balance"], row["currency"]),
            row["updated_at"],
            held=money(row["held"], row["currency"]),
            overdrawn=row["overdrawn"],
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row. ``money`` is the signed change of the balance (negative for debits and
    refunds), ``held`` the signed change of the hold (zero but for holds and settlements)."""

    id: int
    site: str
    user_id: str
    money: Money
    balance_after: Money
    kind: EntryKind
    order_id: UUID | None
    key: str | None
    description: str
    created_at: datetime
    held: Money
    held_after: Money
    replayed: bool = False  # True when an earlier identical request wrote it

    @classmethod
    def from_row(cls, row: dict[str, Any], *, replayed: bool = False) -> Entry:
        return cls(
            id=row["id"],
            site=row["site"],
            user_id=row["user_id"],
            money=money(row["amount"], row["currency"]),
            balance_after=money(row["balance_after"], row["currency"]),
            kind=EntryKind(row["kind"]),
            order_id=row["order_id"],
            key=row["idempotency_key"],
            description=row["description"],
            created_at=row["created_at"],
            held=money(row["held_amount"], row["currency"]),
            held_after=money(row["held_after"], row["currency"]),
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class EntryPage:
    items: list[Entry]
    next_cursor: str | None


# A page's cursor is its last entry's id in decimal (the entries carry their ids anyway). Every
# string of this pattern is one the history takes (a bigint: 18 digits at most), so the API
# publishes the pattern as exactly what it accepts.
CURSOR_PATTERN = r"^[0-9]{1,18}$"


def _encode_cursor(entry_id: int) -> str:
    return str(entry_id)


def _decode_cursor(cursor: str) -> int:
    if re.fullmatch(CURSOR_PATTERN, cursor) is None:
        raise InvalidInput("cursor", "is not a cursor this API returned")
    return int(cursor)


def _check_currency(currency: str) -> None:
    if currency != POINTS and currency not in CURRENCY_EXPONENTS:
        raise UnknownCurrency(
            "currency", f"{currency!r} is not an active ISO 4217 code nor {POINTS!r}"
        )


def _check_positive(value: Money) -> None:
    if not isinstance(value, Money):
        raise InvalidAmount("amount", "must be Money")
    _check_currency(value.currency)
    if value.amount <= 0:
        raise InvalidAmount("amount", f"must be positive, got {value.amount}")


class Wallets:
    """Balances and entries in PostgreSQL, for the paid hook, the HTTP API and the CLI."""

    def __init__(self, pool: AsyncPool | None) -> None:
        self._pool = pool  # None: only calls with ``conn=`` work (the paid hook)

    @property
    def pool(self) -> AsyncPool:
        if self._pool is None:
            raise RuntimeError("these Wallets have no pool: pass conn=")
        return self._pool

    @asynccontextmanager
    async def _connection(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        with database_errors():
            if conn is not None:
                yield conn
                return
            async with self.pool.connection() as fresh:
                yield fresh

    # -- read ------------------------------------------------------------------------------

    async def balances(self, site: str, user_id: str) -> list[Balance]:
        """Every wallet of the user (one per currency, and points), by currency."""
        async with self._connection(None) as conn:
            rows = await conn.execute(query("list_wallets"), {"site": site, "user_id": user_id})
            return [Balance.from_row(row) for row in await rows.fetchall()]

    async def balance(self, site: str, user_id: str, currency: str) -> Money:
        """The balance of one wallet; raises :class:`WalletNotFound` when it never existed."""
        _check_currency(currency)
        params = {"site": site, "user_id": user_id, "currency": currency}
        async with self._connection(None) as conn:
            row = await (await conn.execute(query("get_wallet"), params)).fetchone()
        if row is None:
            raise WalletNotFound(f"no {currency} wallet for user {user_id!r} of site {site!r}")
        return money(row["balance"], currency)

    async def history(
        self,
        site: str,
        user_id: str,
        *,
        currency: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> EntryPage:
        """Entries newest first; pass ``next_cursor`` back for the following page."""
        if currency is not None:
            _check_currency(currency)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}, got {limit}")
        params = {
            "site": site,
            "user_id": user_id,
            "currency": currency,
            "before_id": _decode_cursor(cursor) if cursor else None,
            "limit": limit + 1,
        }
        async with self._connection(None) as conn:
            rows = await (await conn.execute(query("history"), params)).fetchall()
        items = [Entry.from_row(row) for row in rows[:limit]]
        next_cursor = _encode_cursor(items[-1].id) if len(rows) > limit else None
        return EntryPage(items, next_cursor)

    # -- write -----------------------------------------------------------------------------

    async def credit(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        kind: EntryKind | str,
        key: str | None,
        description: str,
        order_id: UUID | None = None,
        conn: AsyncConnection | None = None,
    ) -> Entry:
        """Add ``money`` to the wallet (created on first credit).

        Top-ups, cashback and referral bonuses name their ``order_id`` (one per order); a manual
        ``adjustment`` needs a ``key`` and a ``description`` (the reason).
        """
        kind = EntryKind(kind)
        if kind not in CREDIT_KINDS:
            raise InvalidInput("kind", f"{kind} is not a credit")
        if kind is EntryKind.ADJUSTMENT and key is None:
            raise InvalidInput("key", "a manual credit needs an idempotency key")
        return await self._apply(
            site, user_id, money, +1, kind=kind, key=key, description=description,
            order_id=order_id, conn=conn, create=True,
        )  # fmt: skip

    async def debit(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        key: str,
        description: str,
        conn: AsyncConnection | None = None,
    ) -> Entry:
        """Take ``money`` from the wallet: :class:`InsufficientFunds` rather than overdraw,
        :class:`WalletNotFound` for a wallet that never existed; idempotent per ``key``."""
        if key is None:
            raise InvalidInput("key", "a debit needs an idempotency key")
        return await self._apply(
            site, user_id, money, -1, kind=EntryKind.DEBIT, key=key, description=description,
            order_id=None, conn=conn, create=False,
        )  # fmt: skip

    async def refund(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        order_id: UUID,
        key: str,
        description: str,
        kind: EntryKind | str = EntryKind.REFUND,
        overdraft: bool = False,
        conn: AsyncConnection | None = None,
    ) -> Entry:
        """Take back money of a paid order refunded at the payment system (shown by the audit),
        or a bonus of it (``kind="bonus_reversal"``).

        ``overdraft``: the balance may go below zero, and the wallet is flagged ``overdrawn``
        (the ``allow`` policy, or money the payment system already gave back); else
        :class:`InsufficientFunds` rather than overdraw."""
        kind = EntryKind(kind)
        if kind not in OVERDRAFT_KINDS:
            raise InvalidInput("kind", f"{kind} is not money of an order given back")
        return await self._apply(
            site, user_id, money, -1, kind=kind, key=key, description=description,
            order_id=order_id, conn=conn, create=overdraft, overdraft=overdraft,
        )  # fmt: skip

    async def hold(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        key: str,
        description: str,
        conn: AsyncConnection | None = None,
    ) -> Entry:
        """Move ``money`` from the balance into the wallet's hold, where nothing can spend it:
        :class:`InsufficientFunds` rather than overdraw; exactly once per ``key``."""
        if key is None:
            raise InvalidInput("key", "a hold needs an idempotency key")
        return await self._apply(
            site, user_id, money, -1, held_sign=+1, kind=EntryKind.HOLD, key=key,
            description=description, order_id=None, conn=conn, create=False,
        )  # fmt: skip

    async def settle_hold(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        key: str,
        description: str,
        kind: EntryKind | str = EntryKind.WITHDRAWAL,
        order_id: UUID | None = None,
        conn: AsyncConnection | None = None,
    ) -> Entry:
        """Take ``money`` out of the hold for good (``withdrawal``, ``fee``, or a held
        ``refund``, which names its order); :class:`InsufficientFunds` when less is held;
        exactly once per ``key``."""
        kind = EntryKind(kind)
        if kind not in SETTLE_KINDS:
            raise InvalidInput("kind", f"{kind} does not settle a hold")
        if key is None:
            raise InvalidInput("key", "settling a hold needs an idempotency key")
        return await self._apply(
            site, user_id, money, 0, held_sign=-1, kind=kind, key=key, description=description,
            order_id=order_id, conn=conn, create=False,
        )  # fmt: skip

    async def release_hold(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        key: str,
        description: str,
        conn: AsyncConnection | None = None,
    ) -> Entry:
        """Give ``money`` of the hold back to the balance; :class:`InsufficientFunds` when less
        is held; exactly once per ``key``."""
        if key is None:
            raise InvalidInput("key", "releasing a hold needs an idempotency key")
        return await self._apply(
            site, user_id, money, +1, held_sign=-1, kind=EntryKind.RELEASE, key=key,
            description=description, order_id=None, conn=conn, create=False,
        )  # fmt: skip

    async def entry(
        self, site: str, key: str, *, conn: AsyncConnection | None = None
    ) -> Entry | None:
        """The entry written under ``key``, if any."""
        async with self._connection(conn) as c:
            row = await (
                await c.execute(query("entry_by_key"), {"site": site, "key": key})
            ).fetchone()
        return None if row is None else Entry.from_row(row)

    async def _apply(
        self,
        site: str,
        user_id: str,
        value: Money,
        sign: int,
        *,
        held_sign: int = 0,
        kind: EntryKind,
        key: str | None,
        description: str,
        order_id: UUID | None,
        conn: AsyncConnection | None,
        create: bool,
        overdraft: bool = False,
    ) -> Entry:
        # Entries are only stored and rendered as JSON: control characters may stay.
        check_text("site", site, limit=LIMITS["site"], controls=True)
        check_text("user_id", user_id, limit=LIMITS["user_id"], controls=True)
        check_text("key", key, limit=LIMITS["idempotency_key"], required=False, controls=True)
        check_text("description", description, limit=MAX_DESCRIPTION, required=False, controls=True)
        _check_positive(value)
        if (kind in ORDER_KINDS) != (order_id is not None):
            need = "need an order" if kind in ORDER_KINDS else "take no order"
            raise InvalidInput("order_id", f"{kind} entries {need}")
        params: dict[str, Any] = {
            "site": site,
            "user_id": user_id,
            "currency": value.currency,
            "amount": sign * value.amount,
            "held": held_sign * value.amount,
            "overdraft": overdraft and kind in OVERDRAFT_KINDS,
            "kind": str(kind),
            "order_id": order_id,
            "key": key,
            "description": description or "",
        }
        try:
            async with atransaction(self._pool, conn) as tx:
                earlier = await self._earlier(tx, params)
                if earlier is not None:
                    return earlier
                if create:
                    await tx.execute(query("ensure_wallet"), params)
                row = await (await tx.execute(query("apply_to_wallet"), params)).fetchone()
                if row is None:
                    await self._refuse(tx, params, value)
                params["balance_after"] = row["balance"]
                params["held_after"] = row["held"]
                entry = await (await tx.execute(query("insert_entry"), params)).fetchone()
                assert entry is not None
                return Entry.from_row(entry)
        except pg_errors.UniqueViolation:
            # A concurrent request with the same key (or for the same order) won the race;
            # our savepoint or transaction is rolled back, theirs is the answer.
            async with self._connection(conn) as again:
                earlier = await self._earlier(again, params)
            if earlier is None:  # pragma: no cover - the winner cannot vanish
                raise
            return earlier

    @staticmethod
    async def _earlier(conn: AsyncConnection, params: dict[str, Any]) -> Entry | None:
        """The entry an earlier identical request wrote; conflict if the request differs."""
        row = None
        if params["key"] is not None:
            row = await (await conn.execute(query("entry_by_key"), params)).fetchone()
        elif params["order_id"] is not None:
            row = await (await conn.execute(query("entry_by_order"), params)).fetchone()
        if row is None:
            return None
        same = (
            row["user_id"] == params["user_id"]
            and row["currency"] == params["currency"]
            and row["amount"] == params["amount"]
            and row["held_amount"] == params["held"]
            and row["kind"] == params["kind"]
            and row["order_id"] == params["order_id"]
        )
        if not same:
            what = f"key {params['key']!r}" if params["key"] else f"order {params['order_id']}"
            raise IdempotencyConflict(
                f"{what} already used for entry {row['id']} "
                f"({row['kind']} {row['amount'] or row['held_amount']} {row['currency']} "
                f"for user {row['user_id']!r})"
            )
        return Entry.from_row(row, replayed=True)

    @staticmethod
    async def _refuse(conn: AsyncConnection, params: dict[str, Any], value: Money) -> NoReturn:
        wallet = await (await conn.execute(query("get_wallet"), params)).fetchone()
        if wallet is None:
            raise WalletNotFound(
                f"no {value.currency} wallet for user {params['user_id']!r} "
                f"of site {params['site']!r}"
            )
        if params["held"] < 0:
            raise InsufficientFunds(
                f"held {money(wallet['held'], value.currency)} is less than {value}",
                balance=wallet["held"],
                requested=value.amount,
            )
        raise InsufficientFunds(
            f"balance {money(wallet['balance'], value.currency)} is less than {value}",
            balance=wallet["balance"],
            requested=value.amount,
        )


class SyncWallets(Face):
    """:class:`Wallets` for synchronous callers (the CLI, benchmarks, tests): the same methods,
    each run on the background loop; see :mod:`dispatcher.billing.face`."""

    def balances(self, site: str, user_id: str) -> list[Balance]:
        return self.run(lambda pool: Wallets(pool).balances(site, user_id))

    def balance(self, site: str, user_id: str, currency: str) -> Money:
        return self.run(lambda pool: Wallets(pool).balance(site, user_id, currency))

    def history(
        self,
        site: str,
        user_id: str,
        *,
        currency: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> EntryPage:
        return self.run(
            lambda pool: Wallets(pool).history(
                site, user_id, currency=currency, limit=limit, cursor=cursor
            )
        )

    def credit(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        kind: EntryKind | str,
        key: str | None,
        description: str,
        order_id: UUID | None = None,
    ) -> Entry:
        return self.run(
            lambda pool: Wallets(pool).credit(
                site, user_id, money, kind=kind, key=key, description=description, order_id=order_id
            )
        )

    def debit(self, site: str, user_id: str, money: Money, *, key: str, description: str) -> Entry:
        return self.run(
            lambda pool: Wallets(pool).debit(site, user_id, money, key=key, description=description)
        )

    def refund(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        order_id: UUID,
        key: str,
        description: str,
        kind: EntryKind | str = EntryKind.REFUND,
        overdraft: bool = False,
    ) -> Entry:
        return self.run(
            lambda pool: Wallets(pool).refund(
                site, user_id, money, order_id=order_id, key=key, description=description,
                kind=kind, overdraft=overdraft,
            )
        )  # fmt: skip

    def hold(self, site: str, user_id: str, money: Money, *, key: str, description: str) -> Entry:
        return self.run(
            lambda pool: Wallets(pool).hold(site, user_id, money, key=key, description=description)
        )

    def settle_hold(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        key: str,
        description: str,
        kind: EntryKind | str = EntryKind.WITHDRAWAL,
        order_id: UUID | None = None,
    ) -> Entry:
        return self.run(
            lambda pool: Wallets(pool).settle_hold(
                site, user_id, money, key=key, description=description, kind=kind,
                order_id=order_id,
            )
        )  # fmt: skip

    def release_hold(
        self, site: str, user_id: str, money: Money, *, key: str, description: str
    ) -> Entry:
        return self.run(
            lambda pool: Wallets(pool).release_hold(
                site, user_id, money, key=key, description=description
            )
        )

    def entry(self, site: str, key: str) -> Entry | None:
        return self.run(lambda pool: Wallets(pool).entry(site, key))
