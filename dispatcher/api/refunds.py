"""``/v1/orders/{order_id}/refunds``: a site gives back (part of) what a paid order took.

A refund is a transfer (``orders.transfers``): written here as ``requested``, then sent to the
payment system by the worker with the refund's id as its idempotency key, like an order. The
database refuses refunds beyond what was paid; this module reads the request, writes it the one
way (:func:`dispatcher.refunds.request_refund`, with billing's check in the same transaction)
and answers with the API's stable errors.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Response

from dispatcher.api.auth import Context, Site
from dispatcher.api.errors import HttpError
from dispatcher.api.responses import errors
from dispatcher.api.schemas import NonBlank, RefundCreate, RefundList, RefundOut
from dispatcher.api.strict import no_unknown_query
from dispatcher.refunds import order_refunds, request_refund
from orders.errors import InvalidAmount
from orders.model import LIMITS, Order
from orders.money import Money

router = APIRouter(tags=["refunds"], dependencies=[Depends(no_unknown_query)])

REPLAY = "A replay: the refund an earlier request with the same key and body made"

RefundKey = Annotated[
    NonBlank,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=LIMITS["idempotency_key"],
        description="Required: the same key and body return the same refund, never a second one",
    ),
]


def refund_money(order: Order, amount: str | None) -> Money | None:
    """The refund's amount in the order's currency (None: all that is left); 422 for more
    decimals than the currency has (the body's pattern already refused anything else)."""
    if amount is None:
        return None
    money = Money.parse(amount, order.money.currency)
    if money.amount <= 0:  # "0.001" in USD: refused as too precise above; kept as a guard
        raise InvalidAmount("amount", f"must be positive, got {amount}")
    return money


@router.post(
    "/v1/orders/{order_id}/refunds",
    status_code=201,
    response_model=RefundOut,
    responses=errors(
        400, 401, 404, 409, 413, 422, 503, also={200: {"model": RefundOut, "description": REPLAY}}
    ),
    summary="Refund a paid order, in full or in part",
)
async def create_refund(
    *,
    order_id: UUID,
    body: RefundCreate,
    site: Site,
    ctx: Context,
    response: Response,
    idempotency_key: RefundKey,
) -> RefundOut:
    """201 with the new refund (``requested``: the worker sends it); 200 with the earlier one
    for a replay; 409 ``refund_refused`` (not paid, nothing left to refund, or the payment
    system cannot refund: the message says which) or ``idempotency_conflict``."""
    if not idempotency_key.strip():
        raise HttpError(422, "invalid_field", "must not be blank", field="Idempotency-Key")
    order = await ctx.orders.get(order_id, site=site)
    refund, created = await request_refund(
        ctx.transfers,
        order.id,
        refund_money(order, body.amount),
        site=site,
        idempotency_key=idempotency_key,
        reason=body.reason,
        requested_by=f"site:{site}"[:200],
        origin="site",
        check=ctx.refund_hold,
    )
    if not created:
        response.status_code = 200
    return RefundOut.of(refund)


@router.get(
    "/v1/orders/{order_id}/refunds",
    response_model=RefundList,
    responses=errors(401, 404, 422, 503),
    summary="An order's refunds, oldest first",
)
async def list_refunds(order_id: UUID, site: Site, ctx: Context) -> RefundList:
    order = await ctx.orders.get(order_id, site=site)
    refunds = await order_refunds(ctx.transfers, order.id, site=site)
    return RefundList(items=[RefundOut.of(r) for r in refunds])
