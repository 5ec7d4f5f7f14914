"""``/v1/orders`` and ``/v1/adapters``: what a site calls, with its API key."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Response

from dispatcher import metrics
from dispatcher.api.auth import Context, Site
from dispatcher.api.context import ApiContext
from dispatcher.api.errors import HttpError
from dispatcher.api.responses import errors
from dispatcher.api.schemas import (
    AdapterList,
    AdapterOut,
    NonBlank,
    OrderCreate,
    OrderCursor,
    OrderOut,
    OrderPage,
    Text,
)
from dispatcher.api.strict import no_unknown_query
from orders.errors import InvalidTransition
from orders.model import LIMITS, NewOrder
from orders.money import Money
from orders.repository import MAX_PAGE, Created
from orders.status import OrderStatus

router = APIRouter(tags=["orders"], dependencies=[Depends(no_unknown_query)])
REPLAY = "A replay: the order an earlier request with the same key or site_ref created"

IdempotencyKey = Annotated[
    NonBlank | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=LIMITS["idempotency_key"],
        description="Makes retries safe: the same key and body return the same order",
    ),
]


@router.post(
    "/v1/orders",
    status_code=201,
    response_model=OrderOut,
    responses=errors(
        400, 401, 409, 413, 422, 503, also={200: {"model": OrderOut, "description": REPLAY}}
    ),
    summary="Create an order",
)
async def create_order(
    *,
    body: OrderCreate,
    site: Site,
    ctx: Context,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OrderOut:
    """201 with the new order; 200 with the earlier one for a replay; 409 for the same key or
    site_ref with another body. Then send the buyer to ``status_url``."""
    created = await create_for_site(ctx, site, body, idempotency_key)
    if not created.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/orders/{created.order.id}"
    return OrderOut.of(created.order, ctx.public_url)


async def create_for_site(
    ctx: ApiContext, site: str, body: OrderCreate, idempotency_key: str | None
) -> Created:
    """What POST /v1/orders does once the request is read: the route above and the fast lane
    (``dispatcher.api.lane``) both call it. Raises HttpError or domain errors."""
    money = Money(body.amount, body.currency)
    runtime = ctx.runtimes.get(body.adapter)
    if runtime is not None:
        accepted = runtime.adapter.capabilities.currencies
        if accepted and money.currency not in accepted:
            raise HttpError(
                422,
                "unsupported_currency",
                f"{body.adapter} does not take {money.currency} "
                f"(it takes {', '.join(sorted(accepted))})",
                field="currency",
            )
    if idempotency_key is not None and not idempotency_key.strip():
        raise HttpError(422, "invalid_field", "must not be blank", field="Idempotency-Key")
    new = NewOrder(
        site=site,
        user_id=body.user_id,
        money=money,
        adapter=body.adapter,
        site_ref=body.site_ref,
        description=body.description,
        return_url=body.return_url,
        metadata=body.metadata,
        expires_in=None if body.expires_in is None else timedelta(seconds=body.expires_in),
        idempotency_key=idempotency_key,
    )
    order_id = uuid.uuid4()
    created = await ctx.batched.create(
        new,
        order_id=order_id,
        default_return_url=ctx.status_page(order_id),
        actor=f"site:{site}"[:200],
    )
    if created.created:
        metrics.ORDERS_CREATED.labels(created.order.adapter).inc()
    return created


@router.get(
    "/v1/orders/{order_id}",
    response_model=OrderOut,
    responses=errors(401, 404, 422, 503),
    summary="An order with its status changes",
)
def get_order(order_id: UUID, site: Site, ctx: Context) -> OrderOut:
    order = ctx.repo.get(order_id, site=site)
    return OrderOut.of(order, ctx.public_url, ctx.repo.events(order.id))


@router.get(
    "/v1/orders",
    response_model=OrderPage,
    responses=errors(401, 422, 503),
    summary="This site's orders, newest first",
)
def list_orders(
    *,
    site: Site,
    ctx: Context,
    status: OrderStatus | None = None,
    user_id: Annotated[Text | None, Query(min_length=1, max_length=LIMITS["user_id"])] = None,
    adapter: Annotated[Text | None, Query(min_length=1, max_length=LIMITS["adapter"])] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[OrderCursor | None, Query(min_length=1, max_length=200)] = None,
) -> OrderPage:
    page = ctx.repo.list_orders(
        site=site, status=status, user_id=user_id, adapter=adapter, limit=limit, cursor=cursor
    )
    return OrderPage(
        items=[OrderOut.of(order, ctx.public_url) for order in page.items],
        next_cursor=page.next_cursor,
    )


@router.delete(
    "/v1/orders/{order_id}",
    response_model=OrderOut,
    responses=errors(401, 404, 409, 422, 503),
    summary="Cancel an unpaid order",
)
def cancel_order(order_id: UUID, site: Site, ctx: Context) -> OrderOut:
    """Cancels a ``new`` or ``awaiting_payment`` order (again: no change); 409 otherwise."""
    try:
        order = ctx.repo.cancel(order_id, site=site, actor=f"site:{site}"[:200])
    except InvalidTransition as exc:
        raise HttpError(
            409,
            "not_cancellable",
            f"the order is {exc.from_status}; only new or awaiting_payment orders can be cancelled",
        ) from None
    return OrderOut.of(order, ctx.public_url)


@router.get(
    "/v1/adapters",
    response_model=AdapterList,
    responses=errors(401),
    tags=["adapters"],
    summary="The enabled payment systems",
)
async def list_adapters(site: Site, ctx: Context) -> AdapterList:
    items = []
    for name, rt in sorted(ctx.runtimes.items()):
        caps = rt.adapter.capabilities
        items.append(
            AdapterOut(
                name=name,
                currencies=sorted(caps.currencies),
                cancel=caps.cancel,
                notifications=caps.notifications,
                signed_notifications=caps.signed_notifications,
                default_expiry_seconds=int(caps.default_expiry.total_seconds()),
            )
        )
    return AdapterList(items=items)
