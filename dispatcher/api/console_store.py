"""What the operators' console reads and records, over the existing queries where they exist.

The dashboard's numbers are the ones ``paydispatch status`` shows (its SQL, from
:mod:`dispatcher.ops.orders`); a resolve is :func:`dispatcher.ops.orders.resolve`; a replay is the
``outbox_replay`` query of ``paydispatch hooks replay``, run in one transaction with the record of
who asked for it and why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from dispatcher.ops import orders as ops
from orders.db import AsyncConnection, Connection, database_errors, query
from orders.db import query as billing_query
from orders.db import query as orders_query
from orders.errors import InvalidInput, OrderNotFound
from orders.model import LIMITS, Order, PaidHook, check_text
from orders.repository import OrderRepository
from orders.status import OrderStatus

SEARCH_MAX = 255  # longer search text finds nothing: ids, numbers and site refs are shorter
_RESOLUTIONS = {"paid": OrderStatus.PAID, "rejected": OrderStatus.REJECTED}


@dataclass(frozen=True, slots=True)
class Action:
    """One row of ``operator_actions``: who did what to which order or event, and why."""

    id: int
    operator: str
    action: str
    order_id: UUID | None
    target: str
    reason: str
    detail: Mapping[str, Any]
    at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Action:
        return cls(
            row["id"], row["operator"], row["action"], row["order_id"], row["target"],
            row["reason"], row["detail"], row["at"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Overview:
    """The dashboard: orders per adapter and status, due work, the outbox, what needs a person."""

    counts: Mapping[tuple[str, OrderStatus], int]
    due: Mapping[str, Any]
    outbox: Mapping[str, Any]
    stuck: Sequence[Order]
    parked: Sequence[Mapping[str, Any]]
    actions: Sequence[Action]

    @property
    def needs_review(self) -> int:
        return sum(
            n for (_, status), n in self.counts.items() if status is OrderStatus.NEEDS_REVIEW
        )


def _text(field: str, value: str, limit: int) -> str:
    """An operator's reason or evidence, stripped. Typed in a text area, so line breaks stay
    (``controls``); what the database cannot hold is refused as input, not a server error."""
    value = value.strip()
    check_text(field, value, limit=limit, controls=True)
    return value


class ConsoleStore:
    """The console's reads and its recorded actions."""

    def __init__(self, repo: OrderRepository) -> None:
        self.repo = repo
        self.pool = repo.pool

    # -- reads -----------------------------------------------------------------------------

    def overview(self, *, grace_minutes: int = 5, limit: int = 50) -> Overview:
        counts = self.repo.status_counts()
        with database_errors(), self.pool.connection() as conn:
            due = conn.execute(query("ops_due_counts")).fetchone() or {}
            outbox = conn.execute(query("ops_outbox_counts")).fetchone() or {}
            stuck = conn.execute(query("ops_stuck"), {"grace": grace_minutes, "limit": limit})
            stuck_orders = [Order.from_row(row) for row in stuck.fetchall()]
            parked = conn.execute(query("parked_webhooks"), {"limit": limit}).fetchall()
            actions = conn.execute(query("recent_actions"), {"limit": 20}).fetchall()
        return Overview(
            counts, due, outbox, stuck_orders, parked, [Action.from_row(a) for a in actions]
        )

    def order_history(self, order_id: UUID) -> tuple[list[dict[str, Any]], list[Action]]:
        """The order's webhook deliveries and the console actions taken on it."""
        with database_errors(), self.pool.connection() as conn:
            hooks = conn.execute(query("order_webhooks"), {"order_id": order_id}).fetchall()
            rows = conn.execute(query("order_actions"), {"order_id": order_id}).fetchall()
        return hooks, [Action.from_row(row) for row in rows]

    def search(self, text: str, *, site: str | None, adapters: Sequence[str]) -> list[Order]:
        """Orders named by ``text``: with ``site``, the site's own reference (``site_ref``);
        else our id, our number, or a payment system's id at any of ``adapters``."""
        text = text.strip()
        try:  # text no order can hold finds nothing, as a reference the database cannot hold
            check_text("q", text, limit=SEARCH_MAX, controls=True)
            check_text(
                "site", site and site.strip(), limit=LIMITS["site"], required=False, controls=True
            )
        except InvalidInput:
            return []
        if site:
            params = {"site": site.strip(), "site_ref": text, "idempotency_key": None}
            with database_errors(), self.pool.connection() as conn:
                row = conn.execute(orders_query("find_replay"), params).fetchone()
            return [] if row is None else [Order.from_row(row)]
        found: dict[UUID, Order] = {}
        with contextlib.suppress(ValueError, OrderNotFound):  # not a UUID, or not ours
            own = self.repo.get(UUID(text))
            found[own.id] = own
        refs: list[dict[str, Any]] = [{"psp_id": text}, {"psp_payment_id": text}]
        if text.isdigit() and len(text) < 19:
            refs.append({"number": int(text)})
        for adapter in adapters:
            for ref in refs:
                with contextlib.suppress(InvalidInput):  # text no order can hold
                    order = self.repo.find_by_ref(adapter, **ref)
                    if order is not None:
                        found.setdefault(order.id, order)
        return list(found.values())

    # -- actions ---------------------------------------------------------------------------

    def resolve(
        self,
        hook: PaidHook | None,
        order_id: UUID,
        to: str,
        *,
        by: str,
        reason: str,
        evidence: str,
    ) -> Order:
        """``orders resolve`` from the console: the same event in ``order_events`` (actor
        ``ops:<operator>``, detail with who, why and evidence) and the console's record, in one
        transaction."""
        target = _RESOLUTIONS.get(to)
        if target is None:
            raise InvalidInput("to", "choose paid or rejected")
        reason = _text("reason", reason, ops.REASON_MAX)
        evidence = _text("evidence", evidence, ops.EVIDENCE_MAX)
        order = self.repo.get(order_id)

        async def record(tx: AsyncConnection, moved: Order) -> None:  # in the resolve's own
            await self._arecord(  # transaction
                tx, by, "resolve", order_id=order.id, target=str(order.id), reason=reason,
                detail={"from": str(order.status), "to": str(moved.status), "evidence": evidence},
            )  # fmt: skip

        return ops.resolve(
            self.repo, order, target, by=by, reason=reason, evidence=evidence, hook=hook,
            also=record,
        )  # fmt: skip

    def replay(self, event_id: UUID, *, by: str, reason: str, max_age: Any) -> UUID | None:
        """Queue a parked webhook event for delivery again, recording who and why in the same
        transaction; returns its order's id, or None when the event is not parked."""
        reason = _text("reason", reason, ops.REASON_MAX)
        with database_errors(), self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                billing_query("outbox_replay"), {"ids": [event_id], "max_age": max_age}
            ).fetchall()
            if not rows:
                return None
            event = conn.execute(billing_query("get_outbox"), {"id": event_id}).fetchone()
            assert event is not None  # replayed in this very transaction
            order_id: UUID = event["order_id"]
            self._record(
                conn, by, "replay", order_id=order_id, target=str(event_id), reason=reason,
                detail={"event_type": event["event_type"], "attempts": event["attempts"]},
            )  # fmt: skip
        return order_id

    @staticmethod
    def _record(
        conn: Connection,
        by: str,
        action: str,
        *,
        order_id: UUID | None,
        target: str,
        reason: str,
        detail: Mapping[str, Any],
    ) -> None:
        conn.execute(
            query("insert_action"),
            ConsoleStore._action(
                by, action, order_id=order_id, target=target, reason=reason, detail=detail
            ),
        )

    @staticmethod
    async def _arecord(
        tx: AsyncConnection,
        by: str,
        action: str,
        *,
        order_id: UUID | None,
        target: str,
        reason: str,
        detail: Mapping[str, Any],
    ) -> None:
        """:meth:`_record` in an async transaction (a resolve's, run by ``settle.apply``)."""
        await tx.execute(
            query("insert_action"),
            ConsoleStore._action(
                by, action, order_id=order_id, target=target, reason=reason, detail=detail
            ),
        )

    @staticmethod
    def _action(
        by: str,
        action: str,
        *,
        order_id: UUID | None,
        target: str,
        reason: str,
        detail: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The parameters of ``insert_action``: one row of ``operator_actions``."""
        return {
            "operator": by,
            "action": action,
            "order_id": order_id,
            "target": target,
            "reason": reason,
            "detail": Jsonb(dict(detail)),
        }
