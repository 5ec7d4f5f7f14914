"""Reading the sandbox's refund and payout answers (issue #14), for :mod:`adapters.sandbox.adapter`.

Pure functions: the record's JSON to a :class:`~adapters.base.RefundReport` or
:class:`~adapters.base.PayoutReport`, and the sandbox's error codes to paydispatch's errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.base import (
    MalformedResponse,
    PayoutReport,
    PayoutState,
    PspRejected,
    PspResponse,
    RefundReport,
    RefundState,
)
from adapters.sandbox.protocol import TransferStatus
from orders.errors import InvalidInput, OutcomeUnknown, TransientError
from orders.money import Money

# A definite "no" to a refund or payout: the money did not move, and the same request never can.
REFUSALS = frozenset(
    {
        "invalid_body",
        "invalid_field",
        "invalid_json",
        "unsupported_currency",
        "not_found",  # the invoice to refund does not exist
        "not_refundable",  # the invoice is not paid (or refunded already)
        "amount_exceeds",  # more than the invoice has left
        "currency_mismatch",
        "refused",  # the refuse fault: the payment system declines
    }
)


class NoSuchTransfer(TransientError):
    """A status read by our reference found no refund or payout (yet).

    Not a refusal: a request still in flight may make one. The dispatcher reads again or, where
    the request carries an idempotency key, re-sends it.
    """


def error_code(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("code"), str):
        return str(error["code"])
    return None


def _body(response: PspResponse) -> Mapping[str, Any]:
    body = response.json()
    if not isinstance(body, Mapping):
        raise MalformedResponse(f"HTTP {response.status_code}: body is not a JSON object")
    return body


def created(response: PspResponse, kind: str, key: str) -> Mapping[str, Any]:
    """The record a refund or payout request made; its refusals translated."""
    if response.status_code in (200, 201):
        return _body(response)
    if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 408, 429):
        try:
            code = error_code(_body(response))
        except MalformedResponse:
            code = None
        if code in REFUSALS:
            raise PspRejected(f"sandbox refused the {kind}: HTTP {response.status_code} {code}")
        if code == "idempotency_key_reused":
            raise OutcomeUnknown(f"sandbox holds another {kind} request under key {key}")
    raise MalformedResponse(f"sandbox {kind} answered HTTP {response.status_code}")


def status_read(response: PspResponse, kind: str, reference: str) -> Mapping[str, Any]:
    """The record a status read answers: by its id, or the one made for our ``reference``."""
    if response.status_code != 200:
        raise MalformedResponse(f"sandbox {kind} status answered HTTP {response.status_code}")
    body = _body(response)
    items = body.get("items")
    if "items" not in body:
        return body
    if not isinstance(items, list):
        raise MalformedResponse(f"sandbox {kind} lookup answered without a list of 'items'")
    found = [i for i in items if isinstance(i, Mapping) and i.get("reference") == reference]
    if not found:
        raise NoSuchTransfer(f"the sandbox has no {kind} under reference {reference} (yet)")
    if len(found) > 1:
        # One reference, one record: two would mean money sent twice; never pick one silently.
        raise OutcomeUnknown(f"the sandbox holds {len(found)} {kind}s under {reference}")
    return found[0]


def _fields(
    record: Mapping[str, Any], kind: str, reference: str | None
) -> tuple[TransferStatus, str, Money, str]:
    raw = record.get("status")
    try:
        status = TransferStatus(str(raw))
    except ValueError:
        raise MalformedResponse(f"unknown {kind} status {str(raw)[:40]!r}") from None
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise MalformedResponse(f"{kind} has no 'id'")
    if reference is not None and record.get("reference") != reference:
        raise MalformedResponse(f"{kind} {record_id} is not ours (reference {reference})")
    amount, currency = record.get("amount"), record.get("currency")
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        raise MalformedResponse(f"{kind} has no integer 'amount' and string 'currency'")
    try:
        money = Money(amount, currency)
    except InvalidInput as exc:
        raise MalformedResponse(f"{kind} reports unusable money: {exc}") from None
    reason = record.get("failure_reason")
    return status, record_id, money, reason if isinstance(reason, str) else ""


def refund_report(record: Mapping[str, Any], reference: str | None) -> RefundReport:
    """The refund ``record`` as a report; ``reference`` (ours) must match unless None."""
    status, record_id, money, reason = _fields(record, "refund", reference)
    return RefundReport(
        state=RefundState(status.value),
        psp_refund_id=record_id,
        money=money,
        raw_status=status.value,
        reason=reason,
    )


def payout_report(record: Mapping[str, Any], reference: str | None) -> PayoutReport:
    status, record_id, money, reason = _fields(record, "payout", reference)
    return PayoutReport(
        state=PayoutState(status.value),
        psp_payout_id=record_id,
        money=money,
        raw_status=status.value,
        reason=reason,
    )
