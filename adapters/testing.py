"""The adapter conformance kit: checks every adapter must pass, driven by fixtures, no network.

Subclass :class:`AdapterConformance` in a test module (the ``Test`` prefix makes pytest collect
it) and describe the adapter::

    class TestMyPspConformance(AdapterConformance):
        adapter = my_psp.adapter
        settings = {"shop_id": "123", "secret_key": "fake-secret-for-tests"}
        order = sample_order(money=Money(10000, "RUB"))
        fixtures = FixtureSet(
            psp_id="pay-1",
            create=load_response(HERE / "create.json"),
            states={CanonicalState.PAID: load_response(HERE / "paid.json"), ...},
            notifications=NotificationFixtures(valid=..., tampered=..., stale=..., ...),
            lookup_found=..., lookup_missing=...,  # with lookup_by_reference
            cancelled=...,  # with cancel
        )
        vectors = (SignatureVector("documented example", compute, "ab12..."),)

The fixtures describe one payment for ``order``. The kit checks that the create request is
fixed for a fixed order and carries the idempotency key (or, without one, our reference), that
``API_URL`` moves every request, that each canonical state's fixture parses to that state, that
unreadable bodies raise :class:`MalformedResponse` and error pages a :class:`TransientError`
(a lookup never answers None to them), that a lookup finds the fixture invoice and answers None
only to the "no such payment" fixture, that cancel and capture answers read as such, that
``can_cancel`` never cancels money already taken, that an access token parses to a
:class:`Secret` fetched with credentials in headers only, that notifications are never verified
unless signed and genuine (a replayable signature may verify a stale one, never a tampered one),
that the author's known-signature vectors match, that refunds and payouts (with those
capabilities, :class:`RefundFixtures` and :class:`PayoutFixtures`) are built the same each time
with our id as the key and the exact amount and read as their states, and that secrets stay out
of reprs, exceptions and logs (structlog and stdlib). Request headers may carry credentials
(``Authorization``); the transport owns them and the kit checks they are never logged.

Every failure says what was expected and what was found; ``docs/adapters.md`` walks an author
from an empty module to a passing kit. :mod:`adapters.replay` serves the same fixtures over HTTP
to run the real engine against an adapter.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit
from uuid import UUID

import pytest
import structlog.testing

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    Invoice,
    MalformedResponse,
    Notification,
    NotificationResult,
    NotSupported,
    OrderRef,
    PayoutReport,
    PayoutRequest,
    PayoutState,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    Reply,
    Secret,
    StatusReport,
    Token,
    pairs,
)
from adapters.registry import resolve_settings
from orders.errors import DispatchError, TransientError
from orders.model import Order
from orders.money import Money, currency_exponent
from orders.status import OrderStatus

SAMPLE_ORDER_ID = UUID("0b7e9f4c-3d2a-4c1b-9a8e-5f6d7c8b9a01")
SAMPLE_TIME = datetime(2025, 2, 10, 10, 14, tzinfo=UTC)
SAMPLE_REFUND_ID = UUID("5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
SAMPLE_PAYOUT_ID = UUID("7d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f50")
OTHER_API_URL = "https://psp.conformance.invalid/moved"
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization"})
MIN_SECRET_LENGTH = 8

# Bodies no payment system means as an answer; every adapter must call them malformed.
GENERIC_MALFORMED: Mapping[str, bytes] = {
    "html-page": b"<!DOCTYPE html><html><head><title>Maintenance</title></head><body>Back soon"
    b"</body></html>",
    "empty-body": b"",
    "json-object-missing-fields": b"{}",
    "json-array": b"[]",
    "json-null": b"null",
    "not-utf8": b"\xff\xfe\x00\x81garbage",
}
# Error pages from proxies and overloaded servers: never final, whatever the adapter reads.
SERVER_ERRORS: Mapping[str, tuple[int, bytes]] = {
    "500-html": (500, b"<html><body><h1>500 Internal Server Error</h1></body></html>"),
    "502-html": (
        502,
        b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
    ),
    "503-empty": (503, b""),
    "504-text": (504, b"upstream timed out"),
    "429-empty": (429, b""),
}
# RFC 6749 section 5.2: the token endpoint's answer to client credentials it does not accept.
TOKEN_REFUSED = PspResponse(
    401,
    b'{"error": "invalid_client", "error_description": "Client Authentication failed"}',
    {"content-type": "application/json"},
)
# What a successful cancel may read as: the payment is over and no money was taken.
CANCELLED_STATES = frozenset({CanonicalState.REJECTED, CanonicalState.EXPIRED})


def sample_order(**changes: Any) -> Order:
    """A fixed order (number 42, 100.00 RUB, a return URL) about to be submitted."""
    order = Order(
        id=SAMPLE_ORDER_ID,
        number=42,
        site="conformance",
        site_ref="A-42",
        user_id="user-1",
        money=Money(10000, "RUB"),
        adapter="conformance",
        description="Order 42",
        return_url="https://shop.example/return/42",
        metadata={},
        status=OrderStatus.SUBMITTING,
        psp_id=None,
        pay_url=None,
        attempts=0,
        polls=0,
        next_run_at=None,
        lease_until=None,
        lease_token=None,
        expires_at=SAMPLE_TIME + timedelta(hours=1),
        last_error=None,
        idempotency_key=None,
        created_at=SAMPLE_TIME,
        updated_at=SAMPLE_TIME,
        paid_at=None,
    )
    return replace(order, **changes)


def load_response(
    path: str | Path, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> PspResponse:
    """A recorded response body from a file, as the transport would hand it to the adapter."""
    return PspResponse(
        status_code=status_code, content=Path(path).read_bytes(), headers=headers or {}
    )


@dataclass(frozen=True, slots=True)
class SignatureVector:
    """A known input with its known signature, e.g. an example from the payment system's docs.

    ``compute`` runs the adapter's own signing code on the input; the kit compares its result
    with ``expected`` and names the vector when they differ.
    """

    name: str
    compute: Callable[[], str]
    expected: str


@dataclass(frozen=True, slots=True)
class NotificationFixtures:
    """Three pushes about the fixture payment: genuine, altered after sending, and old.

    ``expected_ref`` lists what the genuine one must name (fields left None are not checked);
    ``expected_reply`` is the answer the payment system expects, when it expects a particular one.
    """

    valid: Notification
    tampered: Notification
    stale: Notification
    expected_ref: OrderRef
    expected_reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class FixtureSet:
    """Recorded answers about one payment for the kit's order.

    ``states`` holds one status response per canonical state; states the payment system can
    never report go in ``not_reported``. The ``PAID`` fixture must report the order's money.
    ``create`` is required when ``build_create`` returns a request. ``malformed`` (status
    answers), ``malformed_create`` (create answers) and ``malformed_lookup`` (lookup answers)
    add the adapter's own unreadable cases (an unknown status, a number where a string belongs)
    to the kit's generic ones. ``psp_id`` is the payment system's id for the payment; by default
    the one the create fixture (or the returned :class:`Invoice`) gives.

    The operations the adapter has need their answers: ``lookup_found`` (the lookup finds the
    fixture payment) and ``lookup_missing`` (the payment system surely has none) with
    ``lookup_by_reference``; ``cancelled`` (the answer to a cancel, read by ``parse_status``
    with ``operation="cancel"``) with ``cancel``; ``captured`` (the answer to a capture, paid)
    when ``build_capture`` builds a request; ``token`` (the token endpoint's answer) when
    ``build_token`` builds a request. ``cancelled_state`` pins the state the cancel answer reads
    as (by default rejected or expired). ``refunds`` and ``payouts`` with the capabilities of
    the same names.
    """

    states: Mapping[CanonicalState, PspResponse]
    create: PspResponse | None = None
    psp_id: str | None = None
    malformed: Mapping[str, PspResponse] = field(default_factory=dict)
    malformed_create: Mapping[str, PspResponse] = field(default_factory=dict)
    notifications: NotificationFixtures | None = None
    not_reported: frozenset[CanonicalState] = frozenset()
    lookup_found: PspResponse | None = None
    lookup_missing: PspResponse | None = None
    malformed_lookup: Mapping[str, PspResponse] = field(default_factory=dict)
    cancelled: PspResponse | None = None
    cancelled_state: CanonicalState | None = None
    captured: PspResponse | None = None
    token: PspResponse | None = None
    # With Capabilities.refunds / Capabilities.payouts (issue #14).
    refunds: RefundFixtures | None = None
    payouts: PayoutFixtures | None = None


@dataclass(frozen=True, slots=True)
class RefundFixtures:
    """Recorded answers about one refund of the kit's order, once paid (issue #14).

    ``states`` holds one answer per :class:`RefundState` (states the payment system never
    reports go in ``not_reported``), read by ``parse_refund_status`` and, unless ``created``
    gives the answers to the refund request itself, by ``parse_refund`` too. ``rejected`` is a
    definite refusal of the refund request ("amount exceeds what is left"), read by
    ``parse_refund``. ``money`` is the refund the fixtures describe (by default the order's
    whole amount); the succeeded fixture must report it. ``psp_refund_id`` is the payment
    system's id the pending and succeeded fixtures give. ``malformed`` adds the adapter's own
    unreadable answers (an unknown status) to the kit's generic ones.
    """

    states: Mapping[RefundState, PspResponse]
    rejected: PspResponse
    psp_refund_id: str
    money: Money | None = None
    created: Mapping[RefundState, PspResponse] = field(default_factory=dict)
    not_reported: frozenset[RefundState] = frozenset()
    malformed: Mapping[str, PspResponse] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PayoutFixtures:
    """Recorded answers about one payout (a withdrawal), as :class:`RefundFixtures` for refunds.

    ``destination`` is where the kit's payout goes (adapter-specific, see
    :class:`adapters.base.PayoutRequest`); ``money`` its amount (by default the kit order's).
    """

    states: Mapping[PayoutState, PspResponse]
    rejected: PspResponse
    psp_payout_id: str
    destination: Mapping[str, str]
    money: Money | None = None
    created: Mapping[PayoutState, PspResponse] = field(default_factory=dict)
    not_reported: frozenset[PayoutState] = frozenset()
    malformed: Mapping[str, PspResponse] = field(default_factory=dict)


def _ordered_pairs(value: Any) -> list[tuple[str, str]]:
    """Pairs as the request sends them: a mapping sorted (its order means nothing), a sequence
    of pairs as given (repeated and nested keys keep their order)."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return sorted((str(k), str(v)) for k, v in value.items())
    return [(str(k), str(v)) for k, v in pairs(value)]


def canonical_request(request: PspRequest) -> bytes:
    """A request as bytes, stable across runs, for byte-for-byte comparison."""
    shape = {
        "method": request.method,
        "url": request.url,
        "operation": request.operation,
        "headers": sorted((k.lower(), v) for k, v in request.headers.items()),
        "params": _ordered_pairs(request.params),
        "json": request.json,
        "content": None if request.content is None else request.content.hex(),
        "form": None if request.form is None else _ordered_pairs(request.form),
    }
    return json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str).encode()


def _differences(first: PspRequest, second: PspRequest) -> str:
    """Where two requests differ, for a failure message; credential headers never shown."""

    def shown(name: str, value: str) -> str:
        return "<credentials>" if name.lower() in SENSITIVE_HEADERS else repr(value)

    found: list[str] = []
    one, two = json.loads(canonical_request(first)), json.loads(canonical_request(second))
    for part in sorted(one):
        if part == "headers":
            a, b = dict(one["headers"]), dict(two["headers"])
            for name in sorted(set(a) | set(b)):
                before, after = a.get(name, "-"), b.get(name, "-")
                if before != after:
                    found.append(f"header {name}: {shown(name, before)} then {shown(name, after)}")
        elif one[part] != two[part]:
            found.append(f"{part}: {one[part]!r} then {two[part]!r}")
    return "; ".join(found)


# A compact JWS (header.payload.signature, base64url): Robokassa's refund bodies.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]*")


def _jws_payload(content: str) -> str:
    """The decoded payload of a body that is a compact JWS, else ''."""
    match = _COMPACT_JWS.fullmatch(content.strip())
    if match is None:
        return ""
    segment = match.group(1)
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode(
            "utf-8", "replace"
        )
    except (binascii.Error, ValueError):
        return ""


def request_payload(request: PspRequest) -> str:
    """Everything of a request except its headers, as text to search; a body that is a compact
    JWS is searched in its decoded payload too."""
    content = "" if request.content is None else request.content.decode("utf-8", "replace")
    return " ".join(
        (
            request.url,
            json.dumps(_ordered_pairs(request.params)),
            json.dumps(request.json, sort_keys=True, default=str),
            content,
            _jws_payload(content),
            json.dumps(_ordered_pairs(request.form)),
        )
    )


def _exception_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 20:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return " ".join(parts)


def _attempt(call: Callable[..., Any], *args: Any) -> Any:
    """The call's result, or the DispatchError/NotSupported it raised (other errors propagate)."""
    try:
        return call(*args)
    except (DispatchError, NotSupported) as exc:
        return exc


def _expect_error(
    kind: type[BaseException], what: str, call: Callable[..., Any], *args: Any
) -> BaseException:
    """The ``kind`` error ``call`` raised; a failure naming ``what`` if it answered or raised
    another of paydispatch's errors. Anything else (a KeyError from a careless parser)
    propagates, so the test errors out with the adapter's own traceback."""
    try:
        result = call(*args)
    except kind as exc:
        return exc
    except (DispatchError, NotSupported) as exc:
        pytest.fail(
            f"{what}: expected {kind.__name__}, found {type(exc).__name__}: {exc}", pytrace=False
        )
    pytest.fail(f"{what}: expected {kind.__name__}, the adapter answered {result!r}", pytrace=False)


def _carries_secret(value: str, secrets: Sequence[str]) -> bool:
    """A header value holding a secret as is, or base64-encoded (HTTP Basic auth)."""
    if any(secret in value for secret in secrets):
        return True
    for word in value.split():
        try:
            decoded = base64.b64decode(word, validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue
        if any(secret in decoded for secret in secrets):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _MoneyOut:
    """Refunds or payouts: the kit checks both alike."""

    noun: str  # "refund" or "payout", also the operation name
    declared: bool
    idempotent: bool
    fixtures: RefundFixtures | PayoutFixtures | None
    first: Any  # the request as first sent (no psp id yet)
    known: Any  # the request once the payment system's id is known
    build: Callable[..., PspRequest]
    parse: Callable[..., Any]
    build_status: Callable[..., PspRequest]
    parse_status: Callable[..., Any]
    states: tuple[str, ...]
    report_type: type

    @staticmethod
    def psp_id(fixtures: RefundFixtures | PayoutFixtures) -> str:
        if isinstance(fixtures, RefundFixtures):
            return fixtures.psp_refund_id
        return fixtures.psp_payout_id

    @staticmethod
    def report_id(report: RefundReport | PayoutReport) -> str | None:
        if isinstance(report, RefundReport):
            return report.psp_refund_id
        return report.psp_payout_id


class AdapterConformance:
    """Checks every adapter passes; subclass as ``Test<Name>Conformance`` and set the fields."""

    adapter: ClassVar[Adapter]
    settings: ClassVar[Mapping[str, str]]  # the config file's table, with fake secrets
    fixtures: ClassVar[FixtureSet]
    order: ClassVar[Order] = sample_order()
    other_api_url: ClassVar[str] = OTHER_API_URL
    # Known inputs with known signatures (the payment system's documented examples).
    vectors: ClassVar[Sequence[SignatureVector]] = ()

    # -- helpers -------------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """One test per state fixture, malformed body, server error and vector, named after it."""
        if "state_case" in metafunc.fixturenames:
            states = sorted(self.fixtures.states.items())
            metafunc.parametrize("state_case", states, ids=[str(s) for s, _ in states])
        if "malformed_case" in metafunc.fixturenames:
            cases = sorted(self._malformed_cases().items())
            metafunc.parametrize("malformed_case", [c for _, c in cases], ids=[n for n, _ in cases])
        if "server_error" in metafunc.fixturenames:
            errors = sorted(SERVER_ERRORS.items())
            metafunc.parametrize(
                "server_error",
                [PspResponse(status_code=code, content=body) for _, (code, body) in errors],
                ids=[name for name, _ in errors],
            )
        if "vector" in metafunc.fixturenames:
            metafunc.parametrize("vector", self.vectors, ids=[v.name for v in self.vectors])
        if "money_out" in metafunc.fixturenames:
            metafunc.parametrize("money_out", ["refunds", "payouts"])
        for name, money_out in (
            ("money_out_case", self._money_out_cases()),
            ("money_out_malformed", self._money_out_malformed()),
        ):
            if name in metafunc.fixturenames and not money_out:
                skip = pytest.mark.skip(reason="the adapter declares no refunds or payouts")
                metafunc.parametrize(name, [pytest.param(None, marks=skip)], ids=["none"])
            elif name in metafunc.fixturenames:
                ids = [f"{operation}-{label}" for _, operation, label, _ in money_out]
                metafunc.parametrize(name, money_out, ids=ids)

    def _answered_operations(self) -> list[str]:
        """The operations whose answers the adapter parses, beyond status."""
        operations = ["status"]
        if self.fixtures.create is not None:
            operations.append("create")
        if self.adapter.capabilities.lookup_by_reference:
            operations.append("lookup")
        if self.token_request(self.resolved()) is not None:
            operations.append("token")
        return operations

    def _malformed_cases(self) -> dict[str, tuple[str, PspResponse]]:
        """Unreadable answers by test id, each with the operation it answers."""
        generic = {name: PspResponse(200, body) for name, body in GENERIC_MALFORMED.items()}
        paid = self.fixtures.states.get(CanonicalState.PAID)
        if paid is not None:
            generic["truncated-paid-fixture"] = PspResponse(
                200, paid.content[: len(paid.content) // 2]
            )
        operations = self._answered_operations()
        cases = {f"{op}-{name}": (op, r) for name, r in generic.items() for op in operations}
        cases.update({f"status-{n}": ("status", r) for n, r in self.fixtures.malformed.items()})
        cases.update(
            {f"create-{n}": ("create", r) for n, r in self.fixtures.malformed_create.items()}
        )
        cases.update(
            {f"lookup-{n}": ("lookup", r) for n, r in self.fixtures.malformed_lookup.items()}
        )
        return cases

    def resolved(self, **overrides: str) -> AdapterSettings:
        """Settings from ``settings`` alone: the real environment must not leak into the kit."""
        return resolve_settings(self.adapter, configured={**self.settings, **overrides}, environ={})

    def new_order(self) -> Order:
        return replace(self.order, adapter=self.adapter.name)

    def invoiced_order(self) -> Order:
        """The order once its invoice exists, as status, cancel and capture see it."""
        order = self.new_order()
        psp_id = self.fixtures.psp_id
        pay_url = None
        if psp_id is None:
            invoice = self.invoice()
            psp_id, pay_url = invoice.psp_id, invoice.pay_url
        return replace(order, status=OrderStatus.AWAITING_PAYMENT, psp_id=psp_id, pay_url=pay_url)

    def invoice(self) -> Invoice:
        order = self.new_order()
        built = self.adapter.build_create(order, self.resolved())
        if isinstance(built, Invoice):
            return built
        assert self.fixtures.create is not None, (
            "build_create returns a request, so FixtureSet.create must hold the payment "
            "system's answer to it; found create=None"
        )
        return self.adapter.parse_create(order, self.fixtures.create)

    def expected_psp_id(self) -> str:
        """The fixture payment's id: ``FixtureSet.psp_id``, else the created invoice's."""
        return self.fixtures.psp_id or self.invoice().psp_id

    def token_request(self, settings: AdapterSettings) -> PspRequest | None:
        return self.adapter.build_token(settings)

    def built_requests(self, settings: AdapterSettings) -> dict[str, PspRequest | Invoice]:
        """Every request (or invoice) the adapter builds for the kit's order, by operation."""
        invoiced = self.invoiced_order()
        built: dict[str, PspRequest | Invoice] = {
            "create": self.adapter.build_create(self.new_order(), settings),
            "status": self.adapter.build_status(invoiced, settings),
        }
        optional = {
            "cancel": self.adapter.build_cancel,
            "capture": self.adapter.build_capture,
            "lookup": self.adapter.build_lookup,
        }
        for operation, build in optional.items():
            order = self.new_order() if operation == "lookup" else invoiced
            result = _attempt(build, order, settings)
            if isinstance(result, PspRequest):
                built[operation] = result
        token = self.token_request(settings)
        if token is not None:
            built["token"] = token
        built.update(self._money_out_requests(settings))
        return built

    def _money_out_requests(self, settings: AdapterSettings) -> dict[str, PspRequest]:
        """The refund and payout requests the adapter builds (none raise NotSupported)."""
        built: dict[str, PspRequest] = {}
        refund = self.refund_request(psp_refund_id=None)
        known = self.refund_request()
        payout = self.payout_request(psp_payout_id=None)
        known_payout = self.payout_request()
        calls: dict[str, tuple[Callable[..., Any], object]] = {
            "refund": (self.adapter.build_refund, refund),
            "refund_status": (self.adapter.build_refund_status, known),
            "payout": (self.adapter.build_payout, payout),
            "payout_status": (self.adapter.build_payout_status, known_payout),
        }
        for operation, (build, request) in calls.items():
            result = _attempt(build, request, settings)
            if isinstance(result, PspRequest):
                built[operation] = result
        return built

    def paid_order(self) -> Order:
        """The order once paid, as a refund names it."""
        return replace(self.invoiced_order(), status=OrderStatus.PAID, paid_at=SAMPLE_TIME)

    def refund_request(self, **changes: Any) -> RefundRequest:
        """The kit's refund: the fixtures' money (or the whole order) of the paid order, with
        the fixtures' ``psp_refund_id`` (pass ``psp_refund_id=None`` for a first send) and the
        ``psp_payment_id`` the paid fixture reports."""
        fixtures = self.fixtures.refunds
        order = self.paid_order()
        paid = self.fixtures.states.get(CanonicalState.PAID)
        payment = None
        if fixtures is not None and paid is not None:
            report = _attempt(self.adapter.parse_status, order, paid, self.resolved())
            payment = report.psp_payment_id if isinstance(report, StatusReport) else None
        refund = RefundRequest(
            id=SAMPLE_REFUND_ID,
            order=order,
            money=(fixtures.money if fixtures else None) or order.money,
            reason="Returned by the buyer",
            psp_refund_id=fixtures.psp_refund_id if fixtures else None,
            psp_payment_id=payment,
        )
        return replace(refund, **changes)

    def payout_request(self, **changes: Any) -> PayoutRequest:
        """The kit's payout: the fixtures' money and destination, the fixtures' id."""
        fixtures = self.fixtures.payouts
        payout = PayoutRequest(
            id=SAMPLE_PAYOUT_ID,
            money=(fixtures.money if fixtures else None) or self.order.money,
            destination=fixtures.destination if fixtures else {},
            description="Withdrawal 42",
            psp_payout_id=fixtures.psp_payout_id if fixtures else None,
        )
        return replace(payout, **changes)

    def secrets(self) -> list[str]:
        settings = self.resolved()
        return [settings.get(s.key) for s in self.adapter.settings_spec if s.secret]

    def parse_token(self) -> Token:
        """The token fixture parsed; fails when the adapter needs a token and none is given."""
        assert self.fixtures.token is not None, (
            "build_token returns a request, so FixtureSet.token must hold the token endpoint's "
            "answer to it; found token=None"
        )
        return self.adapter.parse_token(self.fixtures.token, self.resolved())

    # -- declaration ---------------------------------------------------------------------------

    def test_declares_name_capabilities_and_settings(self) -> None:
        adapter = self.adapter
        assert isinstance(adapter, Adapter), (
            f"adapter must be an instance of adapters.base.Adapter, found {type(adapter)!r}"
        )
        assert adapter.name, "the adapter needs a name (its entry point and settings prefix)"
        assert adapter.name == adapter.name.lower(), (
            f"adapter names are lower case, found {adapter.name!r}"
        )
        assert isinstance(adapter.capabilities, Capabilities), (
            f"capabilities must be adapters.base.Capabilities, found {adapter.capabilities!r}"
        )
        caps = adapter.capabilities
        assert caps.default_expiry > timedelta(0), (
            f"default_expiry must be positive, found {caps.default_expiry}"
        )
        assert timedelta(0) < caps.poll.first <= caps.poll.cap, (
            f"poll policy needs 0 < first <= cap, found first={caps.poll.first} cap={caps.poll.cap}"
        )
        assert caps.poll.factor >= 1, f"poll factor must be >= 1, found {caps.poll.factor}"
        if caps.currencies:
            assert self.order.money.currency in caps.currencies, (
                f"the kit order is in {self.order.money.currency}, which the adapter does not "
                f"accept ({sorted(caps.currencies)}): set order = sample_order(money=...)"
            )
        assert not caps.signed_notifications or caps.notifications, (
            "signed_notifications without notifications: declare notifications=True"
        )
        assert not caps.replayable_notifications or caps.signed_notifications, (
            "replayable_notifications describes a signature: declare signed_notifications=True"
        )
        assert not caps.cancel_refunds or caps.cancel, (
            "cancel_refunds describes a cancel: declare cancel=True"
        )
        for name in ("partial_refunds", "idempotent_refund", "refund_lookup"):
            assert not getattr(caps, name) or caps.refunds, (
                f"{name} describes refunds: declare refunds=True"
            )
        assert not caps.idempotent_payout or caps.payouts, (
            "idempotent_payout describes payouts: declare payouts=True"
        )
        keys = [spec.key for spec in adapter.settings_spec]
        assert len(keys) == len(set(keys)), f"settings_spec repeats a key: {keys}"
        assert all(k == k.upper() for k in keys), f"setting keys are upper case, found {keys}"

    def test_settings_spec_has_api_url_with_a_default(self) -> None:
        spec = {s.key: s for s in self.adapter.settings_spec}
        assert "API_URL" in spec, (
            f"every adapter has API_URL, so tests can point it elsewhere; found {sorted(spec)}"
        )
        default = spec["API_URL"].default
        assert default is not None, "API_URL needs a default: the payment system's live base URL"
        # https for real payment systems; a local sandbox may serve plain http.
        parts = urlsplit(default)
        assert parts.scheme in {"http", "https"}, (
            f"API_URL's default must be an http(s) URL, found {default!r}"
        )
        assert parts.netloc, f"API_URL's default must name a host, found {default!r}"
        assert not spec["API_URL"].secret, "API_URL is not a secret: it must show in logs"

    def test_test_settings_use_long_fake_secrets(self) -> None:
        # Short secrets would make the secret-leak checks below pass or fail by accident.
        short = [
            s.key
            for s in self.adapter.settings_spec
            if s.secret and len(self.resolved().get(s.key)) < MIN_SECRET_LENGTH
        ]
        assert not short, (
            f"the kit's settings need fake secrets of at least {MIN_SECRET_LENGTH} characters, "
            f"so a leak is found by search; too short: {short}"
        )

    def test_settings_repr_hides_secrets(self) -> None:
        settings = self.resolved()
        shown = f"{settings!r} {settings!s} {self.adapter!r}"
        for spec in self.adapter.settings_spec:
            if spec.secret:
                assert settings.get(spec.key) not in shown, (
                    f"secret setting {spec.key} shows in the repr of the settings or adapter"
                )

    # -- create --------------------------------------------------------------------------------

    def test_create_is_fixed_for_a_fixed_order(self) -> None:
        first = self.adapter.build_create(self.new_order(), self.resolved())
        second = self.adapter.build_create(self.new_order(), self.resolved())
        if isinstance(first, Invoice):
            assert first == second, (
                f"build_create gave two invoices for one order: {first!r} then {second!r}"
            )
            return
        assert isinstance(second, PspRequest), f"build_create answered {second!r}"
        assert canonical_request(first) == canonical_request(second), (
            "build_create must build the same request every time for the same order (a retry "
            f"must be the same call); it differs in {_differences(first, second)}"
        )
        assert first.operation == "create", (
            f"the create request's operation must be 'create', found {first.operation!r}"
        )

    def test_create_carries_the_idempotency_key_or_our_reference(self) -> None:
        order = self.new_order()
        built = self.adapter.build_create(order, self.resolved())
        if isinstance(built, Invoice):
            text = built.pay_url or ""
        else:
            text = request_payload(built) + " " + " ".join(built.headers.values())
        if self.adapter.capabilities.idempotent_create:
            assert order.psp_idempotency_key in text, (
                f"idempotent_create: the create must carry the key {order.psp_idempotency_key!r} "
                "(order.psp_idempotency_key) in a header or the body; it does not"
            )
        else:
            # Without a key, the dispatcher finds an earlier invoice by our order number.
            assert str(order.number) in text or str(order.id) in text, (
                f"without an idempotency key the create must carry our reference (order.id "
                f"{order.id} or order.number {order.number}) so a lookup can find it; it does not"
            )

    def test_create_response_parses_to_an_invoice(self) -> None:
        invoice = self.invoice()
        assert isinstance(invoice, Invoice), f"expected an Invoice, found {invoice!r}"
        assert invoice.psp_id, f"the invoice needs the payment system's id, found {invoice!r}"
        if invoice.pay_url is not None:
            assert urlsplit(invoice.pay_url).scheme in {"http", "https"}, (
                f"the pay URL must be http(s), found {invoice.pay_url!r}"
            )
        if self.fixtures.psp_id is not None:
            assert invoice.psp_id == self.fixtures.psp_id, (
                f"the create fixture should give psp_id {self.fixtures.psp_id!r} "
                f"(FixtureSet.psp_id), found {invoice.psp_id!r}"
            )

    # -- requests ------------------------------------------------------------------------------

    def test_status_request_is_fixed_and_names_the_payment(self) -> None:
        order = self.invoiced_order()
        first = self.adapter.build_status(order, self.resolved())
        second = self.adapter.build_status(order, self.resolved())
        assert canonical_request(first) == canonical_request(second), (
            "build_status must build the same request every time for the same order; it "
            f"differs in {_differences(first, second)}"
        )
        assert first.operation == "status", (
            f"the status request's operation must be 'status', found {first.operation!r}"
        )
        payload = request_payload(first)
        refs = (str(order.psp_id), str(order.id), str(order.number))
        assert any(ref in payload for ref in refs), (
            f"the status request must name the payment (psp_id {order.psp_id!r}, order id or "
            f"number) outside its headers; found {payload!r}"
        )

    def test_requests_start_at_the_configured_api_url(self) -> None:
        for api_url in (self.resolved().api_url, self.other_api_url):
            settings = self.resolved(API_URL=api_url)
            for operation, built in self.built_requests(settings).items():
                url = built.pay_url if isinstance(built, Invoice) else built.url
                assert url is not None, (
                    f"{operation}: an invoice built without a call needs a pay URL, found None"
                )
                assert url.startswith(api_url.rstrip("/")), (
                    f"{operation}: with API_URL={api_url!r} the URL must start there (so tests "
                    f"and fakes can move it), found {url!r}"
                )

    def test_optional_operations_match_capabilities(self) -> None:
        caps, built = self.adapter.capabilities, self.built_requests(self.resolved())
        assert ("cancel" in built) == caps.cancel, (
            f"capabilities.cancel={caps.cancel} but build_cancel "
            f"{'builds a request' if 'cancel' in built else 'raises NotSupported'}"
        )
        assert ("lookup" in built) == caps.lookup_by_reference, (
            f"capabilities.lookup_by_reference={caps.lookup_by_reference} but build_lookup "
            f"{'builds a request' if 'lookup' in built else 'raises NotSupported'}"
        )
        for operation, request in built.items():
            if isinstance(request, PspRequest):
                assert request.operation == operation, (
                    f"the request from build_{operation} must say operation={operation!r}, "
                    f"found {request.operation!r}"
                )
        if not caps.notifications:
            notification = Notification(headers={}, body=b"{}")
            _expect_error(
                NotSupported,
                "notifications=False, so parse_notification must raise NotSupported",
                self.adapter.parse_notification,
                notification,
                self.resolved(),
            )

    # -- status --------------------------------------------------------------------------------

    def test_every_canonical_state_has_a_fixture(self) -> None:
        missing = set(CanonicalState) - set(self.fixtures.states) - self.fixtures.not_reported
        assert not missing, (
            f"add status fixtures for {sorted(missing)} to FixtureSet.states, or list the states "
            "the payment system never reports in not_reported"
        )

    def test_state_fixture_parses_to_its_state(
        self, state_case: tuple[CanonicalState, PspResponse]
    ) -> None:
        state, response = state_case
        report = self.adapter.parse_status(self.invoiced_order(), response, self.resolved())
        assert isinstance(report, StatusReport), (
            f"parse_status must answer a StatusReport, found {report!r}"
        )
        assert report.state is state, (
            f"the {state} fixture must parse to {state}, found {report.state} "
            f"(raw status {report.raw_status!r})"
        )
        assert report.raw_status, (
            "StatusReport.raw_status must carry the payment system's own word, found ''"
        )

    def test_paid_fixture_reports_the_order_money(self) -> None:
        paid = self.fixtures.states.get(CanonicalState.PAID)
        if paid is None:
            pytest.skip("this payment system reports no paid state")
        report = self.adapter.parse_status(self.invoiced_order(), paid, self.resolved())
        assert report.money == self.order.money, (
            f"the paid fixture must report the order's money {self.order.money} (the dispatcher "
            f"compares it with the order), found {report.money}"
        )

    def _parse_answer(self, operation: str, response: PspResponse) -> Any:
        """Parse ``response`` as the answer to ``operation``."""
        settings = self.resolved()
        if operation == "create":
            return self.adapter.parse_create(self.new_order(), response)
        if operation == "lookup":
            return self.adapter.parse_lookup(self.new_order(), response, settings)
        if operation == "token":
            return self.adapter.parse_token(response, settings)
        return self.adapter.parse_status(self.invoiced_order(), response, settings, operation)

    def test_malformed_body_raises_malformed_response(
        self, malformed_case: tuple[str, PspResponse]
    ) -> None:
        operation, response = malformed_case
        body = response.content[:60]
        what = f"an unreadable {operation} answer (HTTP {response.status_code}, body {body!r})"
        if operation == "lookup":
            what += "; a None here would make the dispatcher create a second invoice"
        _expect_error(MalformedResponse, what, self._parse_answer, operation, response)

    def test_server_error_page_is_transient(self, server_error: PspResponse) -> None:
        for operation in self._answered_operations():
            _expect_error(
                TransientError,
                f"a {operation} answered by an HTTP {server_error.status_code} error page must "
                "be transient (retried, never final)",
                self._parse_answer,
                operation,
                server_error,
            )

    # -- lookup --------------------------------------------------------------------------------

    def _lookup_capable(self) -> None:
        fixtures = self.fixtures
        given = fixtures.lookup_found is not None or fixtures.lookup_missing is not None
        if not self.adapter.capabilities.lookup_by_reference:
            assert not given, (
                "lookup fixtures for an adapter without lookup_by_reference: declare it or drop "
                "lookup_found/lookup_missing"
            )
            pytest.skip("the adapter cannot look invoices up")

    def test_lookup_request_names_our_order(self) -> None:
        self._lookup_capable()
        order = self.new_order()
        request = self.adapter.build_lookup(order, self.resolved())
        payload = request_payload(request)
        assert str(order.number) in payload or str(order.id) in payload, (
            f"the lookup must ask by our reference (order.id {order.id} or order.number "
            f"{order.number}) outside its headers; found {payload!r}"
        )

    def test_lookup_finds_the_fixture_invoice(self) -> None:
        self._lookup_capable()
        assert self.fixtures.lookup_found is not None, (
            "lookup_by_reference: FixtureSet.lookup_found must hold the answer to a lookup that "
            "finds the fixture payment; found None"
        )
        found = self.adapter.parse_lookup(
            self.new_order(), self.fixtures.lookup_found, self.resolved()
        )
        expected = self.expected_psp_id()
        assert isinstance(found, Invoice), (
            f"the lookup_found fixture must parse to an Invoice with psp_id {expected!r}, "
            f"found {found!r} (None makes the dispatcher create a second invoice)"
        )
        assert found.psp_id == expected, (
            f"the lookup_found fixture must name psp_id {expected!r}, found {found.psp_id!r}"
        )

    def test_lookup_answers_none_only_when_the_payment_system_has_no_invoice(self) -> None:
        self._lookup_capable()
        assert self.fixtures.lookup_missing is not None, (
            "lookup_by_reference: FixtureSet.lookup_missing must hold the payment system's "
            "answer when it has no payment for the order; found None"
        )
        missing = self.adapter.parse_lookup(
            self.new_order(), self.fixtures.lookup_missing, self.resolved()
        )
        assert missing is None, (
            f"the lookup_missing fixture must parse to None (no invoice: a create is safe), "
            f"found {missing!r}"
        )

    # -- cancel and capture --------------------------------------------------------------------

    def test_cancel_answer_reads_as_cancelled(self) -> None:
        fixtures, caps = self.fixtures, self.adapter.capabilities
        if not caps.cancel:
            assert fixtures.cancelled is None, (
                "a cancelled fixture for an adapter without cancel: declare cancel=True or drop it"
            )
            pytest.skip("the adapter cannot cancel")
        assert fixtures.cancelled is not None, (
            "capabilities.cancel: FixtureSet.cancelled must hold the answer to a cancel; found None"
        )
        report = self.adapter.parse_status(
            self.invoiced_order(), fixtures.cancelled, self.resolved(), "cancel"
        )
        expected = (
            {fixtures.cancelled_state} if fixtures.cancelled_state is not None else CANCELLED_STATES
        )
        assert isinstance(report, StatusReport), f"parse_status answered {report!r}"
        assert report.state in expected, (
            f"the cancelled fixture, read with operation='cancel', must be one of "
            f"{sorted(expected)} (set cancelled_state to pin it), found {report!r}"
        )

    def test_can_cancel_never_gives_back_money_taken(self) -> None:
        caps, order = self.adapter.capabilities, self.invoiced_order()
        reports: dict[str, StatusReport | None] = {"no state read": None}
        for state, response in self.fixtures.states.items():
            reports[str(state)] = self.adapter.parse_status(order, response, self.resolved())
        for name, report in reports.items():
            allowed = self.adapter.can_cancel(order, report)
            if not caps.cancel:
                assert not allowed, f"cancel=False, yet can_cancel({name}) answered True"
            read = report.state if report is not None else None
            if read in {CanonicalState.PAID, CanonicalState.REFUNDED}:
                assert not allowed, (
                    f"can_cancel must answer False for a {read} payment (never cancel money "
                    "already taken), found True"
                )
            if report is None and caps.cancel_refunds:
                assert not allowed, (
                    "cancel_refunds: with no state read the payment may be paid, so can_cancel "
                    "must answer False, found True"
                )

    def test_capture_answer_reads_as_paid(self) -> None:
        capture = _attempt(self.adapter.build_capture, self.invoiced_order(), self.resolved())
        if not isinstance(capture, PspRequest):
            assert self.fixtures.captured is None, (
                "a captured fixture for an adapter without a capture step: drop it"
            )
            pytest.skip("the adapter has no capture step")
        assert self.fixtures.captured is not None, (
            "build_capture builds a request: FixtureSet.captured must hold the answer to it; "
            "found None"
        )
        report = self.adapter.parse_status(
            self.invoiced_order(), self.fixtures.captured, self.resolved(), "capture"
        )
        assert report.state is CanonicalState.PAID, (
            f"the captured fixture, read with operation='capture', must be paid, found "
            f"{report.state} (raw status {report.raw_status!r})"
        )
        assert report.money == self.order.money, (
            f"the captured fixture must report the order's money {self.order.money}, "
            f"found {report.money}"
        )

    # -- access tokens -------------------------------------------------------------------------

    def _token_request(self) -> PspRequest:
        request = self.token_request(self.resolved())
        if request is None:
            assert self.fixtures.token is None, (
                "a token fixture for an adapter whose build_token answers None: drop it"
            )
            pytest.skip("the payment system needs no access token")
        return request

    def test_token_fixture_parses_to_a_secret_that_expires(self) -> None:
        self._token_request()
        token = self.parse_token()
        assert isinstance(token, Token), f"parse_token must answer a Token, found {token!r}"
        assert isinstance(token.value, Secret), (
            f"the token's value must be an adapters.base.Secret, found {type(token.value)!r}"
        )
        assert token.value.reveal(), "the token's value is empty"
        assert token.expires_in > timedelta(0), (
            f"the token must say how long it is good for, found expires_in={token.expires_in}"
        )
        status = self.adapter.build_status(self.invoiced_order(), self.resolved())
        carried = self.adapter.apply_token(status, token)
        assert any(token.value.reveal() in v for v in carried.headers.values()), (
            "apply_token must put the token on the request's headers; it is in none"
        )
        assert token.value.reveal() not in request_payload(carried), (
            "apply_token must put the token in headers only, found it in the URL or body"
        )

    def test_token_request_carries_credentials_only_in_headers(self) -> None:
        request = self._token_request()
        assert request.operation == "token", (
            f"the token request's operation must be 'token', found {request.operation!r}"
        )
        secrets = self.secrets()
        payload = request_payload(request)
        leaked = [s.key for s in self.adapter.settings_spec if s.secret]
        leaked = [key for key in leaked if self.resolved().get(key) in payload]
        assert not leaked, (
            f"the token request carries {leaked} in its URL or body; client credentials go in "
            "headers only (HTTP Basic), which the transport never logs"
        )
        assert any(_carries_secret(v, secrets) for v in request.headers.values()), (
            "the token request must authenticate with the client credentials in a header "
            "(HTTP Basic auth); no header carries a secret setting"
        )

    def test_refused_client_credentials_are_credentials_rejected(self) -> None:
        self._token_request()
        _expect_error(
            CredentialsRejected,
            "the token endpoint refusing our client credentials (HTTP 401 invalid_client, "
            "RFC 6749 section 5.2) is a CredentialsRejected: the breaker opens, no order fails",
            self.adapter.parse_token,
            TOKEN_REFUSED,
            self.resolved(),
        )

    # -- notifications -------------------------------------------------------------------------

    def _notify(self, notification: Notification) -> NotificationResult | DispatchError:
        result = _attempt(self.adapter.parse_notification, notification, self.resolved())
        assert not isinstance(result, NotSupported), (
            f"notifications=True but parse_notification raised NotSupported: {result}"
        )
        assert isinstance(result, NotificationResult | DispatchError), (
            f"parse_notification must answer a NotificationResult, found {result!r}"
        )
        return result

    def _notification_fixtures(self) -> NotificationFixtures:
        fixtures = self.fixtures.notifications
        if not self.adapter.capabilities.notifications:
            assert fixtures is None, (
                "notification fixtures for an adapter without notifications: declare "
                "notifications=True or drop them"
            )
            pytest.skip("the adapter accepts no notifications")
        assert fixtures is not None, (
            "notifications=True: FixtureSet.notifications must hold valid, tampered and stale "
            "notifications; found None"
        )
        return fixtures

    def test_valid_notification_names_the_order(self) -> None:
        fixtures = self._notification_fixtures()
        caps = self.adapter.capabilities
        result = self._notify(fixtures.valid)
        assert isinstance(result, NotificationResult), (
            f"the valid notification must parse, found {type(result).__name__}: {result}"
        )
        for name in ("order_id", "number", "psp_id"):
            expected = getattr(fixtures.expected_ref, name)
            if expected is not None:
                found = getattr(result.ref, name)
                assert found == expected, (
                    f"the valid notification must name {name}={expected!r}, found {found!r}"
                )
        assert result.ref != OrderRef(), (
            "the valid notification must name its order (ref.order_id, number or psp_id), "
            "found an empty OrderRef"
        )
        if fixtures.expected_reply is not None:
            assert result.reply == fixtures.expected_reply, (
                f"the payment system expects the reply {fixtures.expected_reply!r}, "
                f"found {result.reply!r}"
            )
        assert 200 <= result.reply.status_code < 300, (
            f"a genuine notification is acknowledged with a 2xx, found {result.reply!r}"
        )
        if not caps.signed_notifications:
            assert not result.verified, (
                "an unsigned notification is only ever a hint: found verified=True"
            )
            # Anyone can send one: the dispatcher finds its order by the payment system's id
            # alone, never by our (guessable) id or number.
            assert result.ref.psp_id, (
                "an unsigned notification must name the payment system's id (ref.psp_id): "
                f"the dispatcher polls no order on our ids alone; found {result.ref!r}"
            )
            return
        assert result.verified, (
            "signed_notifications: the valid fixture's signature must verify, found verified=False"
        )
        if not caps.replayable_notifications:
            # A replayable one is a hint whatever it reports: the dispatcher polls the order.
            assert result.report is not None, (
                "a verified notification must carry the StatusReport it states, found None"
            )

    def test_tampered_notification_is_never_verified(self) -> None:
        result = self._notify(self._notification_fixtures().tampered)
        assert not (isinstance(result, NotificationResult) and result.verified), (
            "the tampered notification fixture verified: a body changed after signing must fail "
            "its signature check"
        )

    def test_stale_notification_is_never_verified(self) -> None:
        fixtures = self._notification_fixtures()
        if self.adapter.capabilities.replayable_notifications:
            pytest.skip("the signature carries no timestamp: a replay cannot be told apart")
        result = self._notify(fixtures.stale)
        assert not (isinstance(result, NotificationResult) and result.verified), (
            "the stale notification fixture verified: a notification older than the tolerance "
            "must not verify (or declare replayable_notifications=True if the payment system's "
            "signature has no timestamp)"
        )

    def test_garbage_notification_is_never_verified(self) -> None:
        valid = self._notification_fixtures().valid
        garbage = replace(valid, body=b"<html>not a notification</html>")
        result = self._notify(garbage)
        assert not (isinstance(result, NotificationResult) and result.verified), (
            "an HTML body with the valid fixture's headers verified: only a genuine body may"
        )

    # -- refunds and payouts (issue #14) -------------------------------------------------------

    def _money_out(self, kind: str) -> _MoneyOut:
        adapter, caps, fixtures = self.adapter, self.adapter.capabilities, self.fixtures
        if kind == "refunds":
            return _MoneyOut(
                noun="refund",
                declared=caps.refunds,
                idempotent=caps.idempotent_refund,
                fixtures=fixtures.refunds,
                first=self.refund_request(psp_refund_id=None),
                known=self.refund_request(),
                build=adapter.build_refund,
                parse=adapter.parse_refund,
                build_status=adapter.build_refund_status,
                parse_status=adapter.parse_refund_status,
                # A refund's status read never says REVERSED (only a notification of a dispute
                # won does), so no fixture is asked for it.
                states=tuple(s for s in RefundState if s is not RefundState.REVERSED),
                report_type=RefundReport,
            )
        return _MoneyOut(
            noun="payout",
            declared=caps.payouts,
            idempotent=caps.idempotent_payout,
            fixtures=fixtures.payouts,
            first=self.payout_request(psp_payout_id=None),
            known=self.payout_request(),
            build=adapter.build_payout,
            parse=adapter.parse_payout,
            build_status=adapter.build_payout_status,
            parse_status=adapter.parse_payout_status,
            states=tuple(PayoutState),
            report_type=PayoutReport,
        )

    def _money_out_capable(self, kind: str) -> tuple[_MoneyOut, RefundFixtures | PayoutFixtures]:
        out = self._money_out(kind)
        if not out.declared:
            pytest.skip(f"the adapter declares no {kind}")
        assert out.fixtures is not None, (
            f"capabilities.{kind}: FixtureSet.{kind} must hold the payment system's {out.noun} "
            "answers; found None"
        )
        return out, out.fixtures

    def _money_out_cases(self) -> list[tuple[str, str, str, PspResponse]]:
        """(kind, operation, name, response) of every money-out answer fixture, for ids."""
        cases: list[tuple[str, str, str, PspResponse]] = []
        for kind, fixtures in (
            ("refunds", self.fixtures.refunds),
            ("payouts", self.fixtures.payouts),
        ):
            if fixtures is None:
                continue
            noun = kind[:-1]
            for state, response in fixtures.states.items():
                cases.append((kind, f"{noun}_status", str(state), response))
                if not fixtures.created:
                    cases.append((kind, noun, str(state), response))
            for state, response in fixtures.created.items():
                cases.append((kind, noun, str(state), response))
        return cases

    def _money_out_malformed(self) -> list[tuple[str, str, str, PspResponse]]:
        cases: list[tuple[str, str, str, PspResponse]] = []
        for kind, fixtures in (
            ("refunds", self.fixtures.refunds),
            ("payouts", self.fixtures.payouts),
        ):
            if fixtures is None:
                continue
            noun = kind[:-1]
            bodies = {name: PspResponse(200, body) for name, body in GENERIC_MALFORMED.items()}
            bodies.update(fixtures.malformed)
            for operation in (noun, f"{noun}_status"):
                cases += [(kind, operation, name, r) for name, r in sorted(bodies.items())]
        return cases

    def _parse_money_out(self, out: _MoneyOut, operation: str, response: PspResponse) -> Any:
        if operation == out.noun:
            return out.parse(out.first, response, self.resolved())
        return out.parse_status(out.known, response, self.resolved())

    def test_money_out_operations_match_capabilities(self, money_out: str) -> None:
        out = self._money_out(money_out)
        settings = self.resolved()
        first = _attempt(out.build, out.first, settings)
        status = _attempt(out.build_status, out.known, settings)
        if not out.declared:
            assert out.fixtures is None, (
                f"{money_out} fixtures for an adapter without {money_out}: declare "
                f"{money_out}=True or drop FixtureSet.{money_out}"
            )
            for name, result in ((out.noun, first), (f"{out.noun}_status", status)):
                assert isinstance(result, NotSupported), (
                    f"{money_out}=False, so build_{name} must raise NotSupported, found {result!r}"
                )
            return
        for name, result in ((out.noun, first), (f"{out.noun}_status", status)):
            assert isinstance(result, PspRequest), (
                f"{money_out}=True, so build_{name} must build a request, found {result!r}"
            )
            assert result.operation == name, (
                f"the request from build_{name} must say operation={name!r}, "
                f"found {result.operation!r}"
            )

    def test_money_out_request_is_fixed_and_carries_our_key(self, money_out: str) -> None:
        out, _ = self._money_out_capable(money_out)
        first = out.build(out.first, self.resolved())
        second = out.build(out.first, self.resolved())
        assert canonical_request(first) == canonical_request(second), (
            f"build_{out.noun} must build the same request every time for the same {out.noun} "
            f"(a re-send must be the same call); it differs in {_differences(first, second)}"
        )
        text = request_payload(first) + " " + " ".join(first.headers.values())
        if out.idempotent:
            assert str(out.first.id) in text, (
                f"idempotent_{out.noun}: the {out.noun} request must carry our id "
                f"{out.first.id} as its idempotency key (a header or the body); it does not"
            )
        if isinstance(out.first, RefundRequest):
            psp_id = out.first.psp_payment_id or out.first.order.psp_id or "<no psp_id>"
            assert psp_id in request_payload(first), (
                f"the refund request must name the payment ({psp_id!r}: psp_payment_id, else "
                f"order.psp_id) outside its headers; found {request_payload(first)!r}"
            )

    def test_money_out_amount_goes_out_exactly(self, money_out: str) -> None:
        out, _ = self._money_out_capable(money_out)
        currency = out.first.money.currency
        for amount in (out.first.money.amount, 9871, 4005):
            money = Money(amount, currency)
            request = out.build(replace(out.first, money=money), self.resolved())
            payload = request_payload(request)
            exponent = currency_exponent(currency)
            major = str(Decimal(amount).scaleb(-exponent)) if exponent else str(amount)
            # A JSON number drops trailing zeros: 12.5 for 12.50.
            bare = format(Decimal(major).normalize(), "f")
            words = {str(amount), major, bare}
            assert any(re.search(rf"(?<![\d.]){re.escape(w)}(?![\d.])", payload) for w in words), (
                f"a {out.noun} of {money} must carry the amount as {amount} minor units or "
                f"{major} {currency}; found {payload!r}"
            )

    def test_money_out_status_request_names_it(self, money_out: str) -> None:
        out, fixtures = self._money_out_capable(money_out)
        first = out.build_status(out.known, self.resolved())
        second = out.build_status(out.known, self.resolved())
        assert canonical_request(first) == canonical_request(second), (
            f"build_{out.noun}_status must build the same request every time; it differs in "
            f"{_differences(first, second)}"
        )
        psp_id = out.psp_id(fixtures)
        payload = request_payload(first)
        assert psp_id in payload or str(out.known.id) in payload, (
            f"the {out.noun} status request must name the {out.noun} ({psp_id!r} or our id "
            f"{out.known.id}) outside its headers; found {payload!r}"
        )
        if isinstance(out.first, RefundRequest) and self.adapter.capabilities.refund_lookup:
            by_ours = out.build_status(out.first, self.resolved())
            assert str(out.first.id) in request_payload(by_ours), (
                "refund_lookup: build_refund_status with psp_refund_id=None must ask by our "
                f"refund id {out.first.id}; found {request_payload(by_ours)!r}"
            )

    def test_every_money_out_state_has_a_fixture(self, money_out: str) -> None:
        out, fixtures = self._money_out_capable(money_out)
        missing = set(out.states) - set(fixtures.states) - set(fixtures.not_reported)
        assert not missing, (
            f"add {out.noun} status fixtures for {sorted(missing)} to FixtureSet.{money_out}."
            "states, or list the states the payment system never reports in not_reported"
        )

    def test_money_out_fixture_parses_to_its_state(
        self, money_out_case: tuple[str, str, str, PspResponse]
    ) -> None:
        kind, operation, state, response = money_out_case
        out, fixtures = self._money_out_capable(kind)
        report = self._parse_money_out(out, operation, response)
        what = f"the {state} {out.noun} fixture read as a {operation} answer"
        assert isinstance(report, out.report_type), (
            f"{what} must give a {out.report_type.__name__}, found {report!r}"
        )
        assert isinstance(report, RefundReport | PayoutReport)
        assert report.state == state, f"{what} must be {state}, found {report!r}"
        assert report.raw_status, f"{what}: raw_status must carry the payment system's word"
        found_id = out.report_id(report)
        expected_id = out.psp_id(fixtures)
        if state != "failed":
            assert found_id == expected_id, (
                f"{what} must name the {out.noun} {expected_id!r} (the dispatcher reads its "
                f"status by it), found {found_id!r}"
            )
        if report.money is not None or state == "succeeded":
            assert report.money == out.first.money, (
                f"{what} must report the {out.noun}'s money {out.first.money} (minor units, "
                f"exact), found {report.money}"
            )

    def test_money_out_refusal_is_psp_rejected(self, money_out: str) -> None:
        out, fixtures = self._money_out_capable(money_out)
        _expect_error(
            PspRejected,
            f"the rejected {out.noun} fixture (a definite refusal: the money did not move)",
            out.parse,
            out.first,
            fixtures.rejected,
            self.resolved(),
        )

    def test_money_out_malformed_is_malformed_response(
        self, money_out_malformed: tuple[str, str, str, PspResponse]
    ) -> None:
        kind, operation, name, response = money_out_malformed
        out, _ = self._money_out_capable(kind)
        _expect_error(
            MalformedResponse,
            f"an unreadable {operation} answer ({name}: {response.content[:60]!r}); the "
            "dispatcher then reads the status, never guesses",
            self._parse_money_out,
            out,
            operation,
            response,
        )

    def test_money_out_server_error_is_transient(self, money_out: str) -> None:
        out, _ = self._money_out_capable(money_out)
        for code, body in SERVER_ERRORS.values():
            for operation in (out.noun, f"{out.noun}_status"):
                _expect_error(
                    TransientError,
                    f"a {operation} answered by an HTTP {code} error page must be transient",
                    self._parse_money_out,
                    out,
                    operation,
                    PspResponse(code, body),
                )

    # -- known signatures ----------------------------------------------------------------------

    def test_signature_vector(self, vector: SignatureVector) -> None:
        computed = vector.compute()
        assert computed == vector.expected, (
            f"signature vector {vector.name!r}: expected {vector.expected!r}, computed {computed!r}"
        )

    # -- secrets -------------------------------------------------------------------------------

    def _exercise(self) -> Iterator[object]:
        """Every operation the kit knows, yielding results, requests and errors to inspect."""
        settings = self.resolved()
        yield from self.built_requests(settings).values()
        yield from self.built_requests(self.resolved(API_URL=self.other_api_url)).values()
        order, invoiced = self.new_order(), self.invoiced_order()
        fixtures = self.fixtures
        responses = [
            *fixtures.states.values(),
            *(response for _, response in self._malformed_cases().values()),
            *(PspResponse(code, body) for code, body in SERVER_ERRORS.values()),
            *(r for r in (fixtures.cancelled, fixtures.captured) if r is not None),
        ]
        if fixtures.create is not None:
            responses.append(fixtures.create)
        lookups = [r for r in (fixtures.lookup_found, fixtures.lookup_missing) if r is not None]
        operations = self._answered_operations()
        for response in [*responses, *lookups]:
            yield _attempt(self.adapter.parse_status, invoiced, response, settings)
            if "create" in operations:
                yield _attempt(self.adapter.parse_create, order, response)
            if "lookup" in operations:
                yield _attempt(self.adapter.parse_lookup, order, response, settings)
        if "token" in operations:
            for response in [*responses, TOKEN_REFUSED]:
                yield _attempt(self.adapter.parse_token, response, settings)
            if fixtures.token is not None:
                token = _attempt(self.adapter.parse_token, fixtures.token, settings)
                yield token
                if isinstance(token, Token):
                    status = self.adapter.build_status(invoiced, settings)
                    yield self.adapter.apply_token(status, token)
        notes = fixtures.notifications
        if notes is not None:
            for notification in (notes.valid, notes.tampered, notes.stale):
                yield _attempt(self.adapter.parse_notification, notification, settings)
        yield from self._exercise_money_out(responses)
        # Every other setting invalid, secrets intact: errors about settings must not dump them.
        spec = self.adapter.settings_spec
        odd = self.resolved(**{s.key: "not-a-valid-value" for s in spec if not s.secret})
        yield _attempt(self.adapter.build_create, order, odd)
        yield _attempt(self.adapter.build_status, invoiced, odd)
        yield _attempt(self.adapter.build_token, odd)
        if notes is not None:
            yield _attempt(self.adapter.parse_notification, notes.valid, odd)

    def _exercise_money_out(self, responses: Sequence[PspResponse]) -> Iterator[object]:
        settings, adapter = self.resolved(), self.adapter
        if adapter.capabilities.refunds and self.fixtures.refunds is not None:
            refund, known = self.refund_request(psp_refund_id=None), self.refund_request()
            answers = [*responses, *self._refund_answers().values()]
            for response in answers:
                yield _attempt(adapter.parse_refund, refund, response, settings)
                yield _attempt(adapter.parse_refund_status, known, response, settings)
        if adapter.capabilities.payouts and self.fixtures.payouts is not None:
            payout, known_payout = self.payout_request(psp_payout_id=None), self.payout_request()
            answers = [*responses, *self._payout_answers().values()]
            for response in answers:
                yield _attempt(adapter.parse_payout, payout, response, settings)
                yield _attempt(adapter.parse_payout_status, known_payout, response, settings)

    def _refund_answers(self) -> dict[str, PspResponse]:
        fixtures = self.fixtures.refunds
        if fixtures is None:
            return {}
        return {
            **{f"state-{s}": r for s, r in fixtures.states.items()},
            **{f"created-{s}": r for s, r in fixtures.created.items()},
            "rejected": fixtures.rejected,
            **fixtures.malformed,
        }

    def _payout_answers(self) -> dict[str, PspResponse]:
        fixtures = self.fixtures.payouts
        if fixtures is None:
            return {}
        return {
            **{f"state-{s}": r for s, r in fixtures.states.items()},
            **{f"created-{s}": r for s, r in fixtures.created.items()},
            "rejected": fixtures.rejected,
            **fixtures.malformed,
        }

    def _credentials(self, outcomes: Sequence[object]) -> list[tuple[str, str]]:
        """What may never be logged, each with a name for failure messages: secret settings
        (plain and base64), credential headers and access tokens."""
        settings = self.resolved()
        found: list[tuple[str, str]] = []
        for spec in self.adapter.settings_spec:
            if spec.secret:
                value = settings.get(spec.key)
                found += [
                    (f"secret setting {spec.key}", value),
                    (
                        f"secret setting {spec.key} in base64",
                        base64.b64encode(value.encode()).decode(),
                    ),
                ]
        for outcome in outcomes:
            if isinstance(outcome, PspRequest):
                found += [
                    (f"the {name} header of a {outcome.operation} request", value)
                    for name, value in outcome.headers.items()
                    if name.lower() in SENSITIVE_HEADERS
                ]
            elif isinstance(outcome, Token):
                found.append(("the access token", outcome.value.reveal()))
        return [(name, needle) for name, needle in found if needle]

    def test_secrets_stay_out_of_logs_reprs_and_errors(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        with structlog.testing.capture_logs() as structured:
            outcomes = list(self._exercise())
        needles = self._credentials(outcomes)
        logs = " ".join(
            [caplog.text, *(repr(r.__dict__) for r in caplog.records), repr(structured)]
        )
        for name, needle in needles:
            assert needle not in logs, (
                f"{name} reached the logs: adapters log no settings, headers or tokens"
            )
        for outcome in outcomes:
            if isinstance(outcome, PspRequest):
                # Headers may carry credentials for the transport; nothing else may.
                shown = request_payload(outcome)
                where = f"the URL or body of a {outcome.operation} request"
            elif isinstance(outcome, BaseException):
                shown = _exception_text(outcome)
                where = f"a {type(outcome).__name__} raised by the adapter"
            else:
                shown = repr(outcome)
                where = f"the repr of a {type(outcome).__name__}"
            for name, needle in needles:
                assert needle not in shown, (
                    f"{name} shows in {where}; only headers may carry credentials"
                )
