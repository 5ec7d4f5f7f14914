"""The sandbox's refunds and payouts (issue #14): validated requests, records, one book each.

A refund gives back (part of) a paid invoice; a payout sends money to an account. Both are
created under an idempotency key (the same key and body answer the first record; another body
is refused), start ``pending`` and end ``succeeded`` or ``failed``. The refund book never lets
the pending and succeeded refunds of one invoice exceed what was paid: the check and the new
record happen under one lock.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from adapters.sandbox.protocol import TransferStatus
from adapters.sandbox.store import SandboxApiError, optional_text, optional_url, required_text

T = TransferStatus


def _amount(body: Mapping[str, Any]) -> int:
    amount = body.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount < 2**63:
        raise SandboxApiError(
            400, "invalid_field", "amount: must be a positive integer (minor units)"
        )
    return amount


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A validated ``POST /api/v1/refunds`` or ``/api/v1/payouts`` body.

    ``reference`` is the merchant's own id for the refund or payout: the stats count records per
    reference, and ``GET ...?reference=`` finds them by it.
    """

    kind: str  # "refund" or "payout"
    reference: str
    amount: int
    currency: str
    invoice_id: str | None = None  # refunds
    account: str | None = None  # payouts
    description: str = ""
    notify_url: str | None = None  # payouts; a refund notifies the invoice's notify_url

    @classmethod
    def parse_refund(cls, body: Any) -> TransferRequest:
        if not isinstance(body, Mapping):
            raise SandboxApiError(400, "invalid_body", "the body must be a JSON object")
        return cls(
            kind="refund",
            reference=required_text(body, "reference", limit=128),
            amount=_amount(body),
            currency=required_text(body, "currency", limit=3),
            invoice_id=required_text(body, "invoice_id", limit=128),
            description=optional_text(body, "reason", limit=1000) or "",
        )

    @classmethod
    def parse_payout(cls, body: Any, currencies: frozenset[str]) -> TransferRequest:
        if not isinstance(body, Mapping):
            raise SandboxApiError(400, "invalid_body", "the body must be a JSON object")
        currency = required_text(body, "currency", limit=3)
        if currency not in currencies:
            known = ", ".join(sorted(currencies))
            raise SandboxApiError(
                422, "unsupported_currency", f"currency {currency!r}: use one of {known}"
            )
        return cls(
            kind="payout",
            reference=required_text(body, "reference", limit=128),
            amount=_amount(body),
            currency=currency,
            account=required_text(body, "account", limit=128),
            description=optional_text(body, "description", limit=1000) or "",
            notify_url=optional_url(body, "notify_url"),
        )

    def fingerprint(self) -> str:
        """Hash of the request, to tell an honest retry from a reused idempotency key."""
        fields = [
            self.kind,
            self.reference,
            self.amount,
            self.currency,
            self.invoice_id,
            self.account,
            self.description,
            self.notify_url,
        ]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """One refund or payout as stored."""

    id: str
    idempotency_key: str
    fingerprint: str
    request: TransferRequest
    created_at: datetime
    page_url: str | None = None  # payouts: the page that completes or fails them
    status: TransferStatus = T.PENDING
    settled_at: datetime | None = None
    failure_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.request
        body: dict[str, Any] = {
            "id": self.id,
            "object": r.kind,
            "status": self.status.value,
            "amount": r.amount,
            "currency": r.currency,
            "reference": r.reference,
            "created_at": self.created_at.isoformat(),
            "settled_at": None if self.settled_at is None else self.settled_at.isoformat(),
            "failure_reason": self.failure_reason,
        }
        if r.kind == "refund":
            body |= {"invoice_id": r.invoice_id, "reason": r.description}
        else:
            body |= {"account": r.account, "description": r.description}
            body["page_url"] = self.page_url
        return body


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    record: TransferRecord
    changed: bool


class TransferBook:
    """The refunds (or the payouts) of one sandbox; every method is one step under a lock."""

    def __init__(self, kind: str, prefix: str) -> None:
        self.kind = kind
        self._prefix = prefix
        self._lock = threading.Lock()
        self._by_id: dict[str, TransferRecord] = {}
        self._by_key: dict[str, str] = {}
        self._per_reference: Counter[str] = Counter()

    def create(
        self,
        key: str,
        request: TransferRequest,
        now: datetime,
        admit: Callable[[int], None] | None = None,
        page_url_base: str | None = None,
    ) -> TransferOutcome:
        """The record for ``key``: the existing one for an identical request, or a new one.

        ``admit`` sees what the invoice's pending and succeeded refunds already hold and raises
        :class:`SandboxApiError` to refuse; it runs under the lock, before the record is made.
        """
        fingerprint = request.fingerprint()
        with self._lock:
            existing_id = self._by_key.get(key)
            if existing_id is not None:
                existing = self._by_id[existing_id]
                if existing.fingerprint != fingerprint:
                    raise SandboxApiError(
                        422,
                        "idempotency_key_reused",
                        f"idempotency key {key!r} was used with a different request body",
                    )
                return TransferOutcome(existing, changed=False)
            if admit is not None:
                admit(self._held(request.invoice_id))
            record_id = f"{self._prefix}_{secrets.token_hex(10)}"
            page_url = None
            if page_url_base is not None:
                page_url = f"{page_url_base.rstrip('/')}/{self.kind}s/{record_id}"
            record = TransferRecord(
                id=record_id,
                idempotency_key=key,
                fingerprint=fingerprint,
                request=request,
                created_at=now,
                page_url=page_url,
            )
            self._by_id[record_id] = record
            self._by_key[key] = record_id
            self._per_reference[request.reference] += 1
            return TransferOutcome(record, changed=True)

    def _held(self, invoice_id: str | None) -> int:
        """The amount of an invoice's refunds that are not failed (lock held)."""
        return sum(
            r.request.amount
            for r in self._by_id.values()
            if r.request.invoice_id == invoice_id and r.status is not T.FAILED
        )

    def get(self, record_id: str) -> TransferRecord:
        with self._lock:
            try:
                return self._by_id[record_id]
            except KeyError:
                raise SandboxApiError(404, "not_found", f"no {self.kind} {record_id!r}") from None

    def find(self, reference: str) -> list[TransferRecord]:
        """The records made for the merchant's ``reference``, oldest first."""
        with self._lock:
            return [r for r in self._by_id.values() if r.request.reference == reference]

    def settle(
        self, record_id: str, status: TransferStatus, now: datetime, reason: str | None = None
    ) -> TransferOutcome:
        """Move a pending record to ``status``; settling again to the same status is a no-op,
        to the other one a 409 ``not_allowed``."""
        with self._lock:
            record = self._by_id.get(record_id)
            if record is None:
                raise SandboxApiError(404, "not_found", f"no {self.kind} {record_id!r}")
            if record.status is status:
                return TransferOutcome(record, changed=False)
            if record.status is not T.PENDING:
                error = SandboxApiError(
                    409, "not_allowed", f"the {self.kind} is {record.status}, not pending"
                )
                raise error
            updated = replace(record, status=status, settled_at=now, failure_reason=reason)
            self._by_id[record_id] = updated
            return TransferOutcome(updated, changed=True)

    def stats(self) -> dict[str, Any]:
        name = self.kind
        with self._lock:
            per_key = dict.fromkeys(self._by_key, 1)
            per_reference = dict(self._per_reference)
            statuses = Counter(r.status.value for r in self._by_id.values())
        return {
            f"{name}s": len(per_key),
            f"{name}s_per_key": per_key,
            f"{name}s_per_reference": per_reference,
            f"max_{name}s_per_reference": max(per_reference.values(), default=0),
            f"{name}_statuses": dict(statuses),
        }
