"""The API's JSON bodies as pydantic models; they are what /openapi.json publishes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    TypeAdapter,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from typing_extensions import TypedDict

from dispatcher.refunds import RefundStatus, refund_status
from orders.model import (
    LIMITS,
    MAX_EXPIRY,
    MIN_EXPIRY,
    RETURN_URL_PATTERN,
    Order,
    OrderEvent,
    Transfer,
    TransferStatus,
    storable_problem,
    text_problem,
)
from orders.money import CURRENCY_EXPONENTS
from orders.repository import CURSOR_PATTERN as ORDER_CURSOR_PATTERN
from orders.status import OrderStatus


def _clean(value: str) -> str:
    """Text that may be stored, shown on a page and sent on: no control characters (CR/LF,
    NUL, ...) and valid UTF-8 (no lone surrogates)."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _storable(value: str) -> str:
    """Text PostgreSQL can store inside JSON: no NUL, valid UTF-8. Metadata is only ever sent
    on as JSON, which escapes control characters, so those are allowed there."""
    problem = storable_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _clean_json(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError("is nested too deeply (32 levels at most)")
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _clean_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _clean_json(item, depth + 1)
    return value


def _return_url(value: str) -> str:
    if re.fullmatch(RETURN_URL_PATTERN, value) is None:
        raise ValueError("must be an absolute http(s) URL without spaces or control characters")
    return value


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _whole(value: Any) -> Any:
    """JSON has one kind of number, and JSON Schema counts ``1999.0`` as the integer 1999: take
    it so. A fraction stays refused, and so does a float past 2**53, which may no longer be
    the integer that was written."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= JSON_SAFE_INTEGER:
        return int(value)
    return value


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: typing hashes it
class Published:
    """JSON Schema keywords a field's validators enforce (with readable messages), added to
    what /openapi.json publishes for it, so the schema says what the API accepts."""

    keywords: Mapping[str, Any]

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(self.keywords)
        return schema


# Text without control characters, and with something besides spaces (ECMA-262 patterns, as
# JSON Schema has them; the validators above hold the same rule).
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f]"
TEXT_PATTERN = rf"^{_PRINTABLE}*$"
NONBLANK_PATTERN = rf"^{_PRINTABLE}*[^\s\x00-\x1f\x7f-\x9f]{_PRINTABLE}*$"
# Integers every JSON parser reads exactly (JavaScript's Number.MAX_SAFE_INTEGER).
JSON_SAFE_INTEGER = 2**53 - 1
CURRENCIES = sorted(CURRENCY_EXPONENTS)

Text = Annotated[str, AfterValidator(_clean), Published({"pattern": TEXT_PATTERN})]
NonBlank = Annotated[
    str, AfterValidator(_clean), AfterValidator(_nonblank), Published({"pattern": NONBLANK_PATTERN})
]
# Checked here with a readable message; the schema publishes the same pattern.
ReturnUrl = Annotated[
    str,
    AfterValidator(_clean),
    AfterValidator(_return_url),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": LIMITS["return_url"],
         "pattern": RETURN_URL_PATTERN}
    ),
]  # fmt: skip
WholeNumber = Annotated[int, BeforeValidator(_whole)]
# An active ISO 4217 code: the pattern is checked here, the code by orders.money (which
# answers unknown_currency); the schema lists the codes.
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$"), Published({"enum": CURRENCIES})]
# Checked by the listing (invalid_cursor); every string of the pattern is one it takes.
OrderCursor = Annotated[str, Published({"pattern": ORDER_CURSOR_PATTERN})]
# Metadata: any JSON object, nested at most 32 deep, with no NUL in its text (PostgreSQL's jsonb
# cannot hold one); the schema says so with a recursive definition (the depth it cannot say).
_NO_NUL = r"^[^\x00]*$"
JSON_WITHOUT_NUL: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": _NO_NUL},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": _NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ]
}
# (published by dispatcher.api.openapi, which names the definition JsonValue)
METADATA_SCHEMA: dict[str, Any] = {
    "propertyNames": {"pattern": _NO_NUL},
    "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
}
Metadata = Annotated[dict[str, Any], AfterValidator(_clean_json)]


class Strict(BaseModel):
    """Unknown fields are refused; numbers are never strings and amounts never floats."""

    model_config = ConfigDict(extra="forbid", strict=True)


class OrderCreate(Strict):
    """A new payment order. Send the amount in minor units (cents; yen for JPY)."""

    user_id: NonBlank = Field(min_length=1, max_length=LIMITS["user_id"], examples=["42"])
    amount: WholeNumber = Field(gt=0, le=JSON_SAFE_INTEGER, examples=[1999])
    currency: Currency = Field(examples=["USD"])
    adapter: NonBlank = Field(min_length=1, max_length=LIMITS["adapter"], examples=["sandbox"])
    site_ref: NonBlank | None = Field(
        default=None,
        min_length=1,
        max_length=LIMITS["site_ref"],
        description="Your own order number; unique per site, makes retries safe",
    )
    description: Text = Field(default="", max_length=LIMITS["description"])
    return_url: ReturnUrl | None = Field(
        default=None,
        max_length=LIMITS["return_url"],
        description="Where the buyer goes after paying; default: the order's status page",
    )
    metadata: Metadata = Field(default_factory=dict)
    expires_in: (
        Annotated[
            int,
            Field(ge=int(MIN_EXPIRY.total_seconds()), le=int(MAX_EXPIRY.total_seconds())),
            BeforeValidator(_whole),
        ]
        | None
    ) = Field(
        default=None, description="Seconds until the order expires; default: the payment system's"
    )


class OrderEventOut(BaseModel):
    from_status: OrderStatus | None
    to_status: OrderStatus
    at: datetime
    actor: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: OrderEvent) -> OrderEventOut:
        return cls(
            from_status=event.from_status,
            to_status=event.to_status,
            at=event.at,
            actor=event.actor,
            detail=dict(event.detail),
        )


class OrderOut(BaseModel):
    id: UUID
    number: int
    site_ref: str | None
    user_id: str
    amount: int
    currency: str
    adapter: str
    description: str
    return_url: str | None
    metadata: dict[str, Any]
    status: OrderStatus
    psp_id: str | None
    pay_url: str | None
    status_url: str = Field(description="The buyer's status page: send the buyer here")
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    last_error: str | None
    refunded_amount: int = Field(
        description="What its succeeded refunds gave back, in minor units like `amount`"
    )
    refund_status: RefundStatus = Field(
        description="Derived from its refunds: the order's `status` stays `paid` (docs/api.md)"
    )
    events: list[OrderEventOut] | None = Field(
        default=None, description="Status changes, oldest first (GET /v1/orders/{id} only)"
    )

    @classmethod
    def of(cls, order: Order, public_url: str, events: list[OrderEvent] | None = None) -> OrderOut:
        # A stored row is valid already: construct without validating it again.
        return cls.model_construct(**_order_fields(order, public_url, events))

    @staticmethod
    def json_of(order: Order, public_url: str) -> bytes:
        """``of(order, public_url).model_dump_json()``, without constructing the model: the
        create renders every order it makes, and ``model_construct`` cost more than the
        rendering itself."""
        return _ORDER_JSON.dump_json(_order_fields(order, public_url, None))


def _order_fields(order: Order, public_url: str, events: list[OrderEvent] | None) -> dict[str, Any]:
    return {
        "id": order.id,
        "number": order.number,
        "site_ref": order.site_ref,
        "user_id": order.user_id,
        "amount": order.money.amount,
        "currency": order.money.currency,
        "adapter": order.adapter,
        "description": order.description,
        "return_url": order.return_url,
        "metadata": dict(order.metadata),
        "status": order.status,
        "psp_id": order.psp_id,
        "pay_url": order.pay_url,
        "status_url": f"{public_url}/pay/{order.id}",
        "expires_at": order.expires_at,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
        "paid_at": order.paid_at,
        "last_error": order.last_error,
        "refunded_amount": order.refunded_amount,
        "refund_status": refund_status(order),
        "events": None if events is None else [OrderEventOut.of(e) for e in events],
    }


# OrderOut's fields as a typed dict: serialized by the same types, with no model to build.
_ORDER_JSON: TypeAdapter[dict[str, Any]] = TypeAdapter(
    TypedDict(  # type: ignore[operator]  # a functional TypedDict of the model's own fields
        "OrderOutJson", {name: field.annotation for name, field in OrderOut.model_fields.items()}
    )
)


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


# A refund's amount as people write it, in major units ("12.50"): a positive decimal number.
# Whether it has more decimals than the order's currency allows is checked against the order.
REFUND_AMOUNT_PATTERN = r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)$"


def _refund_amount(value: str) -> str:
    if re.fullmatch(REFUND_AMOUNT_PATTERN, value) is None:
        raise ValueError('must be a positive decimal number of major units, e.g. "12.50"')
    return value


RefundAmount = Annotated[
    str, AfterValidator(_refund_amount), Published({"pattern": REFUND_AMOUNT_PATTERN})
]


class RefundCreate(Strict):
    """A refund of (part of) a paid order. The amount is in major units, as a decimal string
    with at most the currency's decimals; without it, everything not refunded yet."""

    amount: RefundAmount | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        examples=["12.50"],
        description="Major units of the order's currency; default: all that is left",
    )
    reason: NonBlank = Field(
        min_length=1,
        max_length=LIMITS["description"],
        examples=["returned by the buyer"],
        description="Why; recorded with the refund and in the order's events",
    )


class RefundOut(BaseModel):
    id: UUID
    order_id: UUID
    amount: int = Field(description="In minor units, like the order's amount")
    currency: str
    status: TransferStatus = Field(
        description="requested, submitting, pending: under way; succeeded or failed: final; "
        "needs_review: may have been sent, a person decides"
    )
    origin: str = Field(description="Who asked: site, operator, or psp (the payment system)")
    reason: str
    requested_by: str
    psp_refund_id: str | None = Field(description="The payment system's id, once known")
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None

    @classmethod
    def of(cls, refund: Transfer) -> RefundOut:
        assert refund.order_id is not None  # a refund always names its order
        return cls(
            id=refund.id,
            order_id=refund.order_id,
            amount=refund.money.amount,
            currency=refund.money.currency,
            status=refund.status,
            origin=refund.origin,
            reason=refund.reason,
            requested_by=refund.requested_by,
            psp_refund_id=refund.psp_transfer_id,
            last_error=refund.last_error,
            created_at=refund.created_at,
            updated_at=refund.updated_at,
            settled_at=refund.settled_at,
        )


class RefundList(BaseModel):
    items: list[RefundOut] = Field(description="The order's refunds, oldest first")


class AdapterOut(BaseModel):
    name: str
    currencies: list[str] = Field(description="Empty: any currency")
    cancel: bool
    notifications: bool
    signed_notifications: bool
    default_expiry_seconds: int


class AdapterList(BaseModel):
    items: list[AdapterOut]


BuyerState = Literal[
    "preparing", "ready", "paid", "declined", "expired", "cancelled", "review", "failed"
]


class PayStatus(BaseModel):
    """What the buyer's status page shows, and nothing more."""

    state: BuyerState
    amount: str = Field(description="Formatted for people, e.g. '19.99 USD'")
    description: str
    pay_url: str | None = Field(description="Where to pay, once the invoice is ready")
    return_url: str | None = Field(description="Back to the shop")
    final: bool
    retry_after_ms: int = Field(description="When to ask again")


class FieldError(BaseModel):
    code: str
    field: str | None
    message: str


class ErrorBody(BaseModel):
    code: str = Field(examples=["unknown_currency"])
    message: str
    field: str | None = None
    details: list[FieldError] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "ready", "unready"]
    checks: dict[str, str] = Field(default_factory=dict)
