"""The paid hooks: what runs inside the transaction that moves an order to ``paid``.

Configured by ``[billing] hooks`` (``PAYDISPATCH_BILLING_HOOKS``), in order:

* ``wallet`` (default): credit the order to the user's wallet, then the bonus rules;
* ``webhook``: write the order's event to the outbox, delivered to the site's own webhook later;
* any other name: a callable ``(conn, order) -> None`` registered under the entry-point group
  ``paydispatch.billing_hooks``, or a ``module:callable`` path.

All run in the paid transaction: if one raises, the transition is rolled back with everything
the hooks wrote, and the engine retries the order later. Nothing is ever half-credited.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from importlib.metadata import entry_points
from typing import Any

from dispatcher.billing.bonus import BonusRules
from dispatcher.billing.wallet import EntryKind, Wallets
from dispatcher.billing.webhook import Outbox
from dispatcher.config import BillingSettings, ConfigError
from orders.model import Order
from orders.repository import Connection, Pool
from orders.status import LATE_PAYMENT_FROM, OrderStatus

ENTRY_POINT_GROUP = "paydispatch.billing_hooks"
Hook = Callable[[Any, Order], None]


def previous_status(conn: Connection, order: Order) -> OrderStatus | None:
    """The status the order was paid from (its latest event, written in this transaction)."""
    row = conn.execute(
        "SELECT from_status FROM order_events WHERE order_id = %s ORDER BY id DESC LIMIT 1",
        (order.id,),
    ).fetchone()
    return None if row is None or row["from_status"] is None else OrderStatus(row["from_status"])


class WalletHook:
    """Credit the paid order to its user's wallet (kind ``topup``), then the bonus rules."""

    def __init__(self, wallets: Wallets, bonus: BonusRules | None = None) -> None:
        self.wallets = wallets
        self.bonus = bonus

    def __call__(self, conn: Connection, order: Order) -> None:
        late = previous_status(conn, order) in LATE_PAYMENT_FROM
        self.wallets.credit(
            order.site,
            order.user_id,
            order.money,
            kind=EntryKind.TOPUP,
            key=None,
            description=("late payment: " if late else "") + (order.description or "top-up"),
            order_id=order.id,
            conn=conn,
        )
        if self.bonus is not None and self.bonus.active:
            self.bonus.apply(self.wallets, conn, order)


class WebhookHook:
    """Write the order's ``order.paid`` event to the outbox (sent to the site's own webhook)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def __call__(self, conn: Connection, order: Order) -> None:
        late = previous_status(conn, order) in LATE_PAYMENT_FROM
        self.outbox.enqueue(conn, order, late=late)


class Chain:
    """Several hooks, run in order in the same transaction."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def __call__(self, conn: Connection, order: Order) -> None:
        for hook in self.hooks:
            hook(conn, order)


def load_python_hook(spec: str) -> Hook:
    """A hook by entry-point name (group ``paydispatch.billing_hooks``) or ``module:callable``."""
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
    hook: Hook = target
    return hook


def build(billing: BillingSettings, pool: Pool | None = None) -> Hook | None:
    """The paid hook the configuration asks for, or None when billing is off (``none``).

    The hooks only use the paid transaction's connection, so ``pool`` is optional."""
    hooks: list[Hook] = []
    for name in billing.hooks:
        if name == "wallet":
            bonus = BonusRules(billing.cashback_percent, billing.referral_percents)
            hooks.append(WalletHook(Wallets(pool), bonus if bonus.active else None))
        elif name == "webhook":
            outbox = Outbox(pool, max_age=timedelta(seconds=billing.webhook_max_age))
            hooks.append(WebhookHook(outbox))
        else:
            hooks.append(load_python_hook(name))
    if not hooks:
        return None
    return hooks[0] if len(hooks) == 1 else Chain(hooks)
