"""``/v1/wallets/{user_id}/withdrawals``: a site's users take balance out (issue #14).

A withdrawal holds its amount and fee in the wallet at once and is paid out through the
configured payment system (``PAYDISPATCH_WITHDRAWALS_*``); see
:mod:`dispatcher.billing.withdrawals`. Refusals are 409 ``withdrawal_refused`` with the reason
(below the minimum, over the daily limit, insufficient funds, no payout adapter): the request
was well formed, the wallet or the settings do not allow it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel, Field, StringConstraints

from dispatcher.api.auth import Context, Site
from dispatcher.api.context import ApiContext
from dispatcher.api.errors import HttpError
from dispatcher.api.responses import errors
from dispatcher.api.schemas import (
    JSON_SAFE_INTEGER,
    NONBLANK_PATTERN,
    Currency,
    NonBlank,
    Published,
    Strict,
    WholeNumber,
)
from dispatcher.api.strict import no_unknown_query
from dispatcher.billing.withdrawals import (
    MAX_PAGE,
    Withdrawal,
    WithdrawalConflict,
    WithdrawalNotFound,
    WithdrawalRefused,
    WithdrawalStatus,
)
from orders.model import LIMITS
from orders.money import Money

router = APIRouter(tags=["withdrawals"], dependencies=[Depends(no_unknown_query)])

T = TypeVar("T")

UserId = Annotated[NonBlank, Path(min_length=1, max_length=LIMITS["user_id"])]
REPLAY = "A replay: the withdrawal an earlier request with the same key and body made"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$"
WithdrawalCursor = Annotated[str, Published({"pattern": UUID_PATTERN})]

# Where the payment system pays to, in its own terms: the sandbox {"account": ...}, YooKassa
# {"payout_token": ...} or {"type": "yoo_money", "account_number": ...}. Flat text, as the
# adapters' contract has it; the adapter checks the fields when the payout is built.
DestinationKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
DestinationValue = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512, pattern=NONBLANK_PATTERN),
]


class WithdrawalIn(Strict):
    amount: WholeNumber = Field(
        gt=0, le=JSON_SAFE_INTEGER, description="What the user receives, in minor units"
    )
    currency: Currency
    destination: dict[DestinationKey, DestinationValue] = Field(
        min_length=1,
        max_length=20,
        description="Where the payment system pays to, in its terms (the sandbox: "
        '{"account": "..."}; YooKassa: {"payout_token": "..."})',
        # Every key matches the pattern above: say so, as the validation does.
        json_schema_extra={"additionalProperties": False},
    )


class WithdrawalOut(BaseModel):
    id: UUID
    user_id: str
    amount: int = Field(description="What the user receives, in minor units")
    fee: int = Field(description="What is kept, in minor units; held with the amount")
    currency: str
    formatted: str
    status: WithdrawalStatus
    adapter: str
    destination: dict[str, Any]
    transfer_id: UUID | None = Field(description="The payout, once requested")
    reason: str = Field(description="Why it failed or was cancelled")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, withdrawal: Withdrawal) -> WithdrawalOut:
        return cls(
            id=withdrawal.id,
            user_id=withdrawal.user_id,
            amount=withdrawal.money.amount,
            fee=withdrawal.fee.amount,
            currency=withdrawal.money.currency,
            formatted=str(withdrawal.money),
            status=withdrawal.status,
            adapter=withdrawal.adapter,
            destination=dict(withdrawal.destination),
            transfer_id=withdrawal.transfer_id,
            reason=withdrawal.reason,
            created_at=withdrawal.created_at,
            updated_at=withdrawal.updated_at,
        )


class WithdrawalPage(BaseModel):
    items: list[WithdrawalOut]
    next_cursor: str | None


async def answer(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, its withdrawal errors as the API's stable ones."""
    try:
        return await call()
    except WithdrawalRefused as exc:
        raise HttpError(409, "withdrawal_refused", str(exc)) from None
    except WithdrawalNotFound:
        raise HttpError(404, "withdrawal_not_found", "no such withdrawal") from None
    except WithdrawalConflict as exc:
        raise HttpError(409, "withdrawal_conflict", str(exc)) from None


async def _users(ctx: ApiContext, site: str, user_id: str, withdrawal_id: UUID) -> Withdrawal:
    """The withdrawal, if it is this user's (404 otherwise, as for another site's)."""
    withdrawal = await answer(lambda: ctx.withdrawals.get(withdrawal_id, site=site))
    if withdrawal.user_id != user_id:
        raise HttpError(404, "withdrawal_not_found", "no such withdrawal")
    return withdrawal


@router.post(
    "/v1/wallets/{user_id}/withdrawals",
    status_code=201,
    response_model=WithdrawalOut,
    responses=errors(
        400, 401, 409, 413, 422, 503, also={200: {"model": WithdrawalOut, "description": REPLAY}}
    ),
    summary="Withdraw from a user's balance (held at once, then paid out)",
)
async def create_withdrawal(
    *,
    user_id: UserId,
    body: WithdrawalIn,
    site: Site,
    ctx: Context,
    response: Response,
    idempotency_key: Annotated[
        NonBlank,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=LIMITS["idempotency_key"],
            description="Required: the same key and body return the same withdrawal",
        ),
    ],
) -> WithdrawalOut:
    """201 with the withdrawal (``approved``: its payout is on its way, or
    ``awaiting_approval``); 200 for a replay; 409 ``withdrawal_refused`` with the reason (below
    the minimum, over the daily limit, insufficient funds, no payout adapter) or
    ``idempotency_conflict``."""
    money = Money(body.amount, body.currency)
    withdrawal = await answer(
        lambda: ctx.withdrawals.request(
            site, user_id, money, destination=body.destination,
            idempotency_key=idempotency_key, requested_by=f"site:{site}",
        )
    )  # fmt: skip
    if withdrawal.replayed:
        response.status_code = 200
    return WithdrawalOut.of(withdrawal)


@router.get(
    "/v1/wallets/{user_id}/withdrawals",
    response_model=WithdrawalPage,
    responses=errors(401, 422, 503),
    summary="A user's withdrawals, newest first",
)
async def list_withdrawals(
    *,
    user_id: UserId,
    site: Site,
    ctx: Context,
    status: WithdrawalStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[WithdrawalCursor | None, Query(min_length=32, max_length=36)] = None,
) -> WithdrawalPage:
    items, next_cursor = await ctx.withdrawals.list(
        site=site, user_id=user_id, status=status, limit=limit, cursor=cursor
    )
    return WithdrawalPage(items=[WithdrawalOut.of(w) for w in items], next_cursor=next_cursor)


@router.get(
    "/v1/wallets/{user_id}/withdrawals/{withdrawal_id}",
    response_model=WithdrawalOut,
    responses=errors(401, 404, 422, 503),
    summary="One withdrawal",
)
async def get_withdrawal(
    user_id: UserId, withdrawal_id: UUID, site: Site, ctx: Context
) -> WithdrawalOut:
    return WithdrawalOut.of(await _users(ctx, site, user_id, withdrawal_id))


@router.post(
    "/v1/wallets/{user_id}/withdrawals/{withdrawal_id}/cancel",
    response_model=WithdrawalOut,
    responses=errors(401, 404, 409, 422, 503),
    summary="Cancel a withdrawal whose payout was not sent (its hold is released)",
)
async def cancel_withdrawal(
    user_id: UserId, withdrawal_id: UUID, site: Site, ctx: Context
) -> WithdrawalOut:
    """200 with the cancelled withdrawal (cancelling it again answers the same); 409
    ``withdrawal_conflict`` once its payout was sent."""
    await _users(ctx, site, user_id, withdrawal_id)
    withdrawal = await answer(
        lambda: ctx.withdrawals.cancel(withdrawal_id, by=f"site:{site}", site=site)
    )
    return WithdrawalOut.of(withdrawal)
