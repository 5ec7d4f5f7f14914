"""The sandbox's invoices in memory: validated create requests, records, status moves.

Every method is one synchronous step under a lock, so the store is consistent whether it is called
from the server's event loop or (in embedding code and benchmarks) from another thread.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from adapters.sandbox.protocol import InvoiceStatus, Scenario

S = InvoiceStatus


class SandboxApiError(Exception):
    """An answer other than success, with the HTTP status and a stable error code.

    The sandbox payment system's own error: outside paydispatch's error tree on purpose, since
    paydispatch only ever sees the HTTP answer it becomes.
    """

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.invoice: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": {"code": self.code, "message": self.message}}
        if self.invoice is not None:
            body["invoice"] = self.invoice
        return body


@dataclass(frozen=True, slots=True)
class InvoiceRequest:
    """A validated ``POST /api/v1/invoices`` body."""

    order_id: str
    number: int
    amount: int
    currency: str
    description: str
    return_url: str | None
    notify_url: str | None
    expires_at: datetime
    scenario: Scenario | None

    @classmethod
    def parse(cls, body: Any, currencies: frozenset[str]) -> InvoiceRequest:
        """Validate a decoded JSON body: 400 for a malformed field, 422 for an unsupported one."""
        if not isinstance(body, Mapping):
            raise SandboxApiError(400, "invalid_body", "the body must be a JSON object")
        order_id = required_text(body, "order_id", limit=128)
        number = body.get("number")
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise SandboxApiError(400, "invalid_field", "number: must be a positive integer")
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount < 2**63:
            raise SandboxApiError(
                400, "invalid_field", "amount: must be a positive integer (minor units)"
            )
        currency = required_text(body, "currency", limit=3)
        if currency not in currencies:
            known = ", ".join(sorted(currencies))
            raise SandboxApiError(
                422, "unsupported_currency", f"currency {currency!r}: use one of {known}"
            )
        description = optional_text(body, "description", limit=1000) or ""
        expires_text = required_text(body, "expires_at", limit=64)
        try:
            expires_at = datetime.fromisoformat(expires_text)
        except ValueError:
            raise SandboxApiError(400, "invalid_field", "expires_at: must be ISO 8601") from None
        if expires_at.tzinfo is None:
            raise SandboxApiError(400, "invalid_field", "expires_at: must carry a UTC offset")
        scenario_text = optional_text(body, "scenario", limit=64)
        try:
            scenario = None if scenario_text is None else Scenario.parse(scenario_text)
        except ValueError as exc:
            raise SandboxApiError(400, "invalid_scenario", f"scenario: {exc}") from None
        return cls(
            order_id=order_id,
            number=number,
            amount=amount,
            currency=currency,
            description=description,
            return_url=optional_url(body, "return_url"),
            notify_url=optional_url(body, "notify_url"),
            expires_at=expires_at,
            scenario=scenario,
        )

    def fingerprint(self) -> str:
        """Hash of the request, to tell an honest retry from a reused idempotency key."""
        fields = [
            self.order_id,
            self.number,
            self.amount,
            self.currency,
            self.description,
            self.return_url,
            self.notify_url,
            self.expires_at.isoformat(),
            None if self.scenario is None else str(self.scenario),
        ]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def required_text(body: Mapping[str, Any], name: str, *, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise SandboxApiError(400, "invalid_field", f"{name}: must be a non-empty string")
    if len(value) > limit:
        raise SandboxApiError(400, "invalid_field", f"{name}: longer than {limit} characters")
    return value


def optional_text(body: Mapping[str, Any], name: str, *, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SandboxApiError(400, "invalid_field", f"{name}: must be a string")
    if len(value) > limit:
        raise SandboxApiError(400, "invalid_field", f"{name}: longer than {limit} characters")
    return value


def optional_url(body: Mapping[str, Any], name: str) -> str | None:
    value = optional_text(body, name, limit=2048)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise SandboxApiError(400, "invalid_field", f"{name}: must be an absolute http(s) URL")
    return value


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    """One invoice as stored. ``status`` is as last written; :meth:`status_at` adds expiry."""

    id: str
    idempotency_key: str
    fingerprint: str
    request: InvoiceRequest
    pay_url: str
    created_at: datetime
    status: InvoiceStatus = S.PENDING
    paid_at: datetime | None = None
    refunded: int = 0  # minor units given back by succeeded refunds (issue #14)

    def status_at(self, now: datetime) -> InvoiceStatus:
        """A pending invoice past its deadline reads as expired (lazily)."""
        if self.status is S.PENDING and now >= self.request.expires_at:
            return S.EXPIRED
        return self.status

    def to_json(self, now: datetime) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "status": self.status_at(now).value,
            "amount": r.amount,
            "currency": r.currency,
            "pay_url": self.pay_url,
            "expires_at": r.expires_at.isoformat(),
            "order_id": r.order_id,
            "number": r.number,
            "description": r.description,
            "return_url": r.return_url,
            "created_at": self.created_at.isoformat(),
            "paid_at": None if self.paid_at is None else self.paid_at.isoformat(),
            "refunded": self.refunded,
        }


class Move(StrEnum):
    """A status change and who may make it."""

    PAY = "pay"  # the buyer on the pay page, or pay_after: only before the deadline
    LATE_PAY = "late_pay"  # control API, pay_late: even past the deadline or after a refusal
    DECLINE = "decline"
    CANCEL = "cancel"
    EXPIRE = "expire"  # the deadline sweep writes down what reads already show
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class _Rule:
    target: InvoiceStatus
    allowed: frozenset[InvoiceStatus]  # effective statuses the move applies to
    settled: frozenset[InvoiceStatus]  # statuses where the move is a no-op success


_RULES: Mapping[Move, _Rule] = {
    Move.PAY: _Rule(S.PAID, frozenset({S.PENDING}), frozenset({S.PAID})),
    Move.LATE_PAY: _Rule(
        S.PAID,
        frozenset({S.PENDING, S.EXPIRED, S.DECLINED, S.CANCELLED}),
        frozenset({S.PAID}),
    ),
    Move.DECLINE: _Rule(S.DECLINED, frozenset({S.PENDING}), frozenset({S.DECLINED})),
    # Cancelling what can no longer be paid is harmless, so it answers with the invoice as is.
    Move.CANCEL: _Rule(
        S.CANCELLED, frozenset({S.PENDING}), frozenset({S.CANCELLED, S.EXPIRED, S.DECLINED})
    ),
    Move.EXPIRE: _Rule(S.EXPIRED, frozenset({S.EXPIRED}), frozenset(InvoiceStatus)),
    Move.REFUND: _Rule(S.REFUNDED, frozenset({S.PAID}), frozenset({S.REFUNDED})),
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The invoice after a create or a move, and whether anything changed."""

    record: InvoiceRecord
    changed: bool


class InvoiceStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, InvoiceRecord] = {}
        self._by_key: dict[str, str] = {}
        self._by_number: dict[int, list[str]] = {}
        self._per_order: Counter[str] = Counter()

    def create(
        self, key: str, request: InvoiceRequest, pay_url_base: str, now: datetime
    ) -> Outcome:
        """The invoice for ``key``: a new one, or the existing one for an identical request."""
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
                return Outcome(existing, changed=False)
            if request.expires_at <= now:
                raise SandboxApiError(422, "already_expired", "expires_at: is in the past")
            invoice_id = f"inv_{secrets.token_hex(10)}"
            record = InvoiceRecord(
                id=invoice_id,
                idempotency_key=key,
                fingerprint=fingerprint,
                request=request,
                pay_url=f"{pay_url_base.rstrip('/')}/pay/{invoice_id}",
                created_at=now,
            )
            self._by_id[invoice_id] = record
            self._by_key[key] = invoice_id
            self._by_number.setdefault(request.number, []).append(invoice_id)
            self._per_order[request.order_id] += 1
            return Outcome(record, changed=True)

    def get(self, invoice_id: str) -> InvoiceRecord:
        with self._lock:
            try:
                return self._by_id[invoice_id]
            except KeyError:
                raise SandboxApiError(404, "not_found", f"no invoice {invoice_id!r}") from None

    def find(self, number: int) -> list[InvoiceRecord]:
        """Invoices created for our order number, oldest first."""
        with self._lock:
            return [self._by_id[i] for i in self._by_number.get(number, ())]

    # -- Reconciliation (issue #16): the payment list ---------------------------------------

    def created_between(
        self, since: datetime | None, until: datetime | None, after: str | None, limit: int
    ) -> tuple[list[InvoiceRecord], bool]:
        """Invoices created in ``[since, until)``, oldest first, following the invoice ``after``
        (a cursor), at most ``limit``; and whether more follow."""
        with self._lock:
            records = [
                r
                for r in self._by_id.values()  # insertion order: creation order
                if (since is None or r.created_at >= since)
                and (until is None or r.created_at < until)
            ]
        if after is not None:
            ids = [r.id for r in records]
            if after not in ids:
                raise SandboxApiError(
                    400, "invalid_cursor", f"starting_after: {after!r} is not listed"
                )
            records = records[ids.index(after) + 1 :]
        return records[:limit], len(records) > limit

    def move(self, invoice_id: str, move: Move, now: datetime) -> Outcome:
        """Apply a status move; 409 ``not_allowed`` (with the invoice) when it cannot apply."""
        rule = _RULES[move]
        with self._lock:
            record = self._by_id.get(invoice_id)
            if record is None:
                raise SandboxApiError(404, "not_found", f"no invoice {invoice_id!r}")
            current = record.status_at(now)
            if move is Move.EXPIRE and record.status is not S.PENDING:
                return Outcome(record, changed=False)
            if current in rule.allowed:
                paid_at = now if rule.target is S.PAID else record.paid_at
                # A refund move is the payment system giving back all of it at once.
                refunded = record.request.amount if move is Move.REFUND else record.refunded
                updated = replace(record, status=rule.target, paid_at=paid_at, refunded=refunded)
                self._by_id[invoice_id] = updated
                return Outcome(updated, changed=True)
            if current in rule.settled:
                return Outcome(record, changed=False)
        code = "already_paid" if current in {S.PAID, S.REFUNDED} else "not_allowed"
        error = SandboxApiError(409, code, f"cannot {move} an invoice that is {current}")
        error.invoice = record.to_json(now)
        raise error

    def add_refunded(self, invoice_id: str, amount: int, now: datetime) -> Outcome:
        """Count a succeeded refund against its invoice: ``refunded`` grows, and a paid invoice
        refunded in full becomes ``refunded``."""
        with self._lock:
            record = self._by_id.get(invoice_id)
            if record is None:
                raise SandboxApiError(404, "not_found", f"no invoice {invoice_id!r}")
            refunded = min(record.refunded + amount, record.request.amount)
            status = S.REFUNDED if refunded == record.request.amount else record.status
            updated = replace(record, refunded=refunded, status=status)
            self._by_id[invoice_id] = updated
            return Outcome(updated, changed=updated != record)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            per_key = dict.fromkeys(self._by_key, 1)
            per_order = dict(self._per_order)
            statuses = Counter(r.status.value for r in self._by_id.values())
        return {
            "invoices": sum(per_order.values()),
            "invoices_per_key": per_key,
            "invoices_per_order": per_order,
            "max_invoices_per_order": max(per_order.values(), default=0),
            "statuses": dict(statuses),
        }
