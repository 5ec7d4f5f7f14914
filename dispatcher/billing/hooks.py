"""The paid hooks: what runs inside the transaction that moves an order to ``paid``.

Configured by ``[billing] hooks`` (``PAYDISPATCH_BILLING_HOOKS``), in order:

* ``wallet`` (default): credit the order to the user's wallet, then the bonus rules;
* ``webhook``: write the order's event to the outbox, delivered to the site's own webhook later;
* any other name: an ``async def hook(tx, event)`` registered under the entry-point group
  ``paydispatch.billing_hooks``, or a ``module:callable`` path.

Every hook is a :data:`~orders.model.PaidHook`: awaited with the paid transaction's connection
(a psycopg ``AsyncConnection``) and a :class:`~orders.model.PaidEvent` (the order as written,
the status it was paid from, who moved it, and whether the payment was ``late``). All run in the
paid transaction: if one raises, the transition is rolled back with everything the hooks wrote,
and the engine retries the order later. Nothing is ever half-credited.

Refunds (issue #14) have their own hook, a :data:`~orders.model.TransferHook` built by
:func:`build_transfer_hook` from the same names: ``wallet`` reverses the credit
(:class:`~dispatcher.billing.refunds.RefundWalletHook`), ``webhook`` writes the ``refund`` event
(:class:`~dispatcher.billing.refunds.RefundWebhookHook`), and a Python hook takes part when it
has an ``on_refund`` attribute: ``async def on_refund(tx, event)``, handed a
:class:`~orders.model.TransferEvent` of kind refund in the transaction that makes the refund
succeeded, failed or cancelled (or records one the payment system reported). A hook without
``on_refund`` only sees payments.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from datetime import timedelta
from importlib.metadata import entry_points
from typing import Any

from dispatcher.billing.bonus import BonusRules
from dispatcher.billing.refunds import (
    RefundHold,
    RefundOverdraft,
    RefundWalletHook,
    RefundWebhookHook,
)
from dispatcher.billing.wallet import EntryKind, Wallets
from dispatcher.billing.webhook import Outbox
from dispatcher.config import BillingSettings, ConfigError
from orders.db import AsyncConnection
from orders.model import PaidEvent, PaidHook, TransferEvent, TransferHook, TransferKind

ENTRY_POINT_GROUP = "paydispatch.billing_hooks"
ASYNC_ONLY = "billing hooks are async def hook(tx, event): ..."


class WalletHook:
    """Credit the paid order to its user's wallet (kind ``topup``), then the bonus rules."""

    def __init__(self, wallets: Wallets, bonus: BonusRules | None = None) -> None:
        self.wallets = wallets
        self.bonus = bonus

    async def __call__(self, tx: AsyncConnection, event: PaidEvent) -> None:
        order = event.order
        await self.wallets.credit(
            order.site,
            order.user_id,
            order.money,
            kind=EntryKind.TOPUP,
            key=None,
            description=("late payment: " if event.late else "") + (order.description or "top-up"),
            order_id=order.id,
            conn=tx,
        )
        if self.bonus is not None and self.bonus.active:
            await self.bonus.apply(self.wallets, tx, order)


class WebhookHook:
    """Write the order's ``order.paid`` event to the outbox (sent to the site's own webhook)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def __call__(self, tx: AsyncConnection, event: PaidEvent) -> None:
        await self.outbox.enqueue(tx, event.order, late=event.late)


class Chain:
    """Several hooks, run in order in the same transaction."""

    def __init__(self, hooks: Sequence[PaidHook]) -> None:
        self.hooks = list(hooks)

    async def __call__(self, tx: AsyncConnection, event: PaidEvent) -> None:
        for hook in self.hooks:
            await hook(tx, event)


def _is_async(target: Any) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one."""
    call = getattr(target, "__call__", None)  # noqa: B004 - the method itself, not callable()
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


def load_python_hook(spec: str) -> PaidHook:
    """A hook by entry-point name (group ``paydispatch.billing_hooks``) or ``module:callable``;
    it must be async (a plain function would block the engine's loop, and could not use the
    paid transaction's async connection)."""
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"PAYDISPATCH_BILLING_HOOKS: cannot load {spec!r}: {exc}") from None
    else:
        found = entry_points(group=ENTRY_POINT_GROUP, name=spec)
        if not found:
            installed = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise ConfigError(
                f"PAYDISPATCH_BILLING_HOOKS: no hook {spec!r} (built in: wallet, webhook; "
                f"installed under {ENTRY_POINT_GROUP}: {', '.join(installed) or 'none'})"
            )
        target = next(iter(found)).load()
    if not callable(target):
        raise ConfigError(f"PAYDISPATCH_BILLING_HOOKS: {spec!r} is not callable")
    if not _is_async(target):
        raise ConfigError(f"PAYDISPATCH_BILLING_HOOKS: {spec!r} is not async: {ASYNC_ONLY}")
    hook: PaidHook = target
    return hook


def build(billing: BillingSettings) -> PaidHook | None:
    """The paid hook the configuration asks for, or None when billing is off (``none``).

    The hooks only use the paid transaction's connection, so they need no pool."""
    hooks: list[PaidHook] = []
    for name in billing.hooks:
        if name == "wallet":
            bonus = BonusRules(billing.cashback_percent, billing.referral_percents)
            hooks.append(WalletHook(Wallets(None), bonus if bonus.active else None))
        elif name == "webhook":
            outbox = Outbox(None, max_age=timedelta(seconds=billing.webhook_max_age))
            hooks.append(WebhookHook(outbox))
        else:
            hooks.append(load_python_hook(name))
    if not hooks:
        return None
    return hooks[0] if len(hooks) == 1 else Chain(hooks)


class TransferChain:
    """Several transfer hooks, run in order in the same transaction."""

    def __init__(self, hooks: Sequence[TransferHook]) -> None:
        self.hooks = list(hooks)

    async def __call__(self, tx: AsyncConnection, event: TransferEvent) -> None:
        for hook in self.hooks:
            await hook(tx, event)


class OnRefund:
    """A Python billing hook's ``on_refund``, handed refunds only."""

    def __init__(self, on_refund: TransferHook) -> None:
        self.on_refund = on_refund

    async def __call__(self, tx: AsyncConnection, event: TransferEvent) -> None:
        if event.transfer.kind is TransferKind.REFUND:
            await self.on_refund(tx, event)


def build_transfer_hook(billing: BillingSettings) -> TransferHook | None:
    """The refund hook the configuration asks for (see the module's docstring), or None when
    no billing hook handles refunds. Payouts are not billing's: withdrawals chain their own."""
    hooks: list[TransferHook] = []
    for name in billing.hooks:
        if name == "wallet":
            hooks.append(RefundWalletHook(Wallets(None), RefundOverdraft(billing.refund_overdraft)))
        elif name == "webhook":
            outbox = Outbox(None, max_age=timedelta(seconds=billing.webhook_max_age))
            hooks.append(RefundWebhookHook(outbox))
        else:
            on_refund = getattr(load_python_hook(name), "on_refund", None)
            if on_refund is None:
                continue
            if not _is_async(on_refund):
                raise ConfigError(
                    f"PAYDISPATCH_BILLING_HOOKS: {name!r}.on_refund is not async: "
                    "async def on_refund(tx, event): ..."
                )
            hooks.append(OnRefund(on_refund))
    if not hooks:
        return None
    return hooks[0] if len(hooks) == 1 else TransferChain(hooks)


def build_refund_hold(billing: BillingSettings) -> RefundHold | None:
    """The request-time check of a refund (policy ``refuse`` with the wallet hook on), or None:
    call it in the request's transaction with the refund just written."""
    if "wallet" not in billing.hooks:
        return None
    if RefundOverdraft(billing.refund_overdraft) is not RefundOverdraft.REFUSE:
        return None
    return RefundHold(Wallets(None))
