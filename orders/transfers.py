"""Money going out (issue #14): refunds and payouts, the rows of ``transfers``.

:class:`Transfers` is the repository, async, on the same pool as :class:`orders.repository.Orders`;
:class:`SyncTransfers` is its thin synchronous face (through an
:class:`~orders.repository.OrderRepository`'s background loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from adapters.base import RefundReport
from orders.db import AsyncConnection, AsyncPool
from orders.model import Order, Transfer, TransferHook, TransferKind, TransferStatus
from orders.money import Money


class Transfers:
    """Transfers in PostgreSQL, on an async pool (the work is being written; names are final)."""

    def __init__(
        self,
        pool: AsyncPool,
        *,
        refunds: Mapping[str, bool] | None = None,
        hook: TransferHook | None = None,
    ) -> None:
        self.pool = pool
        self.refunds = dict(refunds or {})
        self.hook = hook

    async def request_refund(
        self,
        order_id: UUID,
        money: Money | None,
        *,
        site: str | None,
        idempotency_key: str | None,
        reason: str,
        requested_by: str,
        origin: str = "site",
        conn: AsyncConnection | None = None,
    ) -> tuple[Transfer, bool]:
        raise NotImplementedError

    async def request_payout(
        self,
        *,
        site: str,
        user_id: str,
        adapter: str,
        money: Money,
        destination: Mapping[str, Any],
        withdrawal_id: UUID,
        requested_by: str,
        conn: AsyncConnection | None = None,
    ) -> Transfer:
        raise NotImplementedError

    async def record_reported_refund(
        self, order: Order, report: RefundReport, *, actor: str
    ) -> Transfer | None:
        raise NotImplementedError

    async def get(self, transfer_id: UUID, *, site: str | None = None) -> Transfer:
        raise NotImplementedError

    async def list(
        self,
        *,
        site: str | None = None,
        order_id: UUID | None = None,
        kind: TransferKind | None = None,
        status: TransferStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Transfer], str | None]:
        raise NotImplementedError

    async def cancel(self, transfer_id: UUID, *, site: str | None = None, actor: str) -> Transfer:
        raise NotImplementedError

    async def claim(self, limit: int, lease: timedelta) -> list[Transfer]:
        raise NotImplementedError

    async def write(
        self,
        transfer: Transfer,
        to: TransferStatus | None,
        *,
        actor: str = "worker",
        detail: Mapping[str, Any] | None = None,
        keep_lease: bool = False,
        next_run_at: datetime | None = None,
        conn: AsyncConnection | None = None,
        **changes: Any,
    ) -> Transfer:
        raise NotImplementedError
