"""The order repository: every read and write of ``orders`` and ``order_events``, over psycopg 3.

Each status change is one compare-and-set ``UPDATE ... WHERE id = ? AND status = ?`` plus one
``order_events`` row, committed together. Work is claimed in batches with leases.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from orders.db import Connection, Pool, database_errors, query, transaction
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

# Columns a transition may also set, besides status.
SETTABLE: Final = frozenset(
    {"psp_id", "pay_url", "attempts", "polls", "errors", "expires_at", "last_error", "next_run_at"}
)
MAX_PAGE = 500
DEFAULT_EXPIRY = timedelta(hours=1)


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


@functools.cache
def _transition_sql(paid: bool, keep_lease: bool, columns: tuple[str, ...], leased: bool) -> str:
    """The compare-and-set UPDATE of a transition run inside a caller's transaction."""
    assignments = [
        sql.SQL("status = {}").format(sql.Placeholder("to")),
        sql.SQL("updated_at = now()"),
    ]
    if paid:
        assignments.append(sql.SQL("paid_at = coalesce(paid_at, now())"))
    if not keep_lease:
        assignments.append(sql.SQL("lease_until = NULL, lease_token = NULL"))
    assignments.extend(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
        for column in columns
    )
    condition = sql.SQL("id = {} AND status = {}").format(
        sql.Placeholder("id"), sql.Placeholder("expected")
    )
    if leased:
        condition += sql.SQL(" AND lease_token = {}").format(sql.Placeholder("token"))
    return (
        sql.SQL("UPDATE orders SET {} WHERE {} RETURNING *")
        .format(sql.SQL(", ").join(assignments), condition)
        .as_string(None)
    )


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
    """One order's change at the end of a step, for :meth:`OrderRepository.write_many`.

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


class OrderRepository:
    """Orders in PostgreSQL.

    ``adapters`` maps each enabled payment system to its default order lifetime; creating an
    order for any other adapter raises :class:`UnknownAdapter`.
    """

    def __init__(self, pool: Pool, adapters: Mapping[str, timedelta]) -> None:
        self.pool = pool
        self.adapters = dict(adapters)

    # -- create ----------------------------------------------------------------------------

    def create(
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
        """
        params = self.create_params(
            new, actor=actor, order_id=order_id, default_return_url=default_return_url
        )
        # One statement (order, event, NOTIFY): one round trip instead of five.
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("create_order"), params).fetchone()
            if row is not None:
                return Created(Order.from_row(row), created=True)
            existing = conn.execute(query("find_replay"), params).fetchone()
        return self.replayed(new, params, existing)

    def create_params(
        self,
        new: NewOrder,
        *,
        actor: str = "site",
        order_id: UUID | None = None,
        default_return_url: str | None = None,
    ) -> dict[str, Any]:
        """Validate ``new`` and return the parameters of ``create_order`` for it."""
        new.validate(self.adapters)
        expires_in = new.expires_in or self.adapters.get(new.adapter) or DEFAULT_EXPIRY
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

    @staticmethod
    def replayed(
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

    # -- read ------------------------------------------------------------------------------

    def get(self, order_id: UUID, *, site: str | None = None) -> Order:
        """The order, if it exists and (when ``site`` is given) belongs to that site."""
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("get_order"), {"id": order_id, "site": site}).fetchone()
        if row is None:
            raise OrderNotFound(f"order {order_id} not found")
        return Order.from_row(row)

    def events(self, order_id: UUID) -> list[OrderEvent]:
        with database_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("list_events"), {"order_id": order_id}).fetchall()
        return [OrderEvent.from_row(row) for row in rows]

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
        """Orders newest first; pass ``next_cursor`` back to get the following page."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}, got {limit}")
        after_created, after_id = _decode_cursor(cursor) if cursor else (None, None)
        params = {
            "site": site,
            "status": None if status is None else OrderStatus(status).value,
            "user_id": user_id,
            "adapter": adapter,
            "after_created": after_created,
            "after_id": after_id,
            "limit": limit + 1,
        }
        with database_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("list_orders"), params).fetchall()
        items = [Order.from_row(row) for row in rows[:limit]]
        next_cursor = _encode_cursor(items[-1]) if len(rows) > limit else None
        return Page(items, next_cursor)

    # -- work ------------------------------------------------------------------------------

    def claim(
        self, limit: int, lease: timedelta, *, adapters: Collection[str] | None = None
    ) -> list[Order]:
        """Lease up to ``limit`` due orders; every returned order carries one ``lease_token``.

        Safe from any number of processes at once: no order is returned to two claimers
        while its lease lasts.
        """
        token = uuid.uuid4()
        params = {
            "limit": limit,
            "lease": lease,
            "token": token,
            "adapters": None if adapters is None else list(adapters),
        }
        with database_errors(), self.pool.connection() as conn:  # one statement: no BEGIN
            rows = conn.execute(query("claim_due"), params).fetchall()
        return [Order.from_row(row) for row in rows]

    def release(self, order: Order, *, next_run_at: datetime | None, **changes: Any) -> Order:
        """Give a lease back without a status change, due again at ``next_run_at``.

        ``changes`` may set the same columns a transition may (``polls``, ``last_error``...).
        Raises :class:`StaleOrder` when the lease is no longer held.
        """
        return self._write_one(Write.release(order, next_run_at=next_run_at, **changes))

    def get_many(self, order_ids: Sequence[UUID]) -> list[Order | OrderNotFound]:
        """The orders, in the order asked, with one query; missing ones as OrderNotFound."""
        with database_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("get_orders"), {"ids": list(order_ids)}).fetchall()
        found = {row["id"]: Order.from_row(row) for row in rows}
        return [found.get(i) or OrderNotFound(f"order {i} not found") for i in order_ids]

    def write_many(self, writes: Sequence[Write]) -> list[Order | Exception]:
        """Apply many transitions and releases with one statement (one commit).

        Each write succeeds or misses on its own: the result at its position is the order as
        written, or the :class:`StaleOrder` / :class:`OrderNotFound` that says why it matched
        nothing. Should the statement itself fail (a constraint, say), the writes are retried
        one by one, so one bad write cannot sink the others.
        """
        if not writes:
            return []
        params = {
            "ids": [w.order_id for w in writes],
            "tokens": [w.token for w in writes],
            "expected": [None if w.expected is None else w.expected.value for w in writes],
            "to": [None if w.to is None else w.to.value for w in writes],
            "keep": [w.keep_lease for w in writes],
            "actors": [w.actor for w in writes],
            "details": [json.dumps(dict(w.detail)) for w in writes],
            "changes": [
                json.dumps({k: _json_value(v) for k, v in w.changes.items()}) for w in writes
            ],
        }
        try:
            with database_errors(), self.pool.connection() as conn:
                rows = conn.execute(query("write_many"), params).fetchall()
                done = {row["write_no"] - 1: Order.from_row(row) for row in rows}
                missing = [w.order_id for n, w in enumerate(writes) if n not in done]
                current = {}
                if missing:
                    found = conn.execute(query("get_orders"), {"ids": missing}).fetchall()
                    current = {row["id"]: row for row in found}
        except psycopg.DatabaseError:
            if len(writes) == 1:
                raise
            return [self._try_one(w) for w in writes]
        return [done.get(n) or w.missed(current.get(w.order_id)) for n, w in enumerate(writes)]

    def _try_one(self, write: Write) -> Order | Exception:
        try:
            return self._write_one(write)
        except (DispatchError, psycopg.DatabaseError) as exc:
            return exc

    def _write_one(self, write: Write) -> Order:
        (result,) = self.write_many([write])
        if isinstance(result, Exception):
            raise result
        return result

    def status_counts(self) -> dict[tuple[str, OrderStatus], int]:
        """How many orders each adapter has in each status."""
        with database_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("status_counts")).fetchall()
        return {(row["adapter"], OrderStatus(row["status"])): row["n"] for row in rows}

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
        conn: Connection | None = None,
        within: Callable[[Connection, Order], None] | None = None,
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
        if within is None and conn is None:
            return self._write_one(write)  # one statement: the update and its event together
        params: dict[str, Any] = {
            "id": order_id,
            "expected": expected.value,
            "to": to.value,
            "token": lease_token,
            **write.changes,
        }
        columns = tuple(sorted(write.changes))
        paid = to is OrderStatus.PAID
        update = _transition_sql(paid, keep_lease, columns, lease_token is not None)
        with transaction(self.pool, conn) as tx:
            row = tx.execute(update, params).fetchone()
            if row is None:
                current = tx.execute(query("get_order"), {"id": order_id, "site": None}).fetchone()
                raise write.missed(current)
            order = Order.from_row(row)
            self._event(
                tx, order_id, from_status=expected, to_status=to, actor=actor, detail=detail or {}
            )
            if within is not None:
                within(tx, order)
        return order

    def cancel(
        self, order_id: UUID, *, site: str | None = None, actor: str = "site", reason: str = ""
    ) -> Order:
        """Cancel an unpaid order. Cancelling a cancelled order returns it unchanged."""
        for _ in range(5):
            order = self.get(order_id, site=site)
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
                return self.transition(
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

    @staticmethod
    def _event(
        conn: Connection,
        order_id: UUID,
        *,
        from_status: OrderStatus | None,
        to_status: OrderStatus,
        actor: str,
        detail: Mapping[str, Any],
    ) -> None:
        conn.execute(
            query("insert_event"),
            {
                "order_id": order_id,
                "from_status": None if from_status is None else from_status.value,
                "to_status": to_status.value,
                "actor": actor,
                "detail": Jsonb(dict(detail)),
            },
        )

    # -- for the HTTP API ------------------------------------------------------------------

    def poll_soon(
        self,
        order_id: UUID,
        *,
        statuses: Collection[OrderStatus] = (OrderStatus.AWAITING_PAYMENT,),
        quiet: timedelta = timedelta(0),
    ) -> bool:
        """Make the order due now (and wake the sweeper) if it is watched in one of ``statuses``.

        Nothing happens while a worker holds its lease, when it is due already, or when the
        dispatcher touched it less than ``quiet`` ago. True when the order was pulled forward.
        """
        params = self.poll_soon_params(order_id, statuses, quiet)
        with database_errors(), self.pool.connection() as conn:
            return conn.execute(query("poll_soon"), params).fetchone() is not None

    @staticmethod
    def poll_soon_params(
        order_id: UUID, statuses: Collection[OrderStatus], quiet: timedelta
    ) -> dict[str, Any]:
        """The parameters of query ``poll_soon`` (shared with the API's async path)."""
        values = [OrderStatus(s).value for s in statuses]
        return {"id": order_id, "statuses": values, "quiet": quiet}

    def find_by_ref(
        self,
        adapter: str,
        *,
        order_id: UUID | None = None,
        psp_id: str | None = None,
        number: int | None = None,
    ) -> Order | None:
        """The adapter's order named by our id, the payment system's id or our number.

        Raises :class:`InvalidInput` for a reference no order can have: a notification is
        unauthenticated input, and an id PostgreSQL cannot hold (a NUL, a lone surrogate, an
        integer past bigint) would otherwise fail the query as a server error.
        """
        check_ref(psp_id=psp_id, number=number)
        if order_id is None and psp_id is None and number is None:
            return None
        params = {"adapter": adapter, "id": order_id, "psp_id": psp_id, "number": number}
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("find_by_ref"), params).fetchone()
        return None if row is None else Order.from_row(row)

    # -- a buyer's switch to another payment system (issue #12, item 1) ---------------------

    def switch(
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
        with transaction(self.pool) as tx:
            row = tx.execute(query("lock_order"), {"id": order_id}).fetchone()
            if row is None:
                raise OrderNotFound(f"order {order_id} not found")
            order = Order.from_row(row)
            made = tx.execute(query("find_replacement"), {"id": order_id}).fetchone()
            if made is not None:
                return Created(Order.from_row(made), created=False)
            if order.status not in {OrderStatus.NEW, OrderStatus.AWAITING_PAYMENT}:
                raise SwitchRefused(f"order {order_id} is {order.status}; it cannot be switched")
            if order.switch_depth >= MAX_SWITCH_DEPTH:
                raise SwitchRefused(
                    f"order {order_id} was switched {order.switch_depth} times; that is the limit"
                )
            new = make(order)
            params = self.create_params(
                new, actor=actor, order_id=new_id, default_return_url=default_return_url
            )
            params |= {"replaces": order.id, "switch_depth": order.switch_depth + 1}
            # An invoice exists already: the dispatcher closes it and watches for a late payment.
            watch = datetime.now(UTC) if order.psp_id is not None else None
            self.transition(
                order.id,
                order.status,
                OrderStatus.CANCELLED,
                actor=actor,
                detail={"reason": f"buyer chose {new.adapter}", "replaced_by": str(new_id)},
                next_run_at=watch,
                conn=tx,
            )
            created = tx.execute(query("create_replacement"), params).fetchone()
        assert created is not None  # an INSERT ... RETURNING without ON CONFLICT
        return Created(Order.from_row(created), created=True)
