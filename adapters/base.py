"""The adapter contract: pure build/parse functions per payment system (DESIGN.md section 6).

An adapter never does I/O. The dispatcher turns a :class:`PspRequest` into an HTTP call (with
timeouts, retries, rate limits, metrics), hands the :class:`PspResponse` back to the adapter to
parse, and applies the result. Errors an adapter raises while parsing:

- :class:`MalformedResponse` (transient): HTML error pages, truncated JSON, missing fields,
  unknown statuses. The dispatcher logs, counts and retries; the order is never rejected for it.
- :class:`PspRejected` (permanent): a definite "no" to a create request (invalid request,
  unsupported currency). The order becomes ``failed``.
- :class:`InvoiceMayExist` (transient): a create was refused because an invoice for this order
  may exist already (T-Bank's duplicate ``OrderId``). The order stays ``submitting`` and the
  next try looks the invoice up (``build_lookup``/``parse_lookup``) before any second create.
- :class:`CredentialsRejected` (transient): the payment system refused *our* credentials
  (HTTP 401/403 on a merchant key, Stripe's ``authentication_error``). The breaker opens, an
  alert fires; orders are neither failed nor lost.
- :class:`orders.errors.OutcomeUnknown`: the call may have taken effect and nothing can tell.

When the dispatcher calls what (the whole story is in ``docs/adapters.md``):

- ``build_create`` once per submit attempt. With ``idempotent_create`` the transport retries a
  create that may have been sent (same key); without it the transport never re-sends a create,
  and every later attempt for the same order first runs ``build_lookup``/``parse_lookup``:
  an :class:`Invoice` found is used as if the create had answered it; ``None`` means the payment
  system surely has no invoice for the order, so a new create is safe. An invoice found without
  a pay URL keeps the buyer's page waiting (the order shows no pay link) until the poll settles it.
- ``build_status`` on every poll; ``parse_status`` reads the answer of a ``status``, ``capture``
  or ``cancel`` call (``operation`` says which) with the adapter's settings at hand.
- ``can_cancel`` before any cancel: at the deadline, on the first late-watch look, and when an
  amount mismatch is seen. Answer False where a cancel cannot succeed for the state just read, or
  where it would give back money already taken (``Capabilities.cancel_refunds``).
- ``build_token``/``parse_token`` (OAuth client credentials): run by the transport, cached until
  shortly before expiry, refreshed once on a 401; ``apply_token`` puts it on each request.
- ``build_refund``/``parse_refund`` once per submit of a refund (issue #14), then
  ``build_refund_status``/``parse_refund_status`` on every poll until the :class:`RefundReport`
  is final. With ``idempotent_refund`` a refund that may have been sent is re-sent with the same
  key; without it the dispatcher never re-sends it and reads its status instead (by our id where
  ``refund_lookup``). Payouts (``build_payout`` ...) follow the same story.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, NoReturn
from uuid import UUID

from orders.errors import (
    ConfigError,
    DispatchError,
    InvalidInput,
    PermanentError,
    TransientError,
)
from orders.model import Order
from orders.money import Money


class NotSupported(DispatchError):
    """The adapter does not implement this optional operation (see its capabilities).

    Neither transient nor permanent: a question the caller should not have asked. The
    conformance kit holds an adapter's capabilities to the methods it has, so the dispatcher
    meets it only where it asks regardless (a notification posted for an adapter without
    notifications, a reconciliation of one that cannot list payments).
    """


class MalformedResponse(TransientError):
    """The payment system answered something the adapter cannot read. Retried, never final."""


class PspRejected(PermanentError):
    """The payment system definitely refused the request; repeating it cannot help."""


class InvoiceMayExist(TransientError):
    """The create was refused because an invoice for this order may already exist.

    Raised by ``parse_create`` of payment systems without idempotency keys on their "duplicate
    reference" error. The order stays ``submitting``; the next attempt looks the invoice up.
    """


class CredentialsRejected(TransientError):
    """The payment system refused our own credentials (HTTP 401/403 on the merchant's key).

    No order is at fault: the dispatcher opens the adapter's breaker, counts it in
    ``paydispatch_psp_credentials_rejected_total`` (an alert fires), and keeps every order.
    """


class InvalidSettings(ConfigError):
    """An adapter setting is missing or malformed; names the environment variable to set."""


class CanonicalState(StrEnum):
    """What a payment system says about a payment, in paydispatch's words."""

    PENDING = "pending"
    PAID = "paid"
    REJECTED = "rejected"
    EXPIRED = "expired"
    REFUNDED = "refunded"


class FollowUp(StrEnum):
    """An action the payment system waits for before the payment settles."""

    CAPTURE = "capture"  # YooKassa waiting_for_capture, PayPal APPROVED


# Query strings and form bodies: a mapping, or a sequence of pairs where keys repeat or nest in
# order (Stripe's ``line_items[0][price_data][unit_amount]``, ``expand[]``).
Pairs = Mapping[str, str] | Sequence[tuple[str, str]]


def pairs(value: Pairs | None) -> list[tuple[str, str]]:
    """``value`` as a list of (key, value) pairs, in order."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return list(value.items())
    return list(value)


@dataclass(frozen=True, slots=True)
class PspRequest:
    """An HTTP request to make, fully built and signed. Exactly one of json/content/form."""

    method: str
    url: str
    # "create", "status", "cancel", "capture", "lookup", "token", "list", "refund",
    # "refund_status", "payout", "payout_status": a metrics label, and what ``parse_status`` is
    # told it reads.
    operation: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Pairs = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    form: Pairs | None = None


@dataclass(frozen=True, slots=True)
class PspResponse:
    """An HTTP response as the adapter sees it."""

    status_code: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; :class:`MalformedResponse` when it is not."""
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: too deep
            snippet = self.content[:80].decode("utf-8", "replace")
            raise MalformedResponse(
                f"HTTP {self.status_code}: body is not JSON ({exc}): {snippet!r}"
            ) from None

    def json_object(self) -> Mapping[str, Any]:
        """The body as a JSON object; :class:`MalformedResponse` when it is anything else."""
        body = self.json()
        if not isinstance(body, Mapping):
            self.malformed(f"expected a JSON object, got {type(body).__name__}")
        return body

    def malformed(self, what: str) -> NoReturn:
        """Raise :class:`MalformedResponse` saying ``what`` is wrong with this answer."""
        raise MalformedResponse(f"HTTP {self.status_code}: {what}")

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def money_object(
    value: Any, response: PspResponse, field: str = "amount", currency_key: str = "currency"
) -> Money:
    """Money from a JSON ``{"value": "10.00", <currency_key>: "RUB"}`` object in ``response``
    (YooKassa's amount, PayPal's with ``currency_code``): exact, never through a float;
    :class:`MalformedResponse` for anything else."""
    if not isinstance(value, Mapping):
        response.malformed(f"{field} is not an object")
    major, currency = value.get("value"), value.get(currency_key)
    if not isinstance(major, str) or not isinstance(currency, str):
        response.malformed(f"{field} needs string value and {currency_key}, got {dict(value)!r}")
    try:
        return Money.parse(major, currency)
    except InvalidInput as exc:
        raise MalformedResponse(f"HTTP {response.status_code}: {field}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Invoice:
    """The payment system's invoice for an order: its id, where the buyer pays, its deadline."""

    psp_id: str
    pay_url: str | None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One canonical reading of a payment's state, with what the payment system reports."""

    state: CanonicalState
    psp_id: str | None = None
    money: Money | None = None  # the amount and currency the payment system reports
    follow_up: FollowUp | None = None
    raw_status: str = ""  # the payment system's own word, for logs and order_events
    reason: str = ""  # cancellation or decline details
    # Reported on their own (issue #14): the total refunded of this payment so far, as the
    # payment system shows it with the payment (YooKassa ``refunded_amount``); None when it
    # does not say. ``chargeback``: a dispute took the money back.
    refunded: Money | None = None
    chargeback: bool = False
    # The payment system's id of the money taken, where its refunds name that rather than the
    # invoice (Stripe's PaymentIntent, PayPal's capture, Robokassa's OpKey); None otherwise.
    psp_payment_id: str | None = None


class RefundState(StrEnum):
    """Where a refund stands at the payment system."""

    PENDING = "pending"  # accepted, not final: poll again
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # definite: refused or canceled by the payment system; money did not move
    # Only in a notification: a chargeback (the refund a dispute took, ``psp_refund_id`` the
    # dispute's id) the payment system gave back to the merchant: the dispute was won.
    REVERSED = "reversed"


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A refund of (part of) a paid order, as the dispatcher sends it."""

    id: UUID  # ours; the idempotency key where the payment system takes one
    order: Order  # the paid order: ``order.psp_id`` names the payment
    money: Money  # what to give back; the order's currency; never more than is left
    reason: str = ""
    psp_refund_id: str | None = None  # the payment system's id, once known (for status reads)
    # StatusReport.psp_payment_id of the paid payment, read before the refund is sent (the
    # dispatcher reads the payment's status first anyway, to see what is refunded already). An
    # adapter whose refunds need it raises InvalidInput("psp_payment_id", ...) without it.
    psp_payment_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefundReport:
    """One reading of a refund's state."""

    state: RefundState
    psp_refund_id: str | None = None
    money: Money | None = None  # the amount the payment system reports for this refund
    raw_status: str = ""
    reason: str = ""


class PayoutState(StrEnum):
    """Where a payout stands at the payment system (the meanings of :class:`RefundState`)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PayoutRequest:
    """Money sent out to a user (a wallet withdrawal)."""

    id: UUID  # ours; the idempotency key
    money: Money
    # Adapter-specific: YooKassa ``{"payout_token": ...}`` or
    # ``{"type": "yoo_money", "account_number": ...}``; the sandbox ``{"account": ...}``.
    destination: Mapping[str, str]
    description: str = ""
    psp_payout_id: str | None = None


@dataclass(frozen=True, slots=True)
class PayoutReport:
    """One reading of a payout's state."""

    state: PayoutState
    psp_payout_id: str | None = None
    money: Money | None = None
    raw_status: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Notification:
    """A push notification as received by ``POST /v1/callbacks/{adapter}``."""

    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)
    remote_addr: str | None = None
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OrderRef:
    """How a notification names its order: by our id, our number, or the payment system's id
    (of the invoice, ``psp_id``, or of the money taken, ``psp_payment_id``: a paid order's
    :attr:`StatusReport.psp_payment_id`, which names it once stored)."""

    order_id: str | None = None
    number: int | None = None
    psp_id: str | None = None
    psp_payment_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The HTTP answer a payment system expects to a notification."""

    status_code: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class NotificationResult:
    """A parsed notification.

    ``verified`` is true only when a signature proved the payment system sent it; then
    ``report`` may be applied directly. Otherwise it is a hint: the dispatcher polls the order
    named by ``ref`` at once and changes nothing on the notification's word.
    """

    ref: OrderRef
    verified: bool
    report: StatusReport | None = None
    reply: Reply = field(default_factory=Reply)
    # A notification about a refund: ``ref`` names the order (the payment), this the refund.
    refund: RefundReport | None = None
    # A notification about a payout: ``ref`` names no order, this the payout. Like ``report``,
    # both are hints unless ``verified``.
    payout: PayoutReport | None = None


@dataclass(frozen=True, slots=True)
class Token:
    """An access token from ``parse_token``: its value and how long it is good for."""

    value: Secret
    expires_in: timedelta

    def __repr__(self) -> str:
        return f"Token(value={self.value!r}, expires_in={self.expires_in!r})"


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """Capped exponential backoff with full jitter; never past the order's deadline."""

    first: timedelta = timedelta(seconds=5)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Capabilities:
    idempotent_create: bool  # create accepts an idempotency key
    lookup_by_reference: bool = False  # can find an invoice by our order number
    cancel: bool = False
    notifications: bool = False
    signed_notifications: bool = False  # a signature proves the payment system sent it
    # The signature carries no timestamp or nonce (T-Bank, Robokassa): a genuine notification
    # can be replayed, so the kit does not require its stale fixture to fail verification.
    replayable_notifications: bool = False
    # A cancel of a paid payment gives the money back (T-Bank's Cancel of CONFIRMED): the
    # engine cancels only where can_cancel says the state just read allows it.
    cancel_refunds: bool = False
    currencies: frozenset[str] = frozenset()
    default_expiry: timedelta = timedelta(hours=1)
    poll: PollPolicy = field(default_factory=PollPolicy)
    # -- Reconciliation (issue #16) -----------------------------------------------------------
    # The payment system lists payments by creation time (build_list/parse_list); without it
    # ``paydispatch reconcile`` re-reads each order's status instead.
    list_payments: bool = False
    # -- Refunds and payouts (issue #14) --------------------------------------------------------
    # build_refund/parse_refund/build_refund_status/parse_refund_status work.
    refunds: bool = False
    # A refund may be less than the payment; several may follow each other.
    partial_refunds: bool = False
    # The refund request carries our refund id as an idempotency key: a re-sent request makes
    # no second refund. Without it the dispatcher never re-sends a refund that may have been
    # sent; it reads its status by our id where the payment system allows (refund_lookup).
    idempotent_refund: bool = False
    # build_refund_status works with only our refund id (psp_refund_id None).
    refund_lookup: bool = False
    # build_payout/parse_payout/build_payout_status/parse_payout_status work.
    payouts: bool = False
    idempotent_payout: bool = False  # the payout request carries our payout id as its key


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting, read from ``[adapters.<name>]`` or ``PAYDISPATCH_<NAME>_<KEY>``."""

    key: str  # upper case: API_URL, SHOP_ID, SECRET_KEY
    secret: bool = False
    default: str | None = None  # None: required
    help: str = ""


class Secret:
    """A credential that never shows itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class AdapterSettings:
    """Resolved settings of one adapter. ``get`` reveals secrets; ``repr`` never does."""

    adapter: str
    values: Mapping[str, str | Secret]

    def get(self, key: str) -> str:
        value = self.values[key]
        return value.reveal() if isinstance(value, Secret) else value

    @property
    def api_url(self) -> str:
        return self.get("API_URL").rstrip("/")

    def __repr__(self) -> str:
        shown = {k: v if isinstance(v, str) else repr(v) for k, v in self.values.items()}
        return f"AdapterSettings(adapter={self.adapter!r}, values={shown!r})"


class Adapter(abc.ABC):
    """One payment system. Subclasses implement the four pure functions and declare the rest.

    Optional operations raise :class:`NotSupported` unless the capabilities say otherwise.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    settings_spec: ClassVar[tuple[SettingSpec, ...]]  # must include API_URL with its default

    @abc.abstractmethod
    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest | Invoice:
        """The signed create request, or for redirect-only systems the invoice itself."""

    @abc.abstractmethod
    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        """The invoice from a create response; raises PspRejected or MalformedResponse."""

    @abc.abstractmethod
    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        """The status request for an order that has an invoice."""

    @abc.abstractmethod
    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        """One canonical state from the answer to a ``status``, ``capture`` or ``cancel`` call.

        ``operation`` says which call ``response`` answers; ``settings`` lets a reading depend
        on a setting (one- or two-stage payments).
        """

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        raise NotSupported(f"{self.name} does not accept notifications")

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        raise NotSupported(f"{self.name} cannot cancel an invoice")

    def build_capture(self, order: Order, settings: AdapterSettings) -> PspRequest:
        raise NotSupported(f"{self.name} has no capture step")

    def build_lookup(self, order: Order, settings: AdapterSettings) -> PspRequest:
        """Find an invoice by our order number, for systems without idempotency keys."""
        raise NotSupported(f"{self.name} cannot look invoices up by our reference")

    def parse_lookup(
        self, order: Order, response: PspResponse, settings: AdapterSettings
    ) -> Invoice | None:
        """The invoice an earlier create made, or None when the payment system surely has none.

        Raise :class:`MalformedResponse` (or another transient error) when the answer does not
        tell: None makes the dispatcher create a new invoice.
        """
        raise NotSupported(f"{self.name} cannot look invoices up by our reference")

    def can_cancel(self, order: Order, report: StatusReport | None) -> bool:
        """Whether a cancel may succeed now and gives back no money already taken.

        ``report`` is the state just read (None when none was). The default: the adapter can
        cancel and the payment is still pending.
        """
        return (
            self.capabilities.cancel
            and report is not None
            and report.state is CanonicalState.PENDING
        )

    def build_token(self, settings: AdapterSettings) -> PspRequest | None:
        """The request for an access token (OAuth2 client credentials); None when the payment
        system needs none. The transport sends it, caches the token and refreshes it."""
        return None

    def parse_token(self, response: PspResponse, settings: AdapterSettings) -> Token:
        """The token from the answer to :meth:`build_token`."""
        raise NotSupported(f"{self.name} uses no access tokens")

    def apply_token(self, request: PspRequest, token: Token) -> PspRequest:
        """``request`` carrying ``token``; by default as ``Authorization: Bearer``."""
        headers = {**request.headers, "Authorization": f"Bearer {token.value.reveal()}"}
        return replace(request, headers=headers)

    def __repr__(self) -> str:
        return f"<adapter {self.name}>"

    # -- Reconciliation (issue #16): listing payments -----------------------------------------
    # Optional, like the operations above; declared by ``Capabilities.list_payments``. The
    # dispatcher's transport sends the request (operation ``list``) and pages with the cursor.

    def build_list(
        self, settings: AdapterSettings, since: datetime, until: datetime, cursor: str | None
    ) -> PspRequest:
        """One page of the payments created in ``[since, until)`` (aware UTC times).

        ``cursor`` is the previous page's :attr:`PaymentPage.next_cursor`; None asks for the
        first page.
        """
        raise NotSupported(f"{self.name} cannot list payments")

    def parse_list(self, response: PspResponse, settings: AdapterSettings) -> PaymentPage:
        """The payments of one page, each with its id and money, and the next page's cursor.

        An item that cannot be read raises :class:`MalformedResponse` rather than being
        skipped: a list with holes would hide the very differences reconciliation looks for.
        """
        raise NotSupported(f"{self.name} cannot list payments")

    # -- Refunds and payouts (issue #14) ------------------------------------------------------
    # Optional, declared by ``Capabilities.refunds`` and ``Capabilities.payouts``. Operations
    # ``refund``, ``refund_status``, ``payout``, ``payout_status``. A parse raises
    # :class:`PspRejected` for a definite refusal (the money did not move: "amount exceeds") and
    # :class:`MalformedResponse` for an answer it cannot read (transient: the dispatcher then
    # reads the status, never guesses).

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        """The request giving ``refund.money`` of the payment ``refund.order.psp_id`` back."""
        raise NotSupported(f"{self.name} cannot refund")

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        """The refund's state from the answer to :meth:`build_refund`."""
        raise NotSupported(f"{self.name} cannot refund")

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        """The status request of a refund: by ``psp_refund_id``, or by our id where
        ``Capabilities.refund_lookup``."""
        raise NotSupported(f"{self.name} cannot refund")

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        """The refund's state from the answer to :meth:`build_refund_status`."""
        raise NotSupported(f"{self.name} cannot refund")

    def build_payout(self, payout: PayoutRequest, settings: AdapterSettings) -> PspRequest:
        """The request sending ``payout.money`` to ``payout.destination``."""
        raise NotSupported(f"{self.name} cannot pay out")

    def parse_payout(
        self, payout: PayoutRequest, response: PspResponse, settings: AdapterSettings
    ) -> PayoutReport:
        """The payout's state from the answer to :meth:`build_payout`."""
        raise NotSupported(f"{self.name} cannot pay out")

    def build_payout_status(self, payout: PayoutRequest, settings: AdapterSettings) -> PspRequest:
        """The status request of a payout (by ``psp_payout_id``)."""
        raise NotSupported(f"{self.name} cannot pay out")

    def parse_payout_status(
        self, payout: PayoutRequest, response: PspResponse, settings: AdapterSettings
    ) -> PayoutReport:
        """The payout's state from the answer to :meth:`build_payout_status`."""
        raise NotSupported(f"{self.name} cannot pay out")


@dataclass(frozen=True, slots=True)
class ListedPayment:
    """One payment as a list endpoint shows it (reconciliation, issue #16).

    ``report`` always carries ``psp_id`` and ``money``; ``ref`` names our order when the payment
    carries our reference (metadata), so a second payment for one order is recognised as such.
    """

    report: StatusReport
    ref: OrderRef = field(default_factory=OrderRef)


@dataclass(frozen=True, slots=True)
class PaymentPage:
    """One page of :meth:`Adapter.parse_list`; ``next_cursor`` None on the last page."""

    payments: tuple[ListedPayment, ...]
    next_cursor: str | None = None
