"""The sandbox's wire protocol, shared by its server and its adapter.

Statuses, currencies, header names, the automatic-outcome scenarios and the webhook signature
live here so that both sides agree by construction. No I/O, no web framework imports: the adapter
loads this module inside the dispatcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# The sandbox signs its webhooks as paydispatch signs its own billing webhooks (``t=...,v1=...``,
# HMAC-SHA256 of "<t>.<body>"): one implementation, re-exported for the server and the adapter.
from orders.signing import SignatureHeader as SignatureHeader  # noqa: PLC0414
from orders.signing import signature_header as signature_header  # noqa: PLC0414

API_PREFIX = "/api/v1"
DEFAULT_API_URL = "http://127.0.0.1:8765"
# The sandbox is a local test tool: these well-known defaults are not credentials of anything.
DEFAULT_API_KEY = "sandbox-key"
DEFAULT_WEBHOOK_SECRET = "sandbox-webhook-secret"  # noqa: S105

IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "Sandbox-Signature"
WEBHOOK_EVENT_TYPE = "invoice.updated"
# Refunds and payouts (issue #14): a refund's webhook carries the refund and its invoice.
REFUND_EVENT_TYPE = "refund.updated"
PAYOUT_EVENT_TYPE = "payout.updated"

CURRENCIES: frozenset[str] = frozenset({"USD", "EUR", "GBP", "RUB", "JPY"})


class InvoiceStatus(StrEnum):
    """An invoice's status as the sandbox reports it."""

    PENDING = "pending"
    PAID = "paid"
    DECLINED = "declined"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class TransferStatus(StrEnum):
    """A refund's or a payout's status as the sandbox reports it."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ScenarioKind(StrEnum):
    """An automatic outcome, so demos and tests run without a person clicking."""

    PAY_AFTER = "pay_after"  # paid N seconds after creation (unless it expired first)
    DECLINE_AFTER = "decline_after"  # declined N seconds after creation
    NEVER = "never"  # nobody pays: it expires
    PAY_LATE = "pay_late"  # paid N seconds after its deadline: a late payment


@dataclass(frozen=True, slots=True)
class Scenario:
    """A create body's ``scenario`` field: ``"pay_after:2"``, ``"never"``, ``"pay_late:1.5"``."""

    kind: ScenarioKind
    seconds: float = 0.0

    @classmethod
    def parse(cls, value: str) -> Scenario:
        """Parse ``kind`` or ``kind:seconds``; ValueError names what is wrong."""
        kind_text, _, seconds_text = value.strip().partition(":")
        try:
            kind = ScenarioKind(kind_text)
        except ValueError:
            known = ", ".join(k.value for k in ScenarioKind)
            raise ValueError(f"unknown scenario {kind_text!r} (known: {known})") from None
        if kind is ScenarioKind.NEVER:
            if seconds_text:
                raise ValueError("scenario 'never' takes no seconds")
            return cls(kind)
        try:
            seconds = float(seconds_text or "0")
        except ValueError:
            raise ValueError(f"scenario seconds {seconds_text!r} is not a number") from None
        if not 0 <= seconds <= 86_400:
            raise ValueError(f"scenario seconds must be between 0 and 86400, got {seconds}")
        return cls(kind, seconds)

    def __str__(self) -> str:
        return (
            self.kind.value if self.kind is ScenarioKind.NEVER else f"{self.kind}:{self.seconds:g}"
        )
