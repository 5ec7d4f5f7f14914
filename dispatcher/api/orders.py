"""``/v1/orders`` and ``/v1/adapters``: what a site calls, with its API key."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from dispatcher import metrics
from dispatcher.api.auth import SCHEME, Context, Site, authenticate, bearer_key
from dispatcher.api.body import (
    Errors,
    JsonBody,
    RawResponse,
    RequestRoute,
    first_headers,
    located,
)
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
from dispatcher.api.strict import no_unknown_query, refuse_unknown_query
from orders.errors import InvalidTransition
from orders.model import LIMITS, NewOrder
from orders.money import Money
from orders.repository import MAX_PAGE, Created
from orders.status import OrderStatus

router = APIRouter(tags=["orders"])
# Site endpoints refuse query parameters they do not read (the create checks its own).
STRICT = [Depends(no_unknown_query)]
REF = "#/components/schemas/{model}"
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


# ORDERS_CREATED's child per adapter: ``labels()`` builds and looks up its key under a lock on
# every call, and the create counts every order it makes.
_CREATED: dict[str, Counter] = {}

# The create reads its own request (see create_order); FastAPI documents it from these.
CREATE_BODY = JsonBody(OrderCreate)
_HEADERS = frozenset({b"authorization", b"content-type", b"idempotency-key"})
IDEMPOTENCY_KEY = TypeAdapter(IdempotencyKey)
_KEY_SCHEMA = IDEMPOTENCY_KEY.json_schema(ref_template=REF)
CREATE_DOCUMENT: dict[str, Any] = {
    "security": [{SCHEME: []}],
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": _KEY_SCHEMA | {"title": "Idempotency-Key"},
            "description": _KEY_SCHEMA["description"],
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="OrderCreate")}}},
    },
}


async def create_order(request: Request) -> Response:
    """201 with the new order; 200 with the earlier one for a replay; 409 for the same key or
    site_ref with another body. Then send the buyer to ``status_url``."""
    # The busiest route reads its request itself (a RequestRoute): the headers in one pass,
    # the body parsed and validated once, the answer rendered once; FastAPI would solve a tree
    # of dependencies, validate the body from Python objects, then validate and encode the
    # returned model again. It checks what FastAPI checked for the declared parameters, in
    # FastAPI's order: the body's JSON, the query, the key, then the header's and the body's
    # fields, all in one 422. A repeated header counts once, as its first value, as FastAPI's.
    ctx: ApiContext = request.app.state.ctx
    headers = first_headers(request.scope, _HEADERS)
    read = await CREATE_BODY.read(request.receive, headers.get(b"content-type"))
    refuse_unknown_query(request)
    site = await authenticate(ctx, bearer_key(headers.get(b"authorization")))
    key = headers.get(b"idempotency-key")
    invalid: Errors = []
    if key is not None:
        try:
            key = IDEMPOTENCY_KEY.validate_python(key)
        except ValidationError as exc:
            invalid = located(exc, "header", "Idempotency-Key")
    body, wrong = CREATE_BODY.validate(read)
    if body is None or invalid:
        raise RequestValidationError(invalid + wrong)
    created = await create_for_site(ctx, site, body, key)
    rendered = OrderOut.json_of(created.order, ctx.public_url)
    return RawResponse(
        rendered,
        201 if created.created else 200,
        [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(rendered)).encode()),
            (b"location", f"/v1/orders/{created.order.id}".encode()),
        ],
    )


def add_create(router: APIRouter) -> None:
    """Add ``POST /v1/orders`` to ``router``, the app's own: FastAPI matches the routes of an
    included router twice (once to pick the router, once in it), the busiest route once."""
    router.add_api_route(
        "/v1/orders",
        create_order,
        methods=["POST"],
        route_class_override=RequestRoute,
        tags=["orders"],
        status_code=201,
        response_model=OrderOut,
        responses=errors(
            400, 401, 409, 413, 422, 503, also={200: {"model": OrderOut, "description": REPLAY}}
        ),
        summary="Create an order",
        openapi_extra=CREATE_DOCUMENT,
    )


async def create_for_site(
    ctx: ApiContext, site: str, body: OrderCreate, idempotency_key: str | None
) -> Created:
    """What POST /v1/orders does once the request is read: the one function that creates an
    order for a site. Raises HttpError or domain errors."""
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
    created = await ctx.orders.create(
        new,
        order_id=order_id,
        default_return_url=ctx.status_page(order_id),
        actor=f"site:{site}"[:200],
    )
    if created.created:
        counter = _CREATED.get(created.order.adapter)
        if counter is None:
            counter = _CREATED[created.order.adapter] = metrics.ORDERS_CREATED.labels(
                created.order.adapter
            )
        counter.inc()
    return created


@router.get(
    "/v1/orders/{order_id}",
    response_model=OrderOut,
    responses=errors(401, 404, 422, 503),
    dependencies=STRICT,
    summary="An order with its status changes",
)
async def get_order(order_id: UUID, site: Site, ctx: Context) -> OrderOut:
    order = await ctx.orders.get(order_id, site=site)
    return OrderOut.of(order, ctx.public_url, await ctx.orders.events(order.id))


@router.get(
    "/v1/orders",
    response_model=OrderPage,
    responses=errors(401, 422, 503),
    dependencies=STRICT,
    summary="This site's orders, newest first",
)
async def list_orders(
    *,
    site: Site,
    ctx: Context,
    status: OrderStatus | None = None,
    user_id: Annotated[Text | None, Query(min_length=1, max_length=LIMITS["user_id"])] = None,
    adapter: Annotated[Text | None, Query(min_length=1, max_length=LIMITS["adapter"])] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[OrderCursor | None, Query(min_length=1, max_length=200)] = None,
) -> OrderPage:
    page = await ctx.orders.list_orders(
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
    dependencies=STRICT,
    summary="Cancel an unpaid order",
)
async def cancel_order(order_id: UUID, site: Site, ctx: Context) -> OrderOut:
    """Cancels a ``new`` or ``awaiting_payment`` order (again: no change); 409 otherwise."""
    try:
        order = await ctx.orders.cancel(order_id, site=site, actor=f"site:{site}"[:200])
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
    dependencies=STRICT,
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
