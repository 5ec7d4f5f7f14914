"""The API's JSON bodies as pydantic models; they are what /openapi.json publishes."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from orders.model import (
    LIMITS,
    MAX_EXPIRY,
    MIN_EXPIRY,
    RETURN_URL_PATTERN,
    Order,
    OrderEvent,
    text_problem,
)
from orders.money import MAX_AMOUNT
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
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
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


Text = Annotated[str, AfterValidator(_clean)]
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
Metadata = Annotated[dict[str, Any], AfterValidator(_clean_json)]


class Strict(BaseModel):
    """Unknown fields are refused; numbers are never strings and amounts never floats."""

    model_config = ConfigDict(extra="forbid", strict=True)


class OrderCreate(Strict):
    """A new payment order. Send the amount in minor units (cents; yen for JPY)."""

    user_id: Text = Field(min_length=1, max_length=LIMITS["user_id"], examples=["42"])
    amount: int = Field(gt=0, le=MAX_AMOUNT, examples=[1999])
    currency: str = Field(pattern=r"^[A-Z]{3}$", examples=["USD"])
    adapter: Text = Field(min_length=1, max_length=LIMITS["adapter"], examples=["sandbox"])
    site_ref: Text | None = Field(
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
    expires_in: int | None = Field(
        default=None,
        ge=int(MIN_EXPIRY.total_seconds()),
        le=int(MAX_EXPIRY.total_seconds()),
        description="Seconds until the order expires; default: the payment system's",
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
    events: list[OrderEventOut] | None = Field(
        default=None, description="Status changes, oldest first (GET /v1/orders/{id} only)"
    )

    @classmethod
    def of(cls, order: Order, public_url: str, events: list[OrderEvent] | None = None) -> OrderOut:
        # A stored row is valid already: construct without validating it again.
        return cls.model_construct(
            id=order.id,
            number=order.number,
            site_ref=order.site_ref,
            user_id=order.user_id,
            amount=order.money.amount,
            currency=order.money.currency,
            adapter=order.adapter,
            description=order.description,
            return_url=order.return_url,
            metadata=dict(order.metadata),
            status=order.status,
            psp_id=order.psp_id,
            pay_url=order.pay_url,
            status_url=f"{public_url}/pay/{order.id}",
            expires_at=order.expires_at,
            created_at=order.created_at,
            updated_at=order.updated_at,
            paid_at=order.paid_at,
            last_error=order.last_error,
            events=None if events is None else [OrderEventOut.of(e) for e in events],
        )


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


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
