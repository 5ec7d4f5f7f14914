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
        )

The fixtures describe one payment for ``order``. The kit checks that the create request is
fixed for a fixed order and carries the idempotency key (or, without one, our reference), that
``API_URL`` moves every request, that each canonical state's fixture parses to that state, that
unreadable bodies raise :class:`MalformedResponse` and error pages a :class:`TransientError`,
that optional operations match the capabilities, that notifications are never verified unless
signed and genuine, and that secrets stay out of reprs, exceptions and logs (structlog and
stdlib). Request headers may carry credentials (``Authorization``); the transport owns them and
the kit checks they are never logged.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
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
    Invoice,
    MalformedResponse,
    Notification,
    NotificationResult,
    NotSupported,
    OrderRef,
    PspRequest,
    PspResponse,
    Reply,
    StatusReport,
)
from adapters.registry import resolve_settings
from orders.errors import DispatchError, TransientError
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

SAMPLE_ORDER_ID = UUID("0b7e9f4c-3d2a-4c1b-9a8e-5f6d7c8b9a01")
SAMPLE_TIME = datetime(2025, 2, 10, 10, 14, tzinfo=UTC)
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
    answers) and ``malformed_create`` (create answers) add the adapter's own unreadable cases
    (an unknown status, a number where a string belongs) to the kit's generic ones. ``psp_id``
    is the payment system's id for the payment; by default the one the create fixture (or the
    returned :class:`Invoice`) gives.
    """

    states: Mapping[CanonicalState, PspResponse]
    create: PspResponse | None = None
    psp_id: str | None = None
    malformed: Mapping[str, PspResponse] = field(default_factory=dict)
    malformed_create: Mapping[str, PspResponse] = field(default_factory=dict)
    notifications: NotificationFixtures | None = None
    not_reported: frozenset[CanonicalState] = frozenset()


def canonical_request(request: PspRequest) -> bytes:
    """A request as bytes, stable across runs, for byte-for-byte comparison."""
    shape = {
        "method": request.method,
        "url": request.url,
        "operation": request.operation,
        "headers": sorted((k.lower(), v) for k, v in request.headers.items()),
        "params": sorted(request.params.items()),
        "json": request.json,
        "content": None if request.content is None else request.content.hex(),
        "form": None if request.form is None else sorted(request.form.items()),
    }
    return json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str).encode()


def _request_payload(request: PspRequest) -> str:
    """Everything of a request except its headers, as text to search."""
    content = "" if request.content is None else request.content.decode("utf-8", "replace")
    return " ".join(
        (
            request.url,
            json.dumps(sorted(request.params.items())),
            json.dumps(request.json, sort_keys=True, default=str),
            content,
            json.dumps(sorted((request.form or {}).items())),
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


class AdapterConformance:
    """Checks every adapter passes; subclass as ``Test<Name>Conformance`` and set the fields."""

    adapter: ClassVar[Adapter]
    settings: ClassVar[Mapping[str, str]]  # the config file's table, with fake secrets
    fixtures: ClassVar[FixtureSet]
    order: ClassVar[Order] = sample_order()
    other_api_url: ClassVar[str] = OTHER_API_URL

    # -- helpers -------------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """One test per state fixture and per malformed body, named after it."""
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

    def _malformed_cases(self) -> dict[str, tuple[str, PspResponse]]:
        """Unreadable answers by test id, each with the operation it answers."""
        generic = {name: PspResponse(200, body) for name, body in GENERIC_MALFORMED.items()}
        paid = self.fixtures.states.get(CanonicalState.PAID)
        if paid is not None:
            generic["truncated-paid-fixture"] = PspResponse(
                200, paid.content[: len(paid.content) // 2]
            )
        operations = ["status"] + (["create"] if self.fixtures.create is not None else [])
        cases = {f"{op}-{name}": (op, r) for name, r in generic.items() for op in operations}
        cases.update({f"status-{n}": ("status", r) for n, r in self.fixtures.malformed.items()})
        cases.update(
            {f"create-{n}": ("create", r) for n, r in self.fixtures.malformed_create.items()}
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
        assert self.fixtures.create is not None, "build_create returns a request: set create"
        return self.adapter.parse_create(order, self.fixtures.create)

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
        return built

    def secrets(self) -> list[str]:
        settings = self.resolved()
        return [settings.get(s.key) for s in self.adapter.settings_spec if s.secret]

    # -- declaration ---------------------------------------------------------------------------

    def test_declares_name_capabilities_and_settings(self) -> None:
        adapter = self.adapter
        assert isinstance(adapter, Adapter)
        assert adapter.name
        assert adapter.name == adapter.name.lower()
        assert isinstance(adapter.capabilities, Capabilities)
        caps = adapter.capabilities
        assert caps.default_expiry > timedelta(0)
        assert timedelta(0) < caps.poll.first <= caps.poll.cap
        assert caps.poll.factor >= 1
        if caps.currencies:
            assert self.order.money.currency in caps.currencies, (
                "kit order in an unsupported currency"
            )
        assert not caps.signed_notifications or caps.notifications
        keys = [spec.key for spec in adapter.settings_spec]
        assert len(keys) == len(set(keys))
        assert all(k == k.upper() for k in keys)

    def test_settings_spec_has_api_url_with_a_default(self) -> None:
        spec = {s.key: s for s in self.adapter.settings_spec}
        assert "API_URL" in spec, "every adapter has API_URL, so tests can point it elsewhere"
        default = spec["API_URL"].default
        assert default is not None
        # https for real payment systems; a local sandbox may serve plain http.
        assert urlsplit(default).scheme in {"http", "https"}
        assert urlsplit(default).netloc
        assert not spec["API_URL"].secret

    def test_test_settings_use_long_fake_secrets(self) -> None:
        # Short secrets would make the secret-leak checks below pass or fail by accident.
        assert all(len(secret) >= MIN_SECRET_LENGTH for secret in self.secrets())

    def test_settings_repr_hides_secrets(self) -> None:
        settings = self.resolved()
        shown = f"{settings!r} {settings!s} {self.adapter!r}"
        for secret in self.secrets():
            assert secret not in shown

    # -- create --------------------------------------------------------------------------------

    def test_create_is_fixed_for_a_fixed_order(self) -> None:
        first = self.adapter.build_create(self.new_order(), self.resolved())
        second = self.adapter.build_create(self.new_order(), self.resolved())
        if isinstance(first, Invoice):
            assert first == second
        else:
            assert isinstance(second, PspRequest)
            assert canonical_request(first) == canonical_request(second)
            assert first.operation == "create"

    def test_create_carries_the_idempotency_key_or_our_reference(self) -> None:
        order = self.new_order()
        built = self.adapter.build_create(order, self.resolved())
        if isinstance(built, Invoice):
            text = built.pay_url or ""
        else:
            text = _request_payload(built) + " " + " ".join(built.headers.values())
        if self.adapter.capabilities.idempotent_create:
            assert order.psp_idempotency_key in text
        else:
            # Without a key, the dispatcher finds an earlier invoice by our order number.
            assert str(order.number) in text or str(order.id) in text

    def test_create_response_parses_to_an_invoice(self) -> None:
        invoice = self.invoice()
        assert isinstance(invoice, Invoice)
        assert invoice.psp_id
        if invoice.pay_url is not None:
            assert urlsplit(invoice.pay_url).scheme in {"http", "https"}
        if self.fixtures.psp_id is not None:
            assert invoice.psp_id == self.fixtures.psp_id

    # -- requests ------------------------------------------------------------------------------

    def test_status_request_is_fixed_and_names_the_payment(self) -> None:
        order = self.invoiced_order()
        first = self.adapter.build_status(order, self.resolved())
        second = self.adapter.build_status(order, self.resolved())
        assert canonical_request(first) == canonical_request(second)
        assert first.operation == "status"
        payload = _request_payload(first)
        assert any(ref in payload for ref in (str(order.psp_id), str(order.id), str(order.number)))

    def test_requests_start_at_the_configured_api_url(self) -> None:
        for api_url in (self.resolved().api_url, self.other_api_url):
            settings = self.resolved(API_URL=api_url)
            for operation, built in self.built_requests(settings).items():
                url = built.pay_url if isinstance(built, Invoice) else built.url
                assert url is not None, operation
                assert url.startswith(api_url.rstrip("/")), (operation, url)

    def test_optional_operations_match_capabilities(self) -> None:
        caps, built = self.adapter.capabilities, self.built_requests(self.resolved())
        assert ("cancel" in built) == caps.cancel
        assert ("lookup" in built) == caps.lookup_by_reference
        for operation, request in built.items():
            if isinstance(request, PspRequest):
                assert request.operation == operation
        if not caps.notifications:
            notification = Notification(headers={}, body=b"{}")
            with pytest.raises(NotSupported):
                self.adapter.parse_notification(notification, self.resolved())

    # -- status --------------------------------------------------------------------------------

    def test_every_canonical_state_has_a_fixture(self) -> None:
        missing = set(CanonicalState) - set(self.fixtures.states) - self.fixtures.not_reported
        assert not missing, f"add status fixtures for {sorted(missing)} or list them not_reported"

    def test_state_fixture_parses_to_its_state(
        self, state_case: tuple[CanonicalState, PspResponse]
    ) -> None:
        state, response = state_case
        report = self.adapter.parse_status(self.invoiced_order(), response)
        assert isinstance(report, StatusReport)
        assert report.state is state
        assert report.raw_status

    def test_paid_fixture_reports_the_order_money(self) -> None:
        paid = self.fixtures.states.get(CanonicalState.PAID)
        if paid is None:
            pytest.skip("this payment system reports no paid state")
        report = self.adapter.parse_status(self.invoiced_order(), paid)
        assert report.money == self.order.money

    def test_malformed_body_raises_malformed_response(
        self, malformed_case: tuple[str, PspResponse]
    ) -> None:
        operation, response = malformed_case
        if operation == "create":
            with pytest.raises(MalformedResponse):
                self.adapter.parse_create(self.new_order(), response)
        else:
            with pytest.raises(MalformedResponse):
                self.adapter.parse_status(self.invoiced_order(), response)

    def test_server_error_page_is_transient(self, server_error: PspResponse) -> None:
        with pytest.raises(TransientError):
            self.adapter.parse_status(self.invoiced_order(), server_error)
        if self.fixtures.create is not None:
            with pytest.raises(TransientError):
                self.adapter.parse_create(self.new_order(), server_error)

    # -- notifications -------------------------------------------------------------------------

    def _notify(self, notification: Notification) -> NotificationResult | DispatchError:
        result = _attempt(self.adapter.parse_notification, notification, self.resolved())
        assert not isinstance(result, NotSupported)
        assert isinstance(result, NotificationResult | DispatchError)
        return result

    def _notification_fixtures(self) -> NotificationFixtures:
        fixtures = self.fixtures.notifications
        if not self.adapter.capabilities.notifications:
            assert fixtures is None, "notification fixtures for an adapter without notifications"
            pytest.skip("the adapter accepts no notifications")
        assert fixtures is not None, "the adapter accepts notifications: set notifications"
        return fixtures

    def test_valid_notification_names_the_order(self) -> None:
        fixtures = self._notification_fixtures()
        result = self._notify(fixtures.valid)
        assert isinstance(result, NotificationResult)
        for name in ("order_id", "number", "psp_id"):
            expected = getattr(fixtures.expected_ref, name)
            if expected is not None:
                assert getattr(result.ref, name) == expected, name
        assert any(
            v is not None for v in (result.ref.order_id, result.ref.number, result.ref.psp_id)
        )
        if fixtures.expected_reply is not None:
            assert result.reply == fixtures.expected_reply
        assert 200 <= result.reply.status_code < 300
        if self.adapter.capabilities.signed_notifications:
            assert result.verified
            assert result.report is not None
        else:
            assert not result.verified, "an unsigned notification is only ever a hint"

    def test_tampered_stale_and_garbage_notifications_are_never_verified(self) -> None:
        fixtures = self._notification_fixtures()
        garbage = replace(fixtures.valid, body=b"<html>not a notification</html>")
        for name, notification in (
            ("tampered", fixtures.tampered),
            ("stale", fixtures.stale),
            ("garbage", garbage),
        ):
            result = self._notify(notification)
            if isinstance(result, NotificationResult):
                assert not result.verified, name

    # -- secrets -------------------------------------------------------------------------------

    def _exercise(self) -> Iterator[object]:
        """Every operation the kit knows, yielding results, requests and errors to inspect."""
        settings = self.resolved()
        yield from self.built_requests(settings).values()
        yield from self.built_requests(self.resolved(API_URL=self.other_api_url)).values()
        order, invoiced = self.new_order(), self.invoiced_order()
        responses = [
            *self.fixtures.states.values(),
            *(response for _, response in self._malformed_cases().values()),
            *(PspResponse(code, body) for code, body in SERVER_ERRORS.values()),
        ]
        create = self.fixtures.create
        if create is not None:
            responses.append(create)
        for response in responses:
            yield _attempt(self.adapter.parse_status, invoiced, response)
            if create is not None:
                yield _attempt(self.adapter.parse_create, order, response)
        notes = self.fixtures.notifications
        if notes is not None:
            for notification in (notes.valid, notes.tampered, notes.stale):
                yield _attempt(self.adapter.parse_notification, notification, settings)
        # Every other setting invalid, secrets intact: errors about settings must not dump them.
        spec = self.adapter.settings_spec
        odd = self.resolved(**{s.key: "not-a-valid-value" for s in spec if not s.secret})
        yield _attempt(self.adapter.build_create, order, odd)
        yield _attempt(self.adapter.build_status, invoiced, odd)
        if notes is not None:
            yield _attempt(self.adapter.parse_notification, notes.valid, odd)

    def test_secrets_stay_out_of_logs_reprs_and_errors(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        with structlog.testing.capture_logs() as structured:
            outcomes = list(self._exercise())
        secrets = self.secrets()
        encoded = [base64.b64encode(s.encode()).decode() for s in secrets]
        credentials = [
            value
            for built in outcomes
            if isinstance(built, PspRequest)
            for name, value in built.headers.items()
            if name.lower() in SENSITIVE_HEADERS
        ]
        logs = " ".join(
            [caplog.text, *(repr(r.__dict__) for r in caplog.records), repr(structured)]
        )
        for needle in [*secrets, *encoded, *credentials]:
            assert needle not in logs, "a credential reached the logs"
        for outcome in outcomes:
            if isinstance(outcome, PspRequest):
                # Headers may carry credentials for the transport; nothing else may.
                shown = _request_payload(outcome)
            elif isinstance(outcome, BaseException):
                shown = _exception_text(outcome)
            else:
                shown = repr(outcome)
            for needle in [*secrets, *encoded, *credentials]:
                assert needle not in shown, f"a credential shows in {type(outcome).__name__}"
