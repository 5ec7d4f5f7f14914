"""``/v1/wallets/{user_id}``: a site's view of its users' balances, history, and debits.

The handlers are async over :class:`~dispatcher.billing.wallet.Wallets` on the API's async pool
(the one its order repository runs on), so no request holds a thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel, Field

from dispatcher.api.auth import Context, Site
from dispatcher.api.context import ApiContext
from dispatcher.api.errors import HttpError
from dispatcher.api.responses import errors
from dispatcher.api.schemas import (
    CURRENCIES,
    JSON_SAFE_INTEGER,
    NonBlank,
    Published,
    Strict,
    Text,
    WholeNumber,
)
from dispatcher.api.strict import no_unknown_query
from dispatcher.billing.wallet import (
    CURSOR_PATTERN,
    MAX_PAGE,
    POINTS,
    Balance,
    Entry,
    Wallets,
    money,
)
from orders.model import LIMITS

router = APIRouter(tags=["wallets"], dependencies=[Depends(no_unknown_query)])

UserId = Annotated[NonBlank, Path(min_length=1, max_length=LIMITS["user_id"])]
CURRENCY = r"^([A-Z]{3}|points)$"
# An ISO 4217 code or "points": the pattern is checked here, the code by the ledger.
WalletCurrency = Annotated[str, Published({"enum": [*CURRENCIES, POINTS]})]
# Checked by the ledger (invalid_cursor); every string of the pattern is one it takes.
EntryCursor = Annotated[str, Published({"pattern": CURSOR_PATTERN})]


def wallets(ctx: ApiContext) -> Wallets:
    """The ledger on the API's async pool (opened on the server's loop at start-up)."""
    return Wallets(ctx.orders.pool)


class BalanceOut(BaseModel):
    currency: str = Field(description="ISO 4217 code, or 'points' for the loyalty balance")
    amount: int = Field(
        description="The balance, in minor units (whole points): what holds do not keep; below "
        "zero only when a refund overdrew the wallet (see overdrawn)"
    )
    formatted: str
    updated_at: datetime
    available: int = Field(
        description="What can be spent or withdrawn now, in minor units: the balance, or 0 while "
        "it is below zero"
    )
    held: int = Field(
        description="Set aside by holds, in minor units: withdrawals not yet paid out (amount and "
        "fee) and refunds being sent; not in the balance, and nothing can spend it"
    )
    overdrawn: bool = Field(
        description="True while a refund has left the balance below zero: debits and withdrawals "
        "are refused, and credits pay the debt back first"
    )

    @classmethod
    def of(cls, balance: Balance) -> BalanceOut:
        return cls(
            currency=balance.currency,
            amount=balance.money.amount,
            formatted=str(balance.money),
            updated_at=balance.updated_at,
            available=max(balance.money.amount, 0),
            held=balance.held.amount,
            overdrawn=balance.overdrawn,
        )


class WalletOut(BaseModel):
    user_id: str
    balances: list[BalanceOut]


class EntryOut(BaseModel):
    id: int
    amount: int = Field(description="Signed, in minor units: negative for debits and refunds")
    currency: str
    balance_after: int
    kind: str
    order_id: UUID | None
    key: str | None
    description: str
    created_at: datetime

    @classmethod
    def of(cls, entry: Entry) -> EntryOut:
        return cls(
            id=entry.id,
            amount=entry.money.amount,
            currency=entry.money.currency,
            balance_after=entry.balance_after.amount,
            kind=str(entry.kind),
            order_id=entry.order_id,
            key=entry.key,
            description=entry.description,
            created_at=entry.created_at,
        )


class EntryPageOut(BaseModel):
    items: list[EntryOut]
    next_cursor: str | None


class DebitIn(Strict):
    amount: WholeNumber = Field(
        gt=0, le=JSON_SAFE_INTEGER, description="In minor units (whole points)"
    )
    currency: WalletCurrency = Field(pattern=CURRENCY)
    description: Text = Field(default="", max_length=1000)


@router.get(
    "/v1/wallets/{user_id}",
    response_model=WalletOut,
    responses=errors(401, 422, 503),
    summary="A user's balances",
)
async def get_wallet(user_id: UserId, site: Site, ctx: Context) -> WalletOut:
    balances = await wallets(ctx).balances(site, user_id)
    return WalletOut(user_id=user_id, balances=[BalanceOut.of(b) for b in balances])


@router.get(
    "/v1/wallets/{user_id}/entries",
    response_model=EntryPageOut,
    responses=errors(401, 422, 503),
    summary="A user's ledger entries, newest first",
)
async def list_entries(
    *,
    user_id: UserId,
    site: Site,
    ctx: Context,
    currency: Annotated[WalletCurrency | None, Query(pattern=CURRENCY)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[EntryCursor | None, Query(min_length=1, max_length=200)] = None,
) -> EntryPageOut:
    page = await wallets(ctx).history(site, user_id, currency=currency, limit=limit, cursor=cursor)
    return EntryPageOut(items=[EntryOut.of(e) for e in page.items], next_cursor=page.next_cursor)


@router.post(
    "/v1/wallets/{user_id}/debit",
    status_code=201,
    response_model=EntryOut,
    responses=errors(
        400,
        401,
        404,
        409,
        413,
        422,
        503,
        also={200: {"model": EntryOut, "description": "A replay of an earlier debit"}},
    ),
    summary="Take money from a user's balance (never below zero)",
)
async def debit(
    *,
    user_id: UserId,
    body: DebitIn,
    site: Site,
    ctx: Context,
    response: Response,
    idempotency_key: Annotated[
        NonBlank,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Required: the same key and body return the same entry",
        ),
    ],
) -> EntryOut:
    """201 with the entry; 200 for a replay; 409 ``insufficient_funds`` rather than overdraw."""
    if not idempotency_key.strip():
        raise HttpError(422, "invalid_field", "must not be blank", field="Idempotency-Key")
    entry = await wallets(ctx).debit(
        site,
        user_id,
        money(body.amount, body.currency),
        key=idempotency_key,
        description=body.description,
    )
    if entry.replayed:
        response.status_code = 200
    return EntryOut.of(entry)
