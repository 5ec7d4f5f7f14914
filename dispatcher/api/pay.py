"""The buyer's pages under ``/pay/{id}``. No API key: the order's random id is the capability,
and nothing here shows more than the page itself does (no user, site or metadata)."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import timedelta
from typing import Annotated
from urllib.parse import parse_qs
from uuid import UUID

import structlog
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dispatcher.api import pages
from dispatcher.api.auth import Context
from dispatcher.api.context import ApiContext
from dispatcher.api.errors import HttpError
from dispatcher.api.responses import errors
from dispatcher.api.schemas import BuyerState, PayStatus
from orders.errors import (
    DispatchError,
    InvalidInput,
    InvalidTransition,
    OrderNotFound,
    StaleOrder,
    SwitchRefused,
)
from orders.model import MAX_SWITCH_DEPTH, NewOrder, Order
from orders.status import OrderStatus

log = structlog.get_logger(__name__)
router = APIRouter(tags=["buyer"])
S = OrderStatus

_STATES: dict[OrderStatus, BuyerState] = {
    S.NEW: "preparing",
    S.SUBMITTING: "preparing",
    S.AWAITING_PAYMENT: "ready",
    S.PAID: "paid",
    S.REJECTED: "declined",
    S.EXPIRED: "expired",
    S.CANCELLED: "cancelled",
    S.FAILED: "failed",
    S.NEEDS_REVIEW: "review",
}
_UNPAID = frozenset({S.NEW, S.AWAITING_PAYMENT})
# How soon the page asks again (its script's setTimeout): every 1.5 s while waiting, and 0.5 s
# after a look that pulled the order's poll forward, by when that poll has usually been
# answered and written, so a buyer who has just paid sees it on the next look rather than a
# whole interval after the poll (docs/benchmarks.md, "Issue #15 item 3").
WAITING_RETRY_MS = 1500
PULLED_RETRY_MS = 500
FINAL_RETRY_MS = 10_000
FORM_FIELDS = 10
_HEADERS = {
    "Cache-Control": "no-store",
    # The page's URL is the order's capability: never send it on to the payment system.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": pages.CONTENT_SECURITY_POLICY,
}


def _http_url(url: str | None) -> str | None:
    return url if url and url.startswith(("https://", "http://")) else None


def buyer_status(ctx: ApiContext, order: Order, *, pulled: bool = False) -> PayStatus:
    """What the page shows; ``pulled``: this look pulled the order's poll forward."""
    state = _STATES[order.status]
    pay_url = _http_url(order.pay_url) if order.status is S.AWAITING_PAYMENT else None
    if state == "ready" and pay_url is None:
        state = "preparing"
    return_url = _http_url(order.return_url)
    if return_url == ctx.status_page(order.id):
        return_url = None  # the page itself: no link back to it
    final = order.status in {S.PAID, S.REJECTED, S.EXPIRED, S.CANCELLED, S.FAILED}
    return PayStatus(
        state=state,
        amount=str(order.money),
        description=order.description,
        pay_url=pay_url,
        return_url=return_url,
        final=final,
        retry_after_ms=_retry_after_ms(state, pulled=pulled),
    )


def _retry_after_ms(state: BuyerState, *, pulled: bool) -> int:
    if state not in {"preparing", "ready"}:
        return FINAL_RETRY_MS
    return PULLED_RETRY_MS if pulled else WAITING_RETRY_MS


async def _hurry(ctx: ApiContext, order: Order) -> bool:
    """A buyer is looking: pull the order's next poll forward (debounced, DESIGN.md 5).
    True when it did."""
    if order.status is not S.AWAITING_PAYMENT:
        return False
    now = time.monotonic()
    last = ctx.views.get(order.id)
    if last is not None and now - last < ctx.view_debounce:
        return False
    if len(ctx.views) > 50_000:
        ctx.views.clear()
    ctx.views[order.id] = now
    try:
        return await ctx.orders.poll_soon(order.id, quiet=timedelta(seconds=ctx.view_debounce))
    except DispatchError as exc:  # the page still shows what it knows
        log.warning("could not pull the poll forward", order_id=str(order.id), error=str(exc))
        return False


def _alternatives(ctx: ApiContext, order: Order) -> list[str]:
    """The payment systems the buyer may switch this order to (none at the end of a chain)."""
    if order.switch_depth >= MAX_SWITCH_DEPTH:
        return []
    found = []
    for name, rt in sorted(ctx.runtimes.items()):
        currencies = rt.adapter.capabilities.currencies
        if name != order.adapter and (not currencies or order.money.currency in currencies):
            found.append(name)
    return found


async def _read(ctx: ApiContext, order_id: str) -> Order | None:
    """The order a page's path names (None for no such order); the reads that arrive together
    (buyers' pages keep polling) are one query."""
    try:
        return await ctx.orders.get(UUID(order_id))
    except (ValueError, OrderNotFound):
        return None


def _html(content: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status_code, headers=_HEADERS)


@router.get(
    "/pay/{order_id}",
    response_class=HTMLResponse,
    responses=errors(
        422,
        also={
            404: {"content": {"text/html": {}}, "description": "No such payment (HTML)"},
            503: {"content": {"text/html": {}}, "description": "Try again soon (HTML)"},
        },
    ),
    summary="The buyer's status page",
)
async def status_page(
    order_id: str,
    ctx: Context,
    wait: Annotated[int | None, Query(ge=0, le=1, include_in_schema=False)] = None,
) -> Response:
    """Waits for the invoice, sends the buyer to pay, shows the result."""
    try:
        order = await _read(ctx, order_id)
    except DispatchError:
        return _html(pages.unavailable_page(), 503)
    if order is None:
        return _html(pages.not_found_page(), 404)
    status = buyer_status(ctx, order, pulled=await _hurry(ctx, order))
    html = pages.status_page(
        str(order.id),
        status,
        alternatives=_alternatives(ctx, order) if order.status in _UNPAID else [],
        can_cancel=order.status in _UNPAID,
        send_now=wait == 1,
    )
    return _html(html)


@router.get(
    "/pay/{order_id}/status",
    response_model=PayStatus,
    responses=errors(404, 422, 503),
    summary="What the status page shows, as JSON",
)
async def status_json(order_id: UUID, ctx: Context, response: Response) -> PayStatus:
    try:
        order = await ctx.orders.get(order_id)
    except OrderNotFound:
        raise HttpError(404, "order_not_found", "no such order") from None
    pulled = await _hurry(ctx, order)
    response.headers.update(_HEADERS)
    return buyer_status(ctx, order, pulled=pulled)


async def _form(request: Request) -> dict[str, str]:
    """The page's small form; anything larger than it ever sends is a 400, not a crash."""
    body = (await request.body()).decode("utf-8", "replace")
    try:
        fields = parse_qs(body, max_num_fields=FORM_FIELDS)
    except ValueError:  # over max_num_fields
        raise HttpError(
            400, "bad_request", f"the form has more than {FORM_FIELDS} fields"
        ) from None
    return {k: v[0] for k, v in fields.items() if v}


def _back(order_id: UUID | str) -> RedirectResponse:
    return RedirectResponse(f"/pay/{order_id}", 303, headers=_HEADERS)


@router.post("/pay/{order_id}/cancel", include_in_schema=False)
async def cancel(order_id: str, ctx: Context) -> Response:
    order = await _read(ctx, order_id)
    if order is None:
        return _html(pages.not_found_page(), 404)
    # Paid or moving meanwhile: the page shows where it is.
    with contextlib.suppress(InvalidTransition, StaleOrder):
        await ctx.orders.cancel(order.id, actor="buyer", reason="cancelled on the status page")
    return _back(order.id)


@router.post("/pay/{order_id}/switch", include_in_schema=False)
async def switch(
    order_id: str, ctx: Context, form: Annotated[dict[str, str], Depends(_form)]
) -> Response:
    """Cancel this order and make the same one at another payment system, once.

    The cancel and the create are one transaction (``Orders.switch``): an order is
    replaced at most once and a chain of switches is bounded, a switch of an order already
    replaced goes to its replacement, and an order cancelled otherwise stays cancelled.
    """
    order = await _read(ctx, order_id)
    if order is None:
        return _html(pages.not_found_page(), 404)
    adapter = form.get("adapter", "")
    if order.status in _UNPAID and adapter not in _alternatives(ctx, order):
        return _back(order.id)

    def same_order_at(order: Order) -> NewOrder:
        own_page = order.return_url == ctx.status_page(order.id)
        return NewOrder(
            site=order.site,
            user_id=order.user_id,
            money=order.money,
            adapter=adapter,
            description=order.description,
            return_url=None if own_page else order.return_url,
            metadata={**order.metadata, "replaces": str(order.id)},
            idempotency_key=f"switch:{order.id}",
        )

    new_id = uuid.uuid4()
    try:
        made = await ctx.orders.switch(
            order.id, same_order_at, new_id=new_id, default_return_url=ctx.status_page(new_id)
        )
    except (SwitchRefused, InvalidInput) as exc:  # InvalidInput: an order older than its rules
        log.info("switch refused", order_id=str(order.id), reason=str(exc))
        return _back(order.id)
    return _back(made.order.id)
