"""The conformance kit's refund and payout checks (issue #14): it fails adapters with known
defects, passes the real YooKassa adapter, and skips adapters without the capabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from adapters import yookassa
from adapters.base import (
    Adapter,
    AdapterSettings,
    Capabilities,
    MalformedResponse,
    PayoutState,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
)
from adapters.testing import (
    AdapterConformance,
    FixtureSet,
    PayoutFixtures,
    RefundFixtures,
    load_response,
    sample_order,
)
from orders.money import Money
from tests.unit.test_conformance_kit import YOOKASSA_FIXTURES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yookassa"
SETTINGS = {
    "shop_id": "100500",
    "secret_key": "test_Fh8hUAVVBGUGbjmlzba6TB0iyUbos_lueTHE-axOwM0",
    "payout_agent_id": "505050",
    "payout_secret_key": "test_payout_Qw3rTy8uIo9pAs1dFg2h",
}


def _fixture(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code)


REFUNDS = RefundFixtures(
    states={
        RefundState.PENDING: _fixture("refund_pending"),
        RefundState.SUCCEEDED: _fixture("refund_succeeded"),
        RefundState.FAILED: _fixture("refund_canceled"),
    },
    rejected=_fixture("error_refund_amount_exceeds", 400),
    psp_refund_id="216749f7-0016-50be-b000-078d43a63ae4",
    money=Money(4000, "RUB"),
)
PAYOUTS = PayoutFixtures(
    states={
        PayoutState.PENDING: _fixture("payout_pending"),
        PayoutState.SUCCEEDED: _fixture("payout_succeeded"),
        PayoutState.FAILED: _fixture("payout_canceled"),
    },
    rejected=_fixture("error_payout_insufficient_balance", 400),
    psp_payout_id="po-285c0ab7-0003-5000-9000-0e1166498fda",
    destination={"type": "yoo_money", "account_number": "41001614575714"},
)
FIXTURE_SET = replace(YOOKASSA_FIXTURES, refunds=REFUNDS, payouts=PAYOUTS)


def kit_for(adapter: Adapter, fixtures: FixtureSet = FIXTURE_SET) -> Any:
    """A conformance suite for a (deliberately broken) adapter, outside collection."""

    class Kit(AdapterConformance):
        pass

    Kit.adapter = adapter
    Kit.fixtures = fixtures
    Kit.settings = SETTINGS
    Kit.order = sample_order(adapter=adapter.name)
    return Kit()


def _message(check: Callable[..., None], *args: Any) -> str:
    """The failure message a kit check gives the adapter's author."""
    try:
        check(*args)
    except (AssertionError, pytest.fail.Exception) as exc:
        return str(exc)
    pytest.fail("expected the kit's check to fail; it passed")


def _case(kit: Any, operation: str, state: str) -> tuple[str, str, str, PspResponse]:
    (case,) = [c for c in kit._money_out_cases() if c[1] == operation and c[2] == state]
    return case  # type: ignore[no-any-return]


# -- defects -------------------------------------------------------------------------------------


class RandomRefundKey(yookassa.YooKassa):
    calls: ClassVar[list[int]] = []

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        request = super().build_refund(refund, settings)
        self.calls.append(1)
        key = f"key-{len(self.calls)}"
        return replace(request, headers={**request.headers, "Idempotence-Key": key})


class RoundsRefunds(yookassa.YooKassa):
    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        rounded = Money(refund.money.amount // 100 * 100, refund.money.currency)
        return super().build_refund(replace(refund, money=rounded), settings)


class CanceledIsPending(yookassa.YooKassa):
    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        report = super().parse_refund_status(refund, response, settings)
        return replace(report, state=RefundState.PENDING)


class RefusalIsTransient(yookassa.YooKassa):
    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        try:
            return super().parse_refund(refund, response, settings)
        except PspRejected as exc:
            raise MalformedResponse(str(exc)) from None


class CrashesOnGarbageRefund(yookassa.YooKassa):
    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        if response.content == b"{}":
            raise KeyError("status")
        return super().parse_refund(refund, response, settings)


class HidesItsPayouts(yookassa.YooKassa):
    """Declares no payouts, yet builds them."""

    capabilities: ClassVar[Capabilities] = replace(
        yookassa.YooKassa.capabilities, payouts=False, idempotent_payout=False
    )


class NoMoneyOut(yookassa.YooKassa):
    capabilities: ClassVar[Capabilities] = replace(
        yookassa.YooKassa.capabilities,
        refunds=False,
        partial_refunds=False,
        idempotent_refund=False,
        payouts=False,
        idempotent_payout=False,
    )

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        return Adapter.build_refund(self, refund, settings)

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        return Adapter.build_refund_status(self, refund, settings)

    def build_payout(self, payout: Any, settings: AdapterSettings) -> PspRequest:
        return Adapter.build_payout(self, payout, settings)

    def build_payout_status(self, payout: Any, settings: AdapterSettings) -> PspRequest:
        return Adapter.build_payout_status(self, payout, settings)


def test_kit_passes_the_real_yookassa_refunds_and_payouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kit = kit_for(yookassa.adapter)
    for kind in ("refunds", "payouts"):
        kit.test_money_out_operations_match_capabilities(kind)
        kit.test_money_out_request_is_fixed_and_carries_our_key(kind)
        kit.test_money_out_amount_goes_out_exactly(kind)
        kit.test_money_out_status_request_names_it(kind)
        kit.test_money_out_refusal_is_psp_rejected(kind)
        kit.test_money_out_server_error_is_transient(kind)
    for case in kit._money_out_cases():
        kit.test_money_out_fixture_parses_to_its_state(case)
    kit.test_secrets_stay_out_of_logs_reprs_and_errors(caplog)


def test_kit_fails_a_refund_request_with_a_new_key_each_time() -> None:
    message = _message(
        kit_for(RandomRefundKey()).test_money_out_request_is_fixed_and_carries_our_key, "refunds"
    )
    assert "build_refund must build the same request every time" in message
    assert "header idempotence-key" in message


def test_kit_fails_a_refund_that_sends_another_amount() -> None:
    message = _message(kit_for(RoundsRefunds()).test_money_out_amount_goes_out_exactly, "refunds")
    assert "a refund of 98.71 RUB must carry the amount as 9871 minor units or 98.71" in message


def test_kit_fails_a_refund_state_read_wrongly() -> None:
    kit = kit_for(CanceledIsPending())
    message = _message(
        kit.test_money_out_fixture_parses_to_its_state, _case(kit, "refund_status", "failed")
    )
    assert "the failed refund fixture read as a refund_status answer must be failed" in message


def test_kit_fails_a_refusal_read_as_transient() -> None:
    message = _message(
        kit_for(RefusalIsTransient()).test_money_out_refusal_is_psp_rejected, "refunds"
    )
    assert "expected PspRejected, found MalformedResponse" in message


def test_kit_lets_a_crash_on_a_garbage_refund_answer_escape() -> None:
    kit = kit_for(CrashesOnGarbageRefund())
    (case,) = [
        c
        for c in kit._money_out_malformed()
        if c[1] == "refund" and c[2] == "json-object-missing-fields"
    ]
    with pytest.raises(KeyError):
        kit.test_money_out_malformed_is_malformed_response(case)


def test_kit_fails_capabilities_that_disagree_with_the_methods() -> None:
    kit = kit_for(HidesItsPayouts(), replace(FIXTURE_SET, payouts=None))
    kit.test_money_out_operations_match_capabilities("refunds")
    message = _message(kit.test_money_out_operations_match_capabilities, "payouts")
    assert "payouts=False, so build_payout must raise NotSupported" in message


def test_kit_fails_fixtures_without_the_capability_and_skips_the_rest_saying_why() -> None:
    kit = kit_for(NoMoneyOut())
    message = _message(kit.test_money_out_operations_match_capabilities, "refunds")
    assert "refunds fixtures for an adapter without refunds" in message
    bare = kit_for(NoMoneyOut(), replace(FIXTURE_SET, refunds=None, payouts=None))
    bare.test_money_out_operations_match_capabilities("refunds")
    with pytest.raises(pytest.skip.Exception, match="the adapter declares no refunds"):
        bare.test_money_out_request_is_fixed_and_carries_our_key("refunds")


def test_kit_requires_fixtures_of_a_declared_capability() -> None:
    kit = kit_for(yookassa.adapter, replace(FIXTURE_SET, refunds=None))
    message = _message(kit.test_money_out_request_is_fixed_and_carries_our_key, "refunds")
    assert "FixtureSet.refunds must hold" in message
