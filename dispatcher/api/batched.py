"""The API's hot database work on the server's event loop, batched over an async pool.

``POST /v1/orders``: the creates that arrive together become one ``INSERT ... SELECT FROM
jsonb_to_recordset`` (query ``create_orders``: the orders, their events, one NOTIFY), so a
create costs neither a thread hand-off nor a commit of its own. Every request keeps its own
outcome: a key or site_ref taken already is looked up alone (a replay or a conflict), and
should the database refuse the batch statement, each create is retried alone, so one bad
request cannot fail the others.

``GET /pay/{id}`` and ``/pay/{id}/status`` (buyers' pages poll these every few seconds): the
reads that arrive together become one ``SELECT ... WHERE id = ANY(...)``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from orders.coalesce import Coalescer
from orders.db import check_async_connection, database_errors, query
from orders.errors import OrderNotFound
from orders.model import NewOrder, Order

# The repository's private helpers, until this module gives way to orders.repository.Orders.
from orders.repository import (
    Created,
    OrderRepository,
    _create_params,
    _poll_soon_params,
    _replayed,
)
from orders.status import OrderStatus

AsyncPool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]
Item = tuple[NewOrder, dict[str, Any]]


class BatchedOrders:
    def __init__(self, repo: OrderRepository, conninfo: str, *, pool_size: int = 3) -> None:
        self.repo = repo
        self.conninfo = conninfo
        self.pool_size = pool_size
        self._pool: AsyncPool | None = None
        # One batch at the database at a time: the requests that arrive meanwhile make the next
        # batch bigger, and one commit serves them all. Two at a time made smaller batches and
        # more commits: 2,528 creates/s against 3,743/s with one (docs/benchmarks.md).
        self.creates: Coalescer[Item, Created] = Coalescer(
            self._create_many, max_batch=200, parallel=1
        )
        self.reads: Coalescer[UUID, Order] = Coalescer(self._get_many, max_batch=200, parallel=1)

    async def open(self) -> None:
        """Open the pool on the running loop (the app's startup)."""
        pool: AsyncPool = AsyncConnectionPool(
            self.conninfo,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            name="api-batched",
            open=False,
            check=lambda conn: check_async_connection(pool, conn),
        )
        with database_errors():
            await pool.open(wait=True, timeout=30)
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def create(
        self,
        new: NewOrder,
        *,
        actor: str,
        order_id: UUID | None = None,
        default_return_url: str | None = None,
    ) -> Created:
        """Like :meth:`OrderRepository.create`, batched with the creates around it."""
        params = _create_params(
            self.repo.adapters,
            new,
            actor=actor,
            order_id=order_id,
            default_return_url=default_return_url,
        )
        self._check_open()
        return await self.creates((new, params))

    async def get(self, order_id: UUID) -> Order:
        """Like :meth:`OrderRepository.get` (no site check), batched with the reads around it."""
        self._check_open()
        return await self.reads(order_id)

    async def poll_soon(self, order_id: UUID, *, quiet: timedelta) -> bool:
        """:meth:`OrderRepository.poll_soon` for an order awaiting payment, on the loop."""
        pool = self._check_open()
        params = _poll_soon_params(order_id, (OrderStatus.AWAITING_PAYMENT,), quiet)
        with database_errors():
            async with pool.connection() as conn:
                cursor = await conn.execute(query("poll_soon"), params)
                return await cursor.fetchone() is not None

    def _check_open(self) -> AsyncPool:
        if self._pool is None:
            raise RuntimeError("BatchedOrders is not open: serve the app with its lifespan")
        return self._pool

    async def _get_many(self, ids: list[UUID]) -> list[Order | Exception]:
        pool = self._check_open()
        with database_errors():
            async with pool.connection() as conn:
                cursor = await conn.execute(query("get_orders"), {"ids": ids})
                found = {row["id"]: Order.from_row(row) for row in await cursor.fetchall()}
        return [found.get(i) or OrderNotFound(f"order {i} not found") for i in ids]

    async def _create_many(self, items: list[Item]) -> list[Created | Exception]:
        pool = self._check_open()
        rows = _rows([params for _, params in items])
        with database_errors():
            async with pool.connection() as conn:
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
        self, conn: psycopg.AsyncConnection[DictRow], new: NewOrder, params: dict[str, Any]
    ) -> Created | Exception:
        try:
            row = await (await conn.execute(query("create_order"), params)).fetchone()
        except psycopg.DatabaseError as exc:
            return exc
        if row is not None:
            return Created(Order.from_row(row), created=True)
        return await self._replay(conn, new, params)

    async def _replay(
        self, conn: psycopg.AsyncConnection[DictRow], new: NewOrder, params: dict[str, Any]
    ) -> Created | Exception:
        existing = await (await conn.execute(query("find_replay"), params)).fetchone()
        try:
            return _replayed(new, params, existing)
        except Exception as exc:  # IdempotencyConflict: this request's own answer
            return exc


def _rows(items: list[dict[str, Any]]) -> dict[str, str]:
    """``create_order``'s parameters for many orders as ``create_orders``' JSON rows."""
    return {
        "rows": json.dumps(
            [
                {
                    **params,
                    "id": str(params["id"]),
                    "metadata": params["metadata"].obj,  # the Jsonb of create_params
                    "expires_in": params["expires_in"].total_seconds(),
                }
                for params in items
            ],
            ensure_ascii=False,
        )
    }
