"""The order repository: every read and write of ``orders`` and ``order_events``.

:class:`Orders` is the repository, async, on psycopg's async pool: the engine, the HTTP API and
billing await it on their event loops. :class:`OrderRepository` is its thin synchronous face for
the CLI, the library, the sweeper and tests: each method runs the same coroutine on a background
loop (:mod:`orders.db.blocking`).

Each status change is one compare-and-set ``UPDATE ... WHERE id = ? AND status = ?`` plus one
``order_events`` row, committed together, and every one is written by the same statement
(``write_many``): the writes that end steps together go out as one, and a transition that runs
inside a caller's transaction (the billing hook's) is that statement for one write. Work is
claimed in batches with leases. Concurrent creates and reads on a loop are coalesced likewise
(:mod:`orders.coalesce`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, TypeVar
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from orders.coalesce import Coalescer
from orders.db import (
    AsyncConnection,
    AsyncPool,
    Pool,
    atransaction,
    blocking,
    database_errors,
    open_async_pool,
    open_pool,
    query,
)
from orders.errors import (
    DispatchError,
    IdempotencyConflict,
    InvalidInput,
    InvalidTransition,
    OrderNotFound,
    StaleOrder,
    SwitchRefused,
)
from orders.model import MAX_SWITCH_DEPTH, NewOrder, Order, OrderEvent, storable_problem
from orders.status import ACTIVE, OrderStatus, check_transition

T = TypeVar("T")

# Columns a transition may also set, besides status.
SETTABLE: Final = frozenset(
    {
        "psp_id",
        "pay_url",
        "attempts",
        "polls",
        "errors",
        "expires_at",
        "last_error",
        "next_run_at",
        "psp_payment_id",
    }
)
MAX_PAGE = 500
DEFAULT_EXPIRY = timedelta(hours=1)

# Runs inside the transaction of a transition, after the update (the billing hook); if it
# raises, nothing is committed.
Within = Callable[[AsyncConnection, Order], Awaitable[None]]


class _Keep:
    """Marker: leave ``next_run_at`` as it is."""


KEEP: Final = _Keep()


@dataclass(frozen=True, slots=True)
class Created:
    order: Order
    created: bool  # False: an earlier request with the same key or site_ref made it


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Order]
    next_cursor: str | None


# A page's cursor is its last row's (created_at, id) as "<microseconds since 1970>.<id hex>":
# both are in the rows a site reads anyway, and every string of this pattern is a cursor
# the listing takes, so the API can publish the pattern as exactly what it accepts.
CURSOR_PATTERN: Final = r"^[0-9]{1,16}\.[0-9a-f]{32}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_cursor(order: Order) -> str:
    micros = (order.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{order.id.hex}"


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    if _CURSOR.fullmatch(cursor) is None:
        raise InvalidInput("cursor", "is not a cursor this API returned")
    micros, _, hex_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), UUID(hex=hex_id)


def check_ref(*, psp_id: str | None = None, number: int | None = None, text: str = "") -> None:
    """Raise :class:`InvalidInput` for a reference no order can have: a NUL or a lone surrogate
    in an id, or an order number outside bigint. Notifications are unauthenticated input, and
    such a value would otherwise fail a query as a server error."""
    if psp_id is not None and storable_problem(psp_id) is not None:
        raise InvalidInput("psp_id", "is not text an order can hold")
    if storable_problem(text) is not None:
        raise InvalidInput("order_id", "is not text an order can hold")
    if number is not None and not 0 < number < 2**63:
        raise InvalidInput("number", "is not an order number")


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True, slots=True)
class Write:
    """One order's change at the end of a step, for :meth:`Orders.write_many`.

    With ``to`` set it is a transition: a compare-and-set on ``expected`` (and on the lease
    when ``token`` is set) plus its event row. With ``to`` None it gives the lease ``token``
    back: the status stays and no event is written. Build them with :meth:`move` and
    :meth:`release`, which check the state machine and the columns.
    """

    order_id: UUID
    token: UUID | None
    expected: OrderStatus | None
    to: OrderStatus | None
    actor: str = "worker"
    detail: Mapping[str, Any] = field(default_factory=dict)
    keep_lease: bool = False
    changes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def move(
        cls,
        order_id: UUID,
        expected: OrderStatus,
        to: OrderStatus,
        *,
        actor: str,
        detail: Mapping[str, Any] | None = None,
        lease_token: UUID | None = None,
        keep_lease: bool = False,
        next_run_at: datetime | _Keep | None = KEEP,
        **changes: Any,
    ) -> Write:
        """A transition; leaving the active statuses clears ``next_run_at`` unless given."""
        check_transition(expected, to)
        _check_columns("transition", changes)
        if isinstance(next_run_at, _Keep) and to not in ACTIVE:
            next_run_at = None
        if not isinstance(next_run_at, _Keep):
            changes["next_run_at"] = next_run_at
        return cls(order_id, lease_token, expected, to, actor, detail or {}, keep_lease, changes)

    @classmethod
    def release(cls, order: Order, *, next_run_at: datetime | None, **changes: Any) -> Write:
        """The lease back without a status change, due again at ``next_run_at``."""
        _check_columns("release", changes)
        changes["next_run_at"] = next_run_at
        return cls(order.id, order.lease_token, None, None, changes=changes)

    def missed(self, current: Mapping[str, Any] | None) -> OrderNotFound | StaleOrder:
        """Why this write matched no row, given the order as it is now (None: no such order)."""
        if current is None:
            return OrderNotFound(f"order {self.order_id} not found")
        if self.expected is not None and current["status"] != self.expected.value:
            return StaleOrder(
                f"order {self.order_id} is {current['status']}, not {self.expected} "
                f"(wanted to move it to {self.to})"
            )
        return StaleOrder(f"order {self.order_id}: lease {self.token} is no longer held")


def _check_columns(what: str, changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - SETTABLE
    if unknown:
        raise TypeError(f"{what} cannot set {sorted(unknown)}")


# -- statement parameters --------------------------------------------------------------------------


def _create_params(
    adapters: Mapping[str, timedelta],
    new: NewOrder,
    *,
    actor: str = "site",
    order_id: UUID | None = None,
    default_return_url: str | None = None,
) -> dict[str, Any]:
    """Validate ``new`` and return the parameters of ``create_order`` for it."""
    new.validate(adapters)
    expires_in = new.expires_in or adapters.get(new.adapter) or DEFAULT_EXPIRY
    return {
        "id": order_id or uuid.uuid4(),
        "site": new.site,
        "site_ref": new.site_ref,
        "user_id": new.user_id,
        "amount": new.money.amount,
        "currency": new.money.currency,
        "adapter": new.adapter,
        "description": new.description,
        "return_url": new.return_url or default_return_url,
        "metadata": Jsonb(dict(new.metadata)),
        "expires_in": expires_in,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.fingerprint(),
        "actor": actor,
    }


def _create_rows(items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``create_order``'s parameters for many orders as ``create_orders``' JSON rows."""
    return {
        "rows": json.dumps(
            [
                {
                    **params,
                    "id": str(params["id"]),
                    "metadata": params["metadata"].obj,  # the Jsonb of _create_params
                    "expires_in": params["expires_in"].total_seconds(),
                }
                for params in items
            ],
            ensure_ascii=False,
        )
    }


def _replayed(
    new: NewOrder, params: Mapping[str, Any], existing: Mapping[str, Any] | None
) -> Created:
    """The outcome of a create whose insert conflicted: a replay, or a conflict."""
    if existing is None:  # pragma: no cover - only an id collision gets here
        raise RuntimeError(f"insert of order {params['id']} conflicted but no order holds it")
    if existing["request_hash"] != params["request_hash"]:
        by = (
            "Idempotency-Key"
            if new.idempotency_key is not None
            and existing["idempotency_key"] == new.idempotency_key
            else "site_ref"
        )
        raise IdempotencyConflict(
            f"{by} already used for order {existing['id']} with a different request"
        )
    return Created(Order.from_row(existing), created=False)


# A pull forward: the order, its watched statuses (comma-joined values), the quiet in seconds.
_Pull = tuple[UUID, str, float]


def _poll_soon_params(pulls: Sequence[_Pull]) -> dict[str, Any]:
    """The parameters of query ``poll_soon``: one array per column, a row per pull."""
    return {
        "ids": [order_id for order_id, _, _ in pulls],
        "statuses": [statuses for _, statuses, _ in pulls],
        "quiet": [quiet for _, _, quiet in pulls],
    }


def _write_params(writes: Sequence[Write]) -> dict[str, Any]:
    """The parameters of query ``write_many``: one array per column, a row per write."""
    return {
        "ids": [w.order_id for w in writes],
        "tokens": [w.token for w in writes],
        "expected": [None if w.expected is None else w.expected.value for w in writes],
        "to": [None if w.to is None else w.to.value for w in writes],
        "keep": [w.keep_lease for w in writes],
        "actors": [w.actor for w in writes],
        "details": [json.dumps(dict(w.detail)) for w in writes],
        "changes": [json.dumps({k: _json_value(v) for k, v in w.changes.items()}) for w in writes],
    }


def _page_params(
    *,
    site: str | None,
    status: OrderStatus | None,
    user_id: str | None,
    adapter: str | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}, got {limit}")
    after_created, after_id = _decode_cursor(cursor) if cursor else (None, None)
    return {
        "site": site,
        "status": None if status is None else OrderStatus(status).value,
        "user_id": user_id,
        "adapter": adapter,
        "after_created": after_created,
        "after_id": after_id,
        "limit": limit + 1,
    }


_Item = tuple[NewOrder, dict[str, Any]]


class Orders:
    """Orders in PostgreSQL, on an async pool: THE repository.

    ``adapters`` maps each enabled payment system to its default order lifetime; creating an
    order for any other adapter raises :class:`UnknownAdapter`.

    Concurrent calls on the loop are coalesced: the creates that arrive together are one
    ``create_orders`` statement, the reads of :meth:`get` (without ``site``) one ``get_orders``,
    the writes of :meth:`write` (without a transaction of their own) one ``write_many``, the
    pulls of :meth:`poll_soon` one ``poll_soon``. Each caller still gets its own outcome. An
    ``Orders`` belongs to the loop its pool was opened on.
    """

    def __init__(self, pool: AsyncPool, adapters: Mapping[str, timedelta]) -> None:
        self.pool = pool
        self.adapters = dict(adapters)
        self._creates: Coalescer[_Item, Created] | None = None
        self._reads: Coalescer[UUID, Order] | None = None
        self._writes: Coalescer[Write, Order] | None = None
        self._pulls: Coalescer[_Pull, bool] | None = None

    # The coalescers are made on first use, on the loop that uses them.

    @property
    def creates(self) -> Coalescer[_Item, Created]:
        if self._creates is None:
            # One batch at the database at a time: the requests that arrive meanwhile make the
            # next batch bigger, and one commit serves them all. Two at a time made smaller
            # batches and more commits: 2,528 creates/s against 3,743/s with one
            # (docs/benchmarks.md).
            self._creates = Coalescer(self._create_many, max_batch=200, parallel=1)
        return self._creates

    @property
    def reads(self) -> Coalescer[UUID, Order]:
        if self._reads is None:
            self._reads = Coalescer(self._get_batch, max_batch=200, parallel=1)
        return self._reads

    @property
    def writes(self) -> Coalescer[Write, Order]:
        if self._writes is None:
            self._writes = Coalescer(self.write_many)
        return self._writes

    @property
    def pulls(self) -> Coalescer[_Pull, bool]:
        if self._pulls is None:
            # Every open status page pulls its order's poll about once a second: one statement
            # (and one commit) for the pulls of a turn, not one each.
            self._pulls = Coalescer(self._poll_soon_many, max_batch=500, parallel=1)
        return self._pulls

    # -- create ----------------------------------------------------------------------------

    async def create(
        self,
        new: NewOrder,
        *,
        actor: str = "site",
        order_id: UUID | None = None,
        default_return_url: str | None = None,
    ) -> Created:
        """Save a new order, or return the one an earlier identical request created.

        Raises :class:`InvalidInput` subclasses for bad input and :class:`IdempotencyConflict`
        when the key or site_ref was used with a different body. Nothing is written on error.
        ``order_id`` lets the caller choose the id (the HTTP API names the order's status page
        in it); ``default_return_url`` is stored when the site gave no ``return_url`` and is not
        part of the request's fingerprint, so a replay of the same request still matches.

        The creates that arrive together become one ``create_orders`` statement (the orders,
        their events, one NOTIFY). A key or site_ref taken already is looked up alone (a replay
        or a conflict), and should the database refuse the batch statement, each create is
        retried alone, so one bad request cannot fail the others.
        """
        params = _create_params(
            self.adapters,
            new,
            actor=actor,
            order_id=order_id,
            default_return_url=default_return_url,
        )
        return await self.creates((new, params))

    async def _create_many(self, items: list[_Item]) -> list[Created | Exception]:
        rows = _create_rows([params for _, params in items])
        with database_errors():
            async with self.pool.connection() as conn:
                try:
                    cursor = await conn.execute(query("create_orders"), rows)
                except psycopg.DatabaseError:
                    if len(items) == 1:
                        raise
                    return [await self._create_one(conn, new, params) for new, params in items]
                inserted = {row["id"]: row for row in await cursor.fetchall()}
                results: list[Created | Exception] = []
                for new, params in items:
                    row = inserted.get(params["id"])
                    if row is not None:
                        results.append(Created(Order.from_row(row), created=True))
                    else:  # the key or site_ref was taken, maybe by this very batch
                        results.append(await self._replay(conn, new, params))
        return results

    async def _create_one(
        self, conn: AsyncConnection, new: NewOrder, params: dict[str, Any]
    ) -> Created | Exception:
        try:
            row = await (await conn.execute(query("create_order"), params)).fetchone()
        except psycopg.DatabaseError as exc:
            return exc
        if row is not None:
            return Created(Order.from_row(row), created=True)
        return await self._replay(conn, new, params)

    @staticmethod
    async def _replay(
        conn: AsyncConnection, new: NewOrder, params: dict[str, Any]
    ) -> Created | Exception:
        existing = await (await conn.execute(query("find_replay"), params)).fetchone()
        try:
            return _replayed(new, params, existing)
        except IdempotencyConflict as exc:  # this request's own answer
            return exc

    # -- read ------------------------------------------------------------------------------

    async def get(self, order_id: UUID, *, site: str | None = None) -> Order:
        """The order, if it exists and (when ``site`` is given) belongs to that site.

        Without ``site`` the reads that arrive together are one query."""
        if site is None:
            return await self.reads(order_id)
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(query("get_order"), {"id": order_id, "site": site})
                row = await cursor.fetchone()
        if row is None:
            raise OrderNotFound(f"order {order_id} not found")
        return Order.from_row(row)

    async def _get_batch(self, ids: list[UUID]) -> list[Order | Exception]:
        return list(await self.get_many(ids))

    async def get_many(self, order_ids: Sequence[UUID]) -> list[Order | OrderNotFound]:
        """The orders, in the order asked, with one query; missing ones as OrderNotFound."""
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(query("get_orders"), {"ids": list(order_ids)})
                rows = await cursor.fetchall()
        found = {row["id"]: Order.from_row(row) for row in rows}
        return [found.get(i) or OrderNotFound(f"order {i} not found") for i in order_ids]

    async def events(self, order_id: UUID) -> list[OrderEvent]:
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(query("list_events"), {"order_id": order_id})
                rows = await cursor.fetchall()
        return [OrderEvent.from_row(row) for row in rows]

    async def list_orders(
        self,
        *,
        site: str | None = None,
        status: OrderStatus | None = None,
        user_id: str | None = None,
        adapter: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Orders newest first; pass ``next_cursor`` back to get the following page."""
        params = _page_params(
            site=site, status=status, user_id=user_id, adapter=adapter, limit=limit, cursor=cursor
        )
        with database_errors():
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(query("list_orders"), params)).fetchall()
        items = [Order.from_row(row) for row in rows[:limit]]
        next_cursor = _encode_cursor(items[-1]) if len(rows) > limit else None
        return Page(items, next_cursor)

    async def status_counts(self) -> dict[tuple[str, OrderStatus], int]:
        """How many orders each adapter has in each status."""
        with database_errors():
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(query("status_counts"))).fetchall()
        return {(row["adapter"], OrderStatus(row["status"])): row["n"] for row in rows}

    # -- work ------------------------------------------------------------------------------

    async def claim(
        self, limit: int, lease: timedelta, *, adapters: Collection[str] | None = None
    ) -> list[Order]:
        """Lease up to ``limit`` due orders; every returned order carries one ``lease_token``.

        Safe from any number of processes at once: no order is returned to two claimers
        while its lease lasts.
        """
        params = {
            "limit": limit,
            "lease": lease,
            "token": uuid.uuid4(),
            "adapters": None if adapters is None else list(adapters),
        }
        with database_errors():
            async with self.pool.connection() as conn:  # one statement: no BEGIN
                rows = await (await conn.execute(query("claim_due"), params)).fetchall()
        return [Order.from_row(row) for row in rows]

    async def write_many(self, writes: Sequence[Write]) -> list[Order | Exception]:
        """Apply many transitions and releases with one statement (one commit).

        Each write succeeds or misses on its own: the result at its position is the order as
        written, or the :class:`StaleOrder` / :class:`OrderNotFound` that says why it matched
        nothing. Should the statement itself fail (a constraint, say), the writes are retried
        one by one, so one bad write cannot sink the others.
        """
        if not writes:
            return []
        try:
            with database_errors():
                async with self.pool.connection() as conn:
                    return await self._write_on(conn, writes)
        except psycopg.DatabaseError:
            if len(writes) == 1:
                raise
            return [await self._try_one(w) for w in writes]

    @staticmethod
    async def _write_on(conn: AsyncConnection, writes: Sequence[Write]) -> list[Order | Exception]:
        """``write_many`` on ``conn`` (its own commit in autocommit, else the caller's)."""
        rows = await (await conn.execute(query("write_many"), _write_params(writes))).fetchall()
        done = {row["write_no"] - 1: Order.from_row(row) for row in rows}
        missing = [w.order_id for n, w in enumerate(writes) if n not in done]
        current = {}
        if missing:
            cursor = await conn.execute(query("get_orders"), {"ids": missing})
            current = {row["id"]: row for row in await cursor.fetchall()}
        return [done.get(n) or w.missed(current.get(w.order_id)) for n, w in enumerate(writes)]

    async def _try_one(self, write: Write) -> Order | Exception:
        try:
            (result,) = await self.write_many([write])
        except (DispatchError, psycopg.DatabaseError) as exc:
            return exc
        return result

    async def write(
        self, write: Write, *, within: Within | None = None, conn: AsyncConnection | None = None
    ) -> Order:
        """Apply one transition or release; THE way an order's row changes after its creation.

        Without ``within`` and ``conn`` it goes out with the writes around it, as one
        ``write_many`` statement. With ``within`` (awaited in the same transaction after the
        update; if it raises, nothing is committed) or ``conn`` (run as a savepoint inside the
        caller's transaction) it is the same statement for this one write, in
        :func:`atransaction`. Raises :class:`StaleOrder` or :class:`OrderNotFound` when the
        write matched nothing.
        """
        if within is None and conn is None:
            return await self.writes(write)
        async with atransaction(self.pool, conn) as tx:
            (result,) = await self._write_on(tx, [write])
            if isinstance(result, Exception):
                raise result
            if within is not None:
                await within(tx, result)
        return result

    async def transition(
        self,
        order_id: UUID,
        expected: OrderStatus,
        to: OrderStatus,
        *,
        actor: str,
        detail: Mapping[str, Any] | None = None,
        lease_token: UUID | None = None,
        keep_lease: bool = False,
        next_run_at: datetime | _Keep | None = KEEP,
        conn: AsyncConnection | None = None,
        within: Within | None = None,
        **changes: Any,
    ) -> Order:
        """Move an order from ``expected`` to ``to`` and record the event, atomically.

        Raises :class:`InvalidTransition` if the state machine forbids the move (nothing is
        sent to the database), :class:`StaleOrder` if the order is no longer in ``expected``
        (or no longer leased with ``lease_token``), :class:`OrderNotFound` if it does not exist.
        ``within`` runs inside the same transaction after the update (the billing hook); if it
        raises, nothing is committed. Unless ``keep_lease``, the transition ends the lease.
        Leaving the active statuses clears ``next_run_at`` unless one is given.
        """
        write = Write.move(
            order_id,
            expected,
            to,
            actor=actor,
            detail=detail,
            lease_token=lease_token,
            keep_lease=keep_lease,
            next_run_at=next_run_at,
            **changes,
        )
        return await self.write(write, within=within, conn=conn)

    async def release(self, order: Order, *, next_run_at: datetime | None, **changes: Any) -> Order:
        """Give a lease back without a status change, due again at ``next_run_at``.

        ``changes`` may set the same columns a transition may (``polls``, ``last_error``...).
        Raises :class:`StaleOrder` when the lease is no longer held.
        """
        return await self.write(Write.release(order, next_run_at=next_run_at, **changes))

    async def cancel(
        self, order_id: UUID, *, site: str | None = None, actor: str = "site", reason: str = ""
    ) -> Order:
        """Cancel an unpaid order. Cancelling a cancelled order returns it unchanged."""
        for _ in range(5):
            order = await self.get(order_id, site=site)
            if order.status is OrderStatus.CANCELLED:
                return order
            if order.status not in {OrderStatus.NEW, OrderStatus.AWAITING_PAYMENT}:
                raise InvalidTransition(
                    order.status, OrderStatus.CANCELLED, f"the order is {order.status}"
                )
            # An invoice already exists: let the dispatcher close it at the payment system and
            # watch it for a late payment.
            watch = datetime.now(UTC) if order.psp_id is not None else None
            try:
                return await self.transition(
                    order.id,
                    order.status,
                    OrderStatus.CANCELLED,
                    actor=actor,
                    detail={"reason": reason} if reason else {},
                    next_run_at=watch,
                )
            except StaleOrder:
                continue  # moved under us (e.g. new -> submitting); look again
        raise StaleOrder(f"order {order_id} kept changing while being cancelled; try again")

    # -- for the HTTP API ------------------------------------------------------------------

    async def poll_soon(
        self,
        order_id: UUID,
        *,
        statuses: Collection[OrderStatus] = (OrderStatus.AWAITING_PAYMENT,),
        quiet: timedelta = timedelta(0),
    ) -> bool:
        """Make the order due now (and wake the sweeper) if it is watched in one of ``statuses``.

        Nothing happens while a worker holds its lease, when it is due already, when the
        dispatcher touched it less than ``quiet`` ago, or while another transaction holds its
        row (a worker writing it, a refund or a switch deciding on it: not waited for). True
        when this call's conditions held and the order was pulled forward.
        The pulls that arrive together are one ``poll_soon`` statement.
        """
        watched = ",".join(OrderStatus(s).value for s in statuses)
        return await self.pulls((order_id, watched, quiet.total_seconds()))

    async def _poll_soon_many(self, pulls: list[_Pull]) -> list[bool]:
        """:meth:`poll_soon` for the pulls that arrived together, in one statement."""
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(query("poll_soon"), _poll_soon_params(pulls))
                pulled = {row["n"] for row in await cursor.fetchall()}
        return [n in pulled for n in range(1, len(pulls) + 1)]

    async def find_by_ref(
        self,
        adapter: str,
        *,
        order_id: UUID | None = None,
        psp_id: str | None = None,
        number: int | None = None,
        psp_payment_id: str | None = None,
    ) -> Order | None:
        """The adapter's order named by our id, the payment system's id, its id of the money
        taken (``psp_payment_id``, stored when the order was paid) or our number.

        Raises :class:`InvalidInput` for a reference no order can have: a notification is
        unauthenticated input, and an id PostgreSQL cannot hold (a NUL, a lone surrogate, an
        integer past bigint) would otherwise fail the query as a server error.
        """
        check_ref(psp_id=psp_id, number=number)
        check_ref(psp_id=psp_payment_id)
        if order_id is None and psp_id is None and number is None and psp_payment_id is None:
            return None
        params = {
            "adapter": adapter,
            "id": order_id,
            "psp_id": psp_id,
            "number": number,
            "psp_payment_id": psp_payment_id,
        }
        with database_errors():
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query("find_by_ref"), params)).fetchone()
        return None if row is None else Order.from_row(row)

    # -- a buyer's switch to another payment system (issue #12, item 1) ---------------------

    async def switch(
        self,
        order_id: UUID,
        make: Callable[[Order], NewOrder],
        *,
        new_id: UUID,
        default_return_url: str | None = None,
        actor: str = "buyer",
    ) -> Created:
        """Cancel an unpaid order and create ``make(order)`` in its place, in one transaction.

        An order is replaced at most once: a switch of an order already replaced returns that
        replacement (``created`` False), whatever payment system it names, so a double click or
        a replayed form makes nothing new. Raises :class:`SwitchRefused` for an order past
        paying (a cancelled order stays cancelled) or at the end of its chain of switches
        (``MAX_SWITCH_DEPTH``), and :class:`OrderNotFound`. ``default_return_url`` is stored
        when ``make`` gives no return URL, as in :meth:`create`.
        """
        async with atransaction(self.pool) as tx:
            row = await (await tx.execute(query("lock_order"), {"id": order_id})).fetchone()
            if row is None:
                raise OrderNotFound(f"order {order_id} not found")
            order = Order.from_row(row)
            made = await (await tx.execute(query("find_replacement"), {"id": order_id})).fetchone()
            if made is not None:
                return Created(Order.from_row(made), created=False)
            if order.status not in {OrderStatus.NEW, OrderStatus.AWAITING_PAYMENT}:
                raise SwitchRefused(f"order {order_id} is {order.status}; it cannot be switched")
            if order.switch_depth >= MAX_SWITCH_DEPTH:
                raise SwitchRefused(
                    f"order {order_id} was switched {order.switch_depth} times; that is the limit"
                )
            new = make(order)
            params = _create_params(
                self.adapters,
                new,
                actor=actor,
                order_id=new_id,
                default_return_url=default_return_url,
            )
            params |= {"replaces": order.id, "switch_depth": order.switch_depth + 1}
            # An invoice exists already: the dispatcher closes it and watches for a late payment.
            watch = datetime.now(UTC) if order.psp_id is not None else None
            await self.transition(
                order.id,
                order.status,
                OrderStatus.CANCELLED,
                actor=actor,
                detail={"reason": f"buyer chose {new.adapter}", "replaced_by": str(new_id)},
                next_run_at=watch,
                conn=tx,
            )
            created = await (await tx.execute(query("create_replacement"), params)).fetchone()
        assert created is not None  # an INSERT ... RETURNING without ON CONFLICT
        return Created(Order.from_row(created), created=True)


# -- the synchronous face -------------------------------------------------------------------------

_closing: set[asyncio.Task[None]] = set()  # pool closes scheduled from the loop's own thread


class _Face:
    """What an :class:`OrderRepository` holds on the background loop: its :class:`Orders`, opened
    on first use. Separate from the face, so the face's finalizer can close it."""

    def __init__(
        self, conninfo: str, adapters: Mapping[str, timedelta], max_size: int, pool: Pool | None
    ) -> None:
        self.conninfo = conninfo
        self.adapters = adapters
        self.max_size = max_size
        self.orders: Orders | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.opening: asyncio.Lock | None = None
        self.given_pool = pool
        self.own_pool: Pool | None = None  # opened for conn=/within= when no pool was given
        self.lock = threading.Lock()

    async def open(self) -> Orders:
        loop = asyncio.get_running_loop()
        if self.orders is not None and self.loop is loop:
            return self.orders
        if self.opening is None or self.loop is not loop:  # first use, or a forked child
            self.orders, self.loop, self.opening = None, loop, asyncio.Lock()
        async with self.opening:
            if self.orders is None:
                pool = await open_async_pool(
                    self.conninfo, max_size=self.max_size, name="orders-sync-face"
                )
                self.orders = Orders(pool, self.adapters)
        return self.orders

    async def run(self, work: Callable[[Orders], Awaitable[T]]) -> T:
        return await work(await self.open())

    def sync_pool(self) -> Pool:
        if self.given_pool is not None:
            return self.given_pool
        with self.lock:
            if self.own_pool is None:
                self.own_pool = open_pool(self.conninfo, max_size=2, name="orders-sync-face")
            return self.own_pool

    def close(self) -> None:
        """Close what was opened; safe from any thread, at garbage collection and at exit."""
        orders, loop = self.orders, self.loop
        self.orders = None
        if self.own_pool is not None:
            self.own_pool.close()
            self.own_pool = None
        if orders is None or loop is None or loop.is_closed() or not loop.is_running():
            return
        if blocking.in_loop_thread():  # collected on the loop's own thread: it cannot wait
            task = loop.create_task(orders.pool.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
            return
        if blocking.loop() is not loop:  # a forked child: the pool is the parent's
            return
        asyncio.run_coroutine_threadsafe(orders.pool.close(), loop).result(timeout=30)


class OrderRepository:
    """The synchronous face of :class:`Orders`, for the CLI, the library, the sweeper and tests.

    Each method runs the same method of :class:`Orders` on the process's background loop
    (:mod:`orders.db.blocking`), over an async pool of its own opened there on first use.
    ``pool_or_url`` is a conninfo string, or a synchronous :class:`~orders.db.Pool` whose
    conninfo is used (and which serves :attr:`pool`). Close it (:meth:`close`, or use it as a
    context manager); one left unclosed is closed when collected, and does not hold up the
    interpreter's exit. Calling it from a coroutine on the background loop raises
    :class:`RuntimeError`: async code awaits :attr:`orders` instead.
    """

    def __init__(
        self, pool_or_url: Pool | str, adapters: Mapping[str, timedelta], *, max_size: int = 4
    ) -> None:
        given: Pool | None = None
        if isinstance(pool_or_url, str):
            self.conninfo = pool_or_url
        else:
            given, conninfo = pool_or_url, pool_or_url.conninfo
            self.conninfo = conninfo() if callable(conninfo) else conninfo
        self.adapters = dict(adapters)
        self._face = _Face(self.conninfo, self.adapters, max_size, given)
        self._finalizer = weakref.finalize(self, self._face.close)

    @classmethod
    def connect(
        cls, url: str, adapters: Mapping[str, timedelta], *, max_size: int = 4
    ) -> OrderRepository:
        """A face whose pool is open already (so a database that is down fails here)."""
        face = cls(url, adapters, max_size=max_size)
        try:
            face.run(face._face.open())
        except BaseException:
            face.close()
            raise
        return face

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> OrderRepository:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def orders(self) -> Orders:
        """The async repository this face calls (opened on the background loop)."""
        if blocking.in_loop_thread():
            if self._face.orders is None:
                raise RuntimeError("the repository is not open yet: use run() to reach it")
            return self._face.orders
        return blocking.call(self._face.open())

    @property
    def pool(self) -> Pool:
        """A synchronous pool on the same database: the one given, else one opened now."""
        return self._face.sync_pool()

    def run(self, work: Callable[[], Awaitable[T]] | Coroutine[Any, Any, T]) -> T:
        """Run any coroutine on the face's loop (where :attr:`orders` lives) and wait for it."""
        if blocking.in_loop_thread():
            if not callable(work):
                work.close()
            raise RuntimeError(
                "OrderRepository called on the background loop's own thread, where it would "
                "wait forever: await OrderRepository.orders instead"
            )

        async def go() -> T:
            await self._face.open()
            return await (work() if callable(work) else work)

        return blocking.call(go())

    def _call(self, work: Callable[[Orders], Awaitable[T]]) -> T:
        return blocking.call(self._face.run(work))

    # -- the methods of Orders, one line each ----------------------------------------------

    def create(
        self,
        new: NewOrder,
        *,
        actor: str = "site",
        order_id: UUID | None = None,
        default_return_url: str | None = None,
    ) -> Created:
        """:meth:`Orders.create`."""
        return self._call(
            lambda o: o.create(
                new, actor=actor, order_id=order_id, default_return_url=default_return_url
            )
        )

    def get(self, order_id: UUID, *, site: str | None = None) -> Order:
        """:meth:`Orders.get`."""
        return self._call(lambda o: o.get(order_id, site=site))

    def get_many(self, order_ids: Sequence[UUID]) -> list[Order | OrderNotFound]:
        """:meth:`Orders.get_many`."""
        return self._call(lambda o: o.get_many(order_ids))

    def events(self, order_id: UUID) -> list[OrderEvent]:
        """:meth:`Orders.events`."""
        return self._call(lambda o: o.events(order_id))

    def list_orders(
        self,
        *,
        site: str | None = None,
        status: OrderStatus | None = None,
        user_id: str | None = None,
        adapter: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """:meth:`Orders.list_orders`."""
        return self._call(
            lambda o: o.list_orders(
                site=site, status=status, user_id=user_id, adapter=adapter, limit=limit,
                cursor=cursor,
            )
        )  # fmt: skip

    def status_counts(self) -> dict[tuple[str, OrderStatus], int]:
        """:meth:`Orders.status_counts`."""
        return self._call(lambda o: o.status_counts())

    def claim(
        self, limit: int, lease: timedelta, *, adapters: Collection[str] | None = None
    ) -> list[Order]:
        """:meth:`Orders.claim`."""
        return self._call(lambda o: o.claim(limit, lease, adapters=adapters))

    def write_many(self, writes: Sequence[Write]) -> list[Order | Exception]:
        """:meth:`Orders.write_many`."""
        return self._call(lambda o: o.write_many(writes))

    def write(self, write: Write) -> Order:
        """:meth:`Orders.write` (coalesced with the writes of other threads)."""
        return self._call(lambda o: o.write(write))

    def release(self, order: Order, *, next_run_at: datetime | None, **changes: Any) -> Order:
        """:meth:`Orders.release`."""
        return self._call(lambda o: o.release(order, next_run_at=next_run_at, **changes))

    def transition(
        self,
        order_id: UUID,
        expected: OrderStatus,
        to: OrderStatus,
        *,
        actor: str,
        detail: Mapping[str, Any] | None = None,
        lease_token: UUID | None = None,
        keep_lease: bool = False,
        next_run_at: datetime | _Keep | None = KEEP,
        **changes: Any,
    ) -> Order:
        """:meth:`Orders.transition`. A transaction of one's own (``conn``, ``within``) is
        composed on :attr:`orders` and run with :meth:`run`."""
        return self._call(
            lambda o: o.transition(
                order_id,
                expected,
                to,
                actor=actor,
                detail=detail,
                lease_token=lease_token,
                keep_lease=keep_lease,
                next_run_at=next_run_at,
                **changes,
            )
        )

    def cancel(
        self, order_id: UUID, *, site: str | None = None, actor: str = "site", reason: str = ""
    ) -> Order:
        """:meth:`Orders.cancel`."""
        return self._call(lambda o: o.cancel(order_id, site=site, actor=actor, reason=reason))

    def poll_soon(
        self,
        order_id: UUID,
        *,
        statuses: Collection[OrderStatus] = (OrderStatus.AWAITING_PAYMENT,),
        quiet: timedelta = timedelta(0),
    ) -> bool:
        """:meth:`Orders.poll_soon`."""
        return self._call(lambda o: o.poll_soon(order_id, statuses=statuses, quiet=quiet))

    def find_by_ref(
        self,
        adapter: str,
        *,
        order_id: UUID | None = None,
        psp_id: str | None = None,
        number: int | None = None,
        psp_payment_id: str | None = None,
    ) -> Order | None:
        """:meth:`Orders.find_by_ref`."""
        return self._call(
            lambda o: o.find_by_ref(
                adapter,
                order_id=order_id,
                psp_id=psp_id,
                number=number,
                psp_payment_id=psp_payment_id,
            )
        )

    def switch(
        self,
        order_id: UUID,
        make: Callable[[Order], NewOrder],
        *,
        new_id: UUID,
        default_return_url: str | None = None,
        actor: str = "buyer",
    ) -> Created:
        """:meth:`Orders.switch`."""
        return self._call(
            lambda o: o.switch(
                order_id, make, new_id=new_id, default_return_url=default_return_url, actor=actor
            )
        )
