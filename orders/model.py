"""The order as stored, the request that creates one, and its history rows."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from uuid import UUID

from orders.errors import FieldTooLong, InvalidAmount, InvalidInput, UnknownAdapter
from orders.money import Money
from orders.status import LATE_PAYMENT_FROM, OrderStatus

# Length limits, in characters; the schema's CHECK constraints hold the same numbers.
LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "site": 64,
        "site_ref": 128,
        "user_id": 128,
        "adapter": 64,
        "description": 1000,
        "return_url": 2048,
        "idempotency_key": 255,
    }
)
MAX_METADATA_BYTES = 16 * 1024
MIN_EXPIRY = timedelta(seconds=10)
MAX_EXPIRY = timedelta(days=30)
# How many times a buyer may switch an order to another payment system, one after another.
MAX_SWITCH_DEPTH = 3

# C0 and C1 control characters (CR and LF among them: header, log and mail injection once the
# text is rendered or sent on) and lone surrogates (not UTF-8, so not storable).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# An absolute http(s) URL as RFC 3986 writes one: an ASCII authority (IDN hosts in their
# xn-- form, no IPv6 literals) and no whitespace or control character anywhere. The API
# publishes this pattern, so what its schema allows and what is stored are the same strings.
RETURN_URL_PATTERN = (
    r"^[hH][tT][tT][pP][sS]?://[A-Za-z0-9._~%!$&'()*+,;=:@-]+([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$"
)
_RETURN_URL = re.compile(RETURN_URL_PATTERN)
# json.dumps with these arguments builds an encoder per call; every create encodes twice.
_METADATA_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def storable_problem(value: str) -> str | None:
    """Why PostgreSQL cannot hold ``value`` as text (a NUL, or a lone surrogate, which is not
    UTF-8); None when it can."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored, shown or sent on as text; None when it can."""
    found = _UNPRINTABLE.search(value)
    if found is None:
        return None
    char = found.group()
    if "\ud800" <= char <= "\udfff":
        return "must be valid Unicode text (it holds a lone surrogate)"
    if char == "\x00":
        return "must not contain NUL characters"
    return f"must not contain control characters (found U+{ord(char):04X})"


def label_problem(value: str) -> str | None:
    """Why ``value`` cannot be a label people type and compare (a site's name), past what
    :func:`text_problem` refuses; None when it can. Invisible characters (format characters such
    as U+200B, separators other than the space, unassigned code points: what
    :meth:`str.isprintable` refuses) and surrounding whitespace would make two labels that look
    the same and are not, so a site's webhook could be set for a name its orders never carry."""
    if value.strip() != value:
        return "must not begin or end with whitespace"
    for char in value:
        if not char.isprintable():
            return f"must be printable characters only (found U+{ord(char):04X})"
    return None


def check_text(
    name: str,
    value: object,
    *,
    limit: int,
    required: bool = True,
    controls: bool = False,
    label: bool = False,
) -> None:
    """Raise :class:`InvalidInput` (``FieldTooLong`` past ``limit``) naming ``name`` unless
    ``value`` is text paydispatch can keep: a string, not blank if ``required`` (None is
    allowed when not), storable, and without control characters unless ``controls`` (text
    that is only stored and rendered as JSON, never put in a header, a log line or a mail).
    With ``label`` it must also be a label (:func:`label_problem`)."""
    if value is None:
        if required:
            raise InvalidInput(name, "is required")
        return
    if not isinstance(value, str):
        raise InvalidInput(name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidInput(name, "must not be empty")
    if len(value) > limit:
        raise FieldTooLong(name, f"is {len(value)} characters long; the limit is {limit}")
    problem = storable_problem(value) if controls else text_problem(value)
    if problem is None and label:
        problem = label_problem(value)
    if problem is not None:
        raise InvalidInput(name, problem)


@dataclass(frozen=True, slots=True)
class NewOrder:
    """What a site asks for. ``validate`` refuses bad input before anything is written."""

    site: str
    user_id: str
    money: Money
    adapter: str
    site_ref: str | None = None
    description: str = ""
    return_url: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    expires_in: timedelta | None = None
    idempotency_key: str | None = None

    def validate(self, adapters: Collection[str]) -> None:
        for name in ("site", "user_id", "adapter"):
            check_text(name, getattr(self, name), limit=LIMITS[name])
        for name in ("site_ref", "idempotency_key"):
            check_text(name, getattr(self, name), limit=LIMITS[name], required=False)
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise InvalidInput(name, "must not be blank when given")
        check_text("description", self.description, limit=LIMITS["description"], required=False)
        check_text("return_url", self.return_url, limit=LIMITS["return_url"], required=False)
        if not isinstance(self.money, Money):
            raise InvalidAmount("amount", "must be Money")
        if self.money.amount <= 0:
            raise InvalidAmount("amount", f"must be positive, got {self.money.amount}")
        if self.adapter not in adapters:
            known = ", ".join(sorted(adapters)) or "none"
            raise UnknownAdapter(
                "adapter", f"{self.adapter!r} is not an enabled payment system (enabled: {known})"
            )
        # The very string that is stored is the one checked: no cleaned copy (urlsplit drops
        # tabs and newlines, so checking its result would let a CR/LF through).
        if self.return_url is not None and _RETURN_URL.fullmatch(self.return_url) is None:
            raise InvalidInput(
                "return_url", "must be an absolute http(s) URL without spaces or control characters"
            )
        if not isinstance(self.metadata, Mapping):
            raise InvalidInput("metadata", "must be a JSON object")
        try:
            encoded = _METADATA_JSON.encode(self.metadata)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("metadata", f"must be JSON-serialisable: {exc}") from None
        if len(encoded.encode()) > MAX_METADATA_BYTES:
            raise FieldTooLong("metadata", f"is over {MAX_METADATA_BYTES} bytes as JSON")
        if self.expires_in is not None and not MIN_EXPIRY <= self.expires_in <= MAX_EXPIRY:
            raise InvalidInput(
                "expires_in",
                f"must be between {MIN_EXPIRY} and {MAX_EXPIRY}, got {self.expires_in}",
            )

    def fingerprint(self) -> str:
        """Hash of the request body, to tell an honest replay from a reused key."""
        body = {
            "site_ref": self.site_ref,
            "user_id": self.user_id,
            "amount": self.money.amount,
            "currency": self.money.currency,
            "adapter": self.adapter,
            "description": self.description,
            "return_url": self.return_url,
            "metadata": self.metadata,
            "expires_in": None if self.expires_in is None else self.expires_in.total_seconds(),
        }
        canonical = _CANONICAL_JSON.encode(body)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Order:
    """One row of ``orders``."""

    id: UUID
    number: int
    site: str
    site_ref: str | None
    user_id: str
    money: Money
    adapter: str
    description: str
    return_url: str | None
    metadata: Mapping[str, Any]
    status: OrderStatus
    psp_id: str | None
    pay_url: str | None
    attempts: int
    polls: int
    next_run_at: datetime | None
    lease_until: datetime | None
    lease_token: UUID | None
    expires_at: datetime
    last_error: str | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    # The order a buyer switched away from to make this one, and how many switches deep it is.
    replaces: UUID | None = None
    switch_depth: int = 0
    errors: int = 0  # consecutive failed steps (the engine's retry backoff)
    # Kept by the database from the order's refunds (issue #14), in minor units: what succeeded,
    # and what is taken (requested, being sent, pending, in review, succeeded): never > amount.
    refunded_amount: int = 0
    refund_reserved: int = 0
    # The payment system's id of the money taken (StatusReport.psp_payment_id: Stripe's
    # PaymentIntent, PayPal's capture), stored when the order became paid; None where the payment
    # system names none, or the order was paid by a person's resolution.
    psp_payment_id: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Order:
        return cls(
            id=row["id"],
            number=row["number"],
            site=row["site"],
            site_ref=row["site_ref"],
            user_id=row["user_id"],
            money=Money(row["amount"], row["currency"]),
            adapter=row["adapter"],
            description=row["description"],
            return_url=row["return_url"],
            metadata=row["metadata"],
            status=OrderStatus(row["status"]),
            psp_id=row["psp_id"],
            pay_url=row["pay_url"],
            attempts=row["attempts"],
            polls=row["polls"],
            next_run_at=row["next_run_at"],
            lease_until=row["lease_until"],
            lease_token=row["lease_token"],
            expires_at=row["expires_at"],
            last_error=row["last_error"],
            idempotency_key=row["idempotency_key"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            paid_at=row["paid_at"],
            replaces=row.get("replaces"),
            switch_depth=row.get("switch_depth") or 0,
            errors=row.get("errors") or 0,
            refunded_amount=row.get("refunded_amount") or 0,
            refund_reserved=row.get("refund_reserved") or 0,
            psp_payment_id=row.get("psp_payment_id"),
        )

    @property
    def psp_idempotency_key(self) -> str:
        """The key every create call for this order carries (invariant 2)."""
        return f"pd-{self.id}"


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One row of ``order_events``: a status change (``from_status`` None at creation)."""

    id: int
    order_id: UUID
    from_status: OrderStatus | None
    to_status: OrderStatus
    at: datetime
    actor: str
    detail: Mapping[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OrderEvent:
        return cls(
            id=row["id"],
            order_id=row["order_id"],
            from_status=None if row["from_status"] is None else OrderStatus(row["from_status"]),
            to_status=OrderStatus(row["to_status"]),
            at=row["at"],
            actor=row["actor"],
            detail=row["detail"],
        )


@dataclass(frozen=True, slots=True)
class PaidEvent:
    """What the paid hooks (billing) are handed, inside the transaction that marks an order paid.

    It carries what a hook needs and the engine already knew, so no hook has to read
    ``order_events`` back to learn where the payment came from.
    """

    order: Order  # as written: status paid, paid_at set
    previous: OrderStatus  # the status the order was paid from
    actor: str  # who moved it: "worker", "notification", "operator:<name>", ...

    @property
    def late(self) -> bool:
        """Paid after the order had been given up (expired, rejected, cancelled)."""
        return self.previous in LATE_PAYMENT_FROM


# A paid hook: runs in the paid transaction on its connection (a psycopg AsyncConnection); if it
# raises, the move to paid and everything the hooks wrote are rolled back.
PaidHook = Callable[[Any, PaidEvent], Awaitable[None]]


# -- Money going out (issue #14): refunds and payouts, rows of ``transfers`` ----------------------


class TransferKind(StrEnum):
    """What a transfer gives out: a refund of (part of) a paid order, or a payout of a wallet's
    balance (a withdrawal)."""

    REFUND = "refund"
    PAYOUT = "payout"


class TransferStatus(StrEnum):
    """Where a transfer stands; the schema's ``transfer_transitions`` holds the same moves."""

    REQUESTED = "requested"  # written, never sent
    SUBMITTING = "submitting"  # being sent, or sent and its answer lost: may have been sent
    PENDING = "pending"  # the payment system took it; read its status until final
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a definite no: nothing was given out
    CANCELLED = "cancelled"  # withdrawn before it was ever sent
    NEEDS_REVIEW = "needs_review"  # may have been sent, and nothing can tell: a person decides
    # A chargeback (a refund a dispute took) the payment system gave back: a dispute won.
    REVERSED = "reversed"


_T = TransferStatus
TRANSFER_TRANSITIONS: Mapping[TransferStatus, frozenset[TransferStatus]] = MappingProxyType(
    {
        _T.REQUESTED: frozenset({_T.SUBMITTING, _T.CANCELLED}),
        # Back to requested only when nothing surely reached the payment system.
        _T.SUBMITTING: frozenset(
            {_T.REQUESTED, _T.PENDING, _T.SUCCEEDED, _T.FAILED, _T.NEEDS_REVIEW}
        ),
        # To a person when the payment system reports another amount than ours.
        _T.PENDING: frozenset({_T.SUCCEEDED, _T.FAILED, _T.NEEDS_REVIEW}),
        # A person's decision, after reading the payment system's dashboard.
        _T.NEEDS_REVIEW: frozenset({_T.SUCCEEDED, _T.FAILED}),
        # Only a chargeback, when the payment system gives the money back (a dispute won).
        _T.SUCCEEDED: frozenset({_T.REVERSED}),
        _T.FAILED: frozenset(),
        _T.CANCELLED: frozenset(),
        _T.REVERSED: frozenset(),
    }
)
# Statuses the dispatcher still works on (claimed by the sweeper).
TRANSFER_ACTIVE: frozenset[TransferStatus] = frozenset({_T.REQUESTED, _T.SUBMITTING, _T.PENDING})
# The final statuses: the transfer hook runs in the transaction that reaches one of them.
TRANSFER_FINAL: frozenset[TransferStatus] = frozenset(
    {_T.SUCCEEDED, _T.FAILED, _T.CANCELLED, _T.REVERSED}
)
# The statuses whose amount counts against what is left to refund of an order.
REFUND_RESERVING: frozenset[TransferStatus] = frozenset(
    {_T.REQUESTED, _T.SUBMITTING, _T.PENDING, _T.NEEDS_REVIEW, _T.SUCCEEDED}
)


@dataclass(frozen=True, slots=True)
class Transfer:
    """One row of ``transfers``: a refund (``order_id`` set) or a payout (``withdrawal_id``)."""

    id: UUID
    kind: TransferKind
    site: str
    adapter: str
    user_id: str
    money: Money
    status: TransferStatus
    order_id: UUID | None
    withdrawal_id: UUID | None
    origin: str  # site | psp | operator | user
    reason: str
    requested_by: str
    idempotency_key: str | None
    request_hash: str | None
    psp_transfer_id: str | None
    destination: Mapping[str, Any] | None
    attempts: int
    errors: int
    last_error: str | None
    next_run_at: datetime | None
    lease_until: datetime | None
    lease_token: UUID | None
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None
    chargeback: bool = False  # a refund a dispute took (migration 0014)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Transfer:
        return cls(
            id=row["id"],
            kind=TransferKind(row["kind"]),
            site=row["site"],
            adapter=row["adapter"],
            user_id=row["user_id"],
            money=Money(row["amount"], row["currency"]),
            status=TransferStatus(row["status"]),
            order_id=row["order_id"],
            withdrawal_id=row["withdrawal_id"],
            origin=row["origin"],
            reason=row["reason"],
            requested_by=row["requested_by"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            psp_transfer_id=row["psp_transfer_id"],
            destination=row["destination"],
            attempts=row["attempts"],
            errors=row["errors"],
            last_error=row["last_error"],
            next_run_at=row["next_run_at"],
            lease_until=row["lease_until"],
            lease_token=row["lease_token"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            settled_at=row["settled_at"],
            chargeback=bool(row.get("chargeback", False)),
        )

    @property
    def final(self) -> bool:
        return self.status in TRANSFER_FINAL


@dataclass(frozen=True, slots=True)
class TransferEvent:
    """What the transfer hooks (billing, withdrawals) are handed, inside the transaction that
    moves a transfer to ``succeeded``, ``failed``, ``cancelled`` or ``reversed`` (a chargeback
    given back), or inserts a refund the payment system reported on its own (then ``previous``
    is ``succeeded`` too)."""

    transfer: Transfer  # as written
    previous: TransferStatus
    actor: str  # "worker", "notification", "operator:<name>", ...


# A transfer hook: runs in that transaction on its connection (a psycopg AsyncConnection); if it
# raises, the move and everything the hooks wrote are rolled back. Each hook ignores the kinds it
# does not handle.
TransferHook = Callable[[Any, TransferEvent], Awaitable[None]]
