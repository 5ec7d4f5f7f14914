"""Billing's test helpers: paying orders with a hook through the real repository, balances.

What the engine's settle does for a paid move, without the engine: ``Orders.transition`` with
the hook run in the paid transaction (``within``), handed a :class:`PaidEvent`.
"""

from __future__ import annotations

from uuid import UUID

from dispatcher.billing.wallet import Balance, SyncWallets
from orders import OrderStatus
from orders.db import AsyncConnection, Pool, atransaction
from orders.model import Order, PaidEvent, PaidHook
from orders.repository import OrderRepository


def pay(
    repo: OrderRepository,
    order_id: UUID,
    previous: OrderStatus,
    hook: PaidHook | None,
    *,
    actor: str = "test",
) -> Order:
    """Move the order from ``previous`` to paid, with ``hook`` (if any) in the same transaction."""

    async def within(tx: AsyncConnection, moved: Order) -> None:
        assert hook is not None
        await hook(tx, PaidEvent(moved, previous, actor))

    return repo.run(
        repo.orders.transition(
            order_id, previous, OrderStatus.PAID, actor=actor, within=within if hook else None
        )
    )


def replay_hook(repo: OrderRepository, hook: PaidHook, order: Order, previous: OrderStatus) -> None:
    """Run ``hook`` again for an order already paid, in a transaction of its own."""

    async def again() -> None:
        async with atransaction(repo.orders.pool) as tx:
            await hook(tx, PaidEvent(order, previous, "test"))

    repo.run(again())


def balances(pool: Pool, site: str, user_id: str) -> list[Balance]:
    """The user's balances, read through a face of its own (closed before returning)."""
    with SyncWallets(pool) as wallets:
        return wallets.balances(site, user_id)
