"""The conformance kit itself: it fails adapters with known defects and fits other API shapes."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
import structlog

from adapters import yookassa
from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    Invoice,
    MalformedResponse,
    Notification,
    NotificationResult,
    OrderRef,
    PspRequest,
    PspResponse,
    SettingSpec,
    StatusReport,
)
from adapters.testing import (
    AdapterConformance,
    FixtureSet,
    NotificationFixtures,
    load_response,
    sample_order,
)
from orders.model import Order
from orders.money import Money

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yookassa"
PAYMENT_ID = "2f3b588d-000f-5000-8000-1d6e87c7fbde"
SECRET = "test_Fh8hUAVVBGUGbjmlzba6TB0iyUbos_lueTHE-axOwM0"


def _fixture(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code)


def _notification(name: str) -> Notification:
    body = (FIXTURES / f"{name}.json").read_bytes()
    return Notification(headers={}, body=body, remote_addr="185.71.76.10")


YOOKASSA_FIXTURES = FixtureSet(
    psp_id=PAYMENT_ID,
    create=_fixture("create_pending"),
    states={
        CanonicalState.PENDING: _fixture("status_pending"),
        CanonicalState.PAID: _fixture("status_succeeded"),
        CanonicalState.REJECTED: _fixture("status_canceled_insufficient_funds"),
        CanonicalState.EXPIRED: _fixture("status_canceled_expired_on_confirmation"),
        CanonicalState.REFUNDED: _fixture("status_refunded"),
    },
    notifications=NotificationFixtures(
        valid=_notification("notification_payment_succeeded"),
        tampered=_notification("notification_payment_succeeded_tampered"),
        stale=_notification("notification_payment_waiting_for_capture_stale"),
        expected_ref=OrderRef(psp_id=PAYMENT_ID),
    ),
)


def kit_for(adapter: yookassa.YooKassa, fixtures: FixtureSet = YOOKASSA_FIXTURES) -> Any:
    """A conformance suite for a (deliberately broken) YooKassa variant, outside collection."""

    class Kit(AdapterConformance):
        settings: ClassVar[dict[str, str]] = {"shop_id": "100500", "secret_key": SECRET}
        order = sample_order(adapter="yookassa")

    Kit.adapter = adapter
    Kit.fixtures = fixtures
    return Kit()


def _failure(check: Callable[..., None], *args: Any) -> BaseException | None:
    """What a kit check raised for the adapter (None when it passed)."""
    try:
        check(*args)
    except (AssertionError, KeyError, pytest.fail.Exception) as exc:
        return exc
    return None


def _fails(check: Callable[..., None], *args: Any) -> bool:
    return isinstance(_failure(check, *args), AssertionError | pytest.fail.Exception)


# -- defects the kit must catch -----------------------------------------------------------------


class RandomKey(yookassa.YooKassa):
    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        request = super().build_create(order, settings)
        return replace(request, headers={**request.headers, "Idempotence-Key": str(uuid.uuid4())})


class FixedHost(yookassa.YooKassa):
    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        request = super().build_status(order, settings)
        return replace(request, url=f"https://api.yookassa.ru/v3/payments/{order.psp_id}")


class LogsCredentials(yookassa.YooKassa):
    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        request = super().build_status(order, settings)
        structlog.get_logger().debug("status request", headers=dict(request.headers))
        return request


class StdlibLogsSecret(yookassa.YooKassa):
    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        logging.getLogger("psp").debug("using key %s", settings.get("SECRET_KEY"))
        return super().build_create(order, settings)


class SecretInError(yookassa.YooKassa):
    def parse_status(self, order: Order, response: PspResponse) -> StatusReport:
        if not response.content:
            raise MalformedResponse(f"empty body for {SECRET}")
        return super().parse_status(order, response)


class CrashesOnGarbage(yookassa.YooKassa):
    def parse_status(self, order: Order, response: PspResponse) -> StatusReport:
        if response.content == b"{}":
            raise KeyError("status")
        return super().parse_status(order, response)


class TrustsNotifications(yookassa.YooKassa):
    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        result = super().parse_notification(notification, settings)
        return replace(result, verified=True)


class PaidIsPending(yookassa.YooKassa):
    def parse_status(self, order: Order, response: PspResponse) -> StatusReport:
        return replace(super().parse_status(order, response), state=CanonicalState.PENDING)


class RoundsAmounts(yookassa.YooKassa):
    def parse_status(self, order: Order, response: PspResponse) -> StatusReport:
        report = super().parse_status(order, response)
        money = report.money or Money(0, "RUB")
        return replace(report, money=Money(money.amount // 100 * 100 + 1, money.currency))


def test_kit_passes_the_real_yookassa_adapter(caplog: pytest.LogCaptureFixture) -> None:
    kit = kit_for(yookassa.adapter)
    kit.test_create_is_fixed_for_a_fixed_order()
    kit.test_requests_start_at_the_configured_api_url()
    kit.test_secrets_stay_out_of_logs_reprs_and_errors(caplog)
    kit.test_valid_notification_names_the_order()


def test_kit_fails_a_create_request_that_changes_between_calls() -> None:
    assert _fails(kit_for(RandomKey()).test_create_is_fixed_for_a_fixed_order)


def test_kit_fails_a_request_that_ignores_api_url() -> None:
    assert _fails(kit_for(FixedHost()).test_requests_start_at_the_configured_api_url)


@pytest.mark.parametrize("adapter", [LogsCredentials(), StdlibLogsSecret(), SecretInError()])
def test_kit_fails_secrets_in_logs_or_errors(
    adapter: yookassa.YooKassa, caplog: pytest.LogCaptureFixture
) -> None:
    assert _fails(kit_for(adapter).test_secrets_stay_out_of_logs_reprs_and_errors, caplog)


def test_kit_fails_a_parser_that_crashes_on_missing_fields() -> None:
    kit = kit_for(CrashesOnGarbage())
    case = ("status", PspResponse(200, b"{}"))
    # The adapter's own crash escapes pytest.raises(MalformedResponse): the test errors out.
    failure = _failure(kit.test_malformed_body_raises_malformed_response, case)
    assert isinstance(failure, KeyError)


def test_kit_fails_an_unsigned_adapter_that_verifies_notifications() -> None:
    assert _fails(kit_for(TrustsNotifications()).test_valid_notification_names_the_order)


def test_kit_fails_a_wrong_state_and_a_wrong_amount() -> None:
    paid = (CanonicalState.PAID, YOOKASSA_FIXTURES.states[CanonicalState.PAID])
    assert _fails(kit_for(PaidIsPending()).test_state_fixture_parses_to_its_state, paid)
    assert _fails(kit_for(RoundsAmounts()).test_paid_fixture_reports_the_order_money)


def test_kit_fails_a_missing_state_fixture_unless_declared_not_reported() -> None:
    states = dict(YOOKASSA_FIXTURES.states)
    del states[CanonicalState.REFUNDED]
    missing = replace(YOOKASSA_FIXTURES, states=states)
    declared = replace(missing, not_reported=frozenset({CanonicalState.REFUNDED}))
    assert _fails(kit_for(yookassa.adapter, missing).test_every_canonical_state_has_a_fixture)
    kit_for(yookassa.adapter, declared).test_every_canonical_state_has_a_fixture()


# -- another shape: a redirect-only payment system with a signed pay URL and XML statuses ---------


class SignedRedirect(Adapter):
    """A Robokassa-like stand-in: no create call, an MD5-signed pay URL, XML status answers."""

    name: ClassVar[str] = "signedredirect"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False, lookup_by_reference=False, currencies=frozenset({"RUB"})
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default="https://pay.example.com/merchant"),
        SettingSpec("LOGIN"),
        SettingSpec("PASSWORD", secret=True),
    )

    def build_create(self, order: Order, settings: AdapterSettings) -> Invoice:
        total = f"{order.money.to_decimal():.2f}"
        raw = f"{settings.get('LOGIN')}:{total}:{order.number}:{settings.get('PASSWORD')}"
        signature = hashlib.md5(raw.encode(), usedforsecurity=False).hexdigest()
        query = urlencode(
            {"MerchantLogin": settings.get("LOGIN"), "OutSum": total, "InvId": order.number}
        )
        url = f"{settings.api_url}/Index.aspx?{query}&SignatureValue={signature}"
        return Invoice(psp_id=str(order.number), pay_url=url)

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        raise AssertionError("a redirect-only system has no create response")

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            "GET",
            f"{settings.api_url}/OpState",
            "status",
            params={"MerchantLogin": settings.get("LOGIN"), "InvoiceID": str(order.number)},
        )

    def parse_status(self, order: Order, response: PspResponse) -> StatusReport:
        if response.status_code != 200:
            raise MalformedResponse(f"HTTP {response.status_code}")
        try:
            root = ElementTree.fromstring(response.content)  # noqa: S314 (fixed test input)
        except ElementTree.ParseError as exc:
            raise MalformedResponse(f"not XML: {exc}") from None
        code, amount = root.findtext("State/Code"), root.findtext("Info/OutSum")
        states = {"5": CanonicalState.PENDING, "100": CanonicalState.PAID}
        states |= {"10": CanonicalState.REJECTED, "60": CanonicalState.REFUNDED}
        if code not in states or amount is None:
            raise MalformedResponse(f"unreadable state {code!r}")
        return StatusReport(states[code], money=Money.parse(amount, "RUB"), raw_status=code)


def _xml(code: str) -> PspResponse:
    body = f"<OperationStateResponse><State><Code>{code}</Code></State>"
    return PspResponse(
        200, (body + "<Info><OutSum>100.00</OutSum></Info></OperationStateResponse>").encode()
    )


class TestKitFitsSignedRedirectSystems(AdapterConformance):
    adapter = SignedRedirect()
    settings: ClassVar[dict[str, str]] = {"login": "demo-shop", "password": "fake-password-1"}
    fixtures = FixtureSet(
        states={
            CanonicalState.PENDING: _xml("5"),
            CanonicalState.PAID: _xml("100"),
            CanonicalState.REJECTED: _xml("10"),
            CanonicalState.REFUNDED: _xml("60"),
        },
        not_reported=frozenset({CanonicalState.EXPIRED}),
        malformed={"unknown-state-code": _xml("77")},
    )
