"""The adapter contract: pure build/parse functions per payment system (DESIGN.md section 6).

An adapter never does I/O. The dispatcher turns a :class:`PspRequest` into an HTTP call (with
timeouts, retries, rate limits, metrics), hands the :class:`PspResponse` back to the adapter to
parse, and applies the result. Errors an adapter raises while parsing:

- :class:`MalformedResponse` (transient): HTML error pages, truncated JSON, missing fields,
  unknown statuses. The dispatcher logs, counts and retries; the order is never rejected for it.
- :class:`PspRejected` (permanent): a definite "no" to a create request (invalid request,
  unsupported currency). The order becomes ``failed``.
- :class:`orders.errors.OutcomeUnknown`: the call may have taken effect and nothing can tell.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

import httpx

from orders.errors import PermanentError, TransientError
from orders.model import Order
from orders.money import Money


class NotSupported(Exception):
    """The adapter does not implement this optional operation (see its capabilities)."""


class MalformedResponse(TransientError):
    """The payment system answered something the adapter cannot read. Retried, never final."""


class PspRejected(PermanentError):
    """The payment system definitely refused the request; repeating it cannot help."""


class InvalidSettings(PermanentError):
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


@dataclass(frozen=True, slots=True)
class PspRequest:
    """An HTTP request to make, fully built and signed. Exactly one of json/content/form."""

    method: str
    url: str
    operation: str  # "create", "status", "cancel", "capture", "lookup": a metrics label
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    form: Mapping[str, str] | None = None


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
        except (ValueError, UnicodeDecodeError) as exc:
            snippet = self.content[:80].decode("utf-8", "replace")
            raise MalformedResponse(
                f"HTTP {self.status_code}: body is not JSON ({exc}): {snippet!r}"
            ) from None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


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
    """How a notification names its order: by our id, our number, or the payment system's id."""

    order_id: str | None = None
    number: int | None = None
    psp_id: str | None = None


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
    signed_notifications: bool = False
    currencies: frozenset[str] = frozenset()
    default_expiry: timedelta = timedelta(hours=1)
    poll: PollPolicy = field(default_factory=PollPolicy)


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
    def parse_status(self, order: Order, response: PspResponse) -> StatusReport:
        """One canonical state from a status (or capture) response."""

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

    def parse_lookup(self, order: Order, response: PspResponse) -> Invoice | None:
        raise NotSupported(f"{self.name} cannot look invoices up by our reference")

    def make_auth(self, settings: AdapterSettings) -> httpx.Auth | None:
        """An ``httpx.Auth`` for token flows (PayPal OAuth); None when requests carry their own."""
        return None

    def __repr__(self) -> str:
        return f"<adapter {self.name}>"
