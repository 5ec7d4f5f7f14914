"""``POST /v1/callbacks/{adapter}``: push notifications from payment systems.

The raw request goes to the adapter's parser. A verified notification with a report is decided
and written like a poll's answer (:func:`dispatcher.settle.decide`, then
:func:`dispatcher.settle.apply` on the server's loop); anything else (unsigned, stale, for an
order the report does not match) only makes the order due for a poll at once (invariant 6). So
is a verified notification of a payment system whose signatures can be replayed
(``replayable_notifications``: no timestamp, so an old genuine one could be sent again). The
reply is exactly the one the adapter says its payment system expects, whether the notification
was verified or not.

A payment system may send many notifications at once, and each one handled holds a connection of
the API's async pool (its read, the paid transaction with the billing hook): at most half the
pool's connections are given to notifications in each process (``notification_slots``), the rest
wait their turn holding none, so the buyers' pages and the creates always find a connection. A
notification waits at most ``SLOT_WAIT`` for its turn, then is answered 503 with Retry-After:
the payment system's own request timeout runs while it waits, and one it gave up on would be
sent again anyway, so a turn not given soon is better handed back.
Unbounded, 64 notifications in flight took every connection and the pages' reads waited behind
them (docs/benchmarks.md, "Issue #15 item 3").

Hints cost a payment-system call each, so an unsigned one names its order only by the payment
system's own id (never by our guessable order number, nor by our id alone), and hints are
debounced per order: a flood makes at most one poll per order every ``HINT_QUIET``.

Money going back (issue #14): a verified notification of a succeeded refund, of a payment whose
refunded total is above what the order's refunds account for, or of a chargeback, is recorded
once as a refund the payment system reported (:meth:`Transfers.record_reported_refund`, which
runs the transfer hook: billing reverses the credit in the same transaction); a verified one of a
chargeback given back (a dispute won) reverses that chargeback once
(:meth:`Transfers.reverse_chargeback`: the wallet credited again). One that may be
about our own refunds, and every unverified one, only makes the order's refunds still being sent
or read due now: their own status read decides. An unverified one naming a paid order (a refund
hint, or a payment hint: YooKassa's are never signed) also makes the order's "refund check" due
(:meth:`Transfers.mark_refund_check`): the worker reads the payment's status itself and records
what our refunds do not account for. Its content is never trusted: a forged hint costs at most
one status read per order every ``REFUND_CHECK_QUIET``, and reserves nothing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.base import (
    MalformedResponse,
    Notification,
    NotificationResult,
    NotSupported,
    OrderRef,
    RefundReport,
    RefundState,
)
from dispatcher import metrics
from dispatcher.api.auth import Context
from dispatcher.api.context import ApiContext
from dispatcher.api.errors import HttpError
from dispatcher.api.responses import errors
from dispatcher.runtime import AdapterRuntime
from dispatcher.settle import apply, decide
from orders.errors import InvalidInput, RefundRefused, StaleOrder
from orders.model import Order
from orders.repository import check_ref
from orders.status import ACTIVE, OrderStatus
from orders.transfers import unaccounted_refund

log = structlog.get_logger(__name__)
router = APIRouter(tags=["callbacks"])
S = OrderStatus

# A hint may find a payment on an order still awaiting it, or a late one on a given-up order.
HINTED = (S.AWAITING_PAYMENT, S.REJECTED, S.EXPIRED, S.CANCELLED)
# A hint pulls an order forward only when the dispatcher has not looked at it this recently.
HINT_QUIET = timedelta(seconds=2)
# A hint makes a paid order's refund check (one status read) due at most this often.
REFUND_CHECK_QUIET = timedelta(seconds=30)

_ANY_BODY: dict[str, Any] = {
    "requestBody": {
        "description": "Whatever the payment system sends; its adapter reads it",
        "required": False,
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def _order_for(ctx: ApiContext, adapter: str, ref: OrderRef, *, signed: bool) -> Order | None:
    """The order ``ref`` names. Anyone can send an unsigned notification, so it may name an
    order only by the payment system's ids (of the invoice, or of a paid order's payment); a
    signature proves the sender, who may use ours."""
    if not signed:
        if ref.psp_id is None and ref.psp_payment_id is None:
            return None
        return await ctx.orders.find_by_ref(
            adapter, psp_id=ref.psp_id, psp_payment_id=ref.psp_payment_id
        )
    order_id: UUID | None = None
    if ref.order_id:
        try:
            order_id = UUID(ref.order_id)
        except ValueError:
            order_id = None
    return await ctx.orders.find_by_ref(
        adapter,
        order_id=order_id,
        psp_id=ref.psp_id,
        number=ref.number,
        psp_payment_id=ref.psp_payment_id,
    )


async def money_back(
    ctx: ApiContext, rt: AdapterRuntime, order: Order, result: NotificationResult
) -> str | None:
    """Record a refund or chargeback the notification reports; None when it reports none."""
    report, refund = result.report, result.refund
    chargeback = report is not None and report.chargeback
    refunded = None if report is None else report.refunded
    payment = result.ref.psp_payment_id or (report.psp_payment_id if report else None)
    other_payment = bool(payment and order.psp_payment_id and payment != order.psp_payment_id)
    if (
        not result.verified
        or rt.adapter.capabilities.replayable_notifications
        or other_payment  # not the payment that paid this order: our own read decides
    ):
        # Never its word: our own reads decide (the order's refunds', and the payment's).
        if refund is None and order.status is not S.PAID:
            return None
        return await _hint(ctx, order, "refund hint", check=True)
    if refund is None and not (order.status is S.PAID and (chargeback or refunded is not None)):
        return None
    reason = ""
    if refund is None:
        refund = unaccounted_refund(order, refunded, chargeback=chargeback)
        if refund is None:
            return "refunds accounted for"
        # A refunded total is a refund, disputed or not: only a chargeback without one is taken.
        chargeback = refund.raw_status == "chargeback"
        reason = "chargeback" if chargeback else "refunded at the payment system"
    return await _settle(ctx, rt, order, refund, reason=reason, chargeback=chargeback)


async def _settle(
    ctx: ApiContext,
    rt: AdapterRuntime,
    order: Order,
    refund: RefundReport,
    *,
    reason: str,
    chargeback: bool,
) -> str:
    """A verified report of one refund (or chargeback): recorded, reversed, or a hint."""
    if refund.state is RefundState.REVERSED:  # a chargeback given back: a dispute won
        return await _reverse(ctx, rt, order, refund)
    if refund.state is not RefundState.SUCCEEDED:  # ours, maybe: its own read settles it
        return await _hint(ctx, order, f"refund {refund.state}")
    return await _record(ctx, rt, order, refund, reason=reason, chargeback=chargeback)


async def _reverse(ctx: ApiContext, rt: AdapterRuntime, order: Order, refund: RefundReport) -> str:
    reversed_ = await ctx.transfers.reverse_chargeback(order, refund, actor=f"callback:{rt.name}")
    if reversed_ is None:
        # Given back already (a second event of the same dispute), or no chargeback of the order
        # is known to give back: logged for a person, nothing written.
        log.warning(
            "chargeback given back: nothing to reverse",
            order_id=str(order.id),
            psp_refund_id=refund.psp_refund_id,
        )
        return "chargeback reversal known, or no chargeback recorded"
    metrics.CHARGEBACK_REVERSALS.labels(rt.name).inc()
    log.warning("chargeback reversed", order_id=str(order.id), amount=str(reversed_.money))
    return f"chargeback reversed: {reversed_.money}"


async def _hint(ctx: ApiContext, order: Order, what: str, *, check: bool = False) -> str:
    woken = await ctx.transfers.wake_refunds(order.id)
    outcome = f"{what}: {woken} refund(s) read again"
    if check and order.status is S.PAID:
        due = await ctx.transfers.mark_refund_check(order.id, quiet=REFUND_CHECK_QUIET)
        outcome += "; the payment's refunds to be read" if due else "; refund check already due"
    return outcome


async def _record(
    ctx: ApiContext,
    rt: AdapterRuntime,
    order: Order,
    refund: RefundReport,
    *,
    reason: str,
    chargeback: bool,
) -> str:
    try:
        recorded = await ctx.transfers.record_reported_refund(
            order, refund, actor=f"callback:{rt.name}", reason=reason, chargeback=chargeback
        )
    except RefundRefused as exc:  # the payment system and we disagree: a person looks
        log.error("reported refund not recorded", order_id=str(order.id), error=str(exc))
        metrics.REPORTED_REFUNDS_REFUSED.labels(rt.name).inc()
        return f"reported refund refused: {exc}"
    if recorded is None:
        return "refund known"
    metrics.REFUNDS.labels(rt.name, "psp", "succeeded").inc()
    if chargeback:
        metrics.CHARGEBACKS.labels(rt.name).inc()
        log.error("chargeback", order_id=str(order.id), amount=str(recorded.money))
    return f"refund recorded: {recorded.money}"


async def handle(ctx: ApiContext, rt: AdapterRuntime, result: NotificationResult) -> str:
    """Apply or hint; returns what was done, for the log."""
    order = await _order_for(ctx, rt.name, result.ref, signed=result.verified)
    if order is None:
        return "unknown order"
    refunded = await money_back(ctx, rt, order, result)
    if refunded is not None and (result.refund is not None or order.status is S.PAID):
        return refunded
    report = result.report
    trusted = (
        result.verified
        and not rt.adapter.capabilities.replayable_notifications
        and report is not None
        and order.psp_id is not None
        and report.psp_id in (None, order.psp_id)
    )
    if trusted and report is not None:
        for _ in range(3):
            now = datetime.now(UTC)
            decision = decide(order, report, now=now, late_watch=rt.policy.late_window)
            if decision is None:
                break
            try:
                moved = await apply(
                    ctx.orders,
                    order,
                    decision,
                    actor=f"callback:{rt.name}",
                    hook=ctx.paid_hook,
                    use_lease=False,
                )
            except StaleOrder:
                order = await ctx.orders.get(order.id)  # a worker moved it meanwhile: decide again
                continue
            return f"applied: {order.status} -> {moved.status}"
        if order.status not in ACTIVE:
            return "nothing to change"
    pulled = await ctx.orders.poll_soon(order.id, statuses=HINTED, quiet=HINT_QUIET)
    return "poll scheduled" if pulled else "poll already due or running"


# How long a notification waits for a slot before it is answered 503 (to be sent again).
SLOT_WAIT = 2.0


def notification_slots(request: Request, ctx: ApiContext) -> asyncio.Semaphore:
    """The app's bound on notifications handled at once: half its pool (one app, one loop)."""
    slots: asyncio.Semaphore | None = getattr(request.app.state, "notification_slots", None)
    if slots is None:
        slots = asyncio.Semaphore(max(1, ctx.pool_size // 2))
        request.app.state.notification_slots = slots
    return slots


@router.post(
    "/v1/callbacks/{adapter}",
    responses=errors(
        400, 404, 413, 503, also={200: {"description": "The reply the payment system expects"}}
    ),
    openapi_extra=_ANY_BODY,
    summary="A payment system's push notification",
)
async def callback(adapter: str, request: Request, ctx: Context) -> Response:
    rt = ctx.runtimes.get(adapter)
    if rt is None:
        raise HttpError(404, "unknown_adapter", "no such payment system is enabled here")
    notification = Notification(
        headers={name.lower(): value for name, value in request.headers.items()},
        body=await request.body(),
        query=dict(request.query_params),
        remote_addr=request.client.host if request.client else None,
        received_at=datetime.now(UTC),
    )
    try:
        result = rt.adapter.parse_notification(notification, rt.settings)
    except NotSupported:
        raise HttpError(
            404, "notifications_not_supported", f"{adapter} sends no notifications"
        ) from None
    except MalformedResponse as exc:
        log.warning("unreadable notification", adapter=adapter, error=str(exc))
        raise HttpError(400, "malformed_notification", str(exc)) from None
    ref = result.ref
    try:
        check_ref(psp_id=ref.psp_id, number=ref.number, text=ref.order_id or "")
        check_ref(psp_id=ref.psp_payment_id)
    except InvalidInput as exc:
        log.warning("notification names no possible order", adapter=adapter, error=str(exc))
        raise HttpError(400, "malformed_notification", str(exc)) from None
    slots = notification_slots(request, ctx)
    try:
        async with asyncio.timeout(SLOT_WAIT):
            await slots.acquire()
    except TimeoutError:
        log.warning("notification not handled: too many at once", adapter=adapter)
        raise HttpError(
            503, "busy", "too many notifications at once; send it again",
            headers={"Retry-After": "1"},
        ) from None  # fmt: skip
    try:
        outcome = await handle(ctx, rt, result)
    finally:
        slots.release()
    log.info(
        "notification",
        adapter=adapter,
        verified=result.verified,
        outcome=outcome,
        order_id=result.ref.order_id,
        psp_id=result.ref.psp_id,
    )
    reply = result.reply
    return Response(reply.body, reply.status_code, media_type=reply.content_type)
