"""Billing pieces that need no database: signatures, backoff, bonus arithmetic, settings, hooks."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dispatcher.billing.bonus import share
from dispatcher.billing.hooks import load_python_hook
from dispatcher.billing.receiver import sign, signature, verify
from dispatcher.billing.wallet import POINTS, Points, money, parse_amount
from dispatcher.billing.webhook import Backoff, event_body
from dispatcher.config import ConfigError, load
from orders import Money, OrderStatus
from orders.errors import InvalidAmount, InvalidSignature, UnknownCurrency
from orders.model import Order, PaidEvent

SECRET = "whsec-unit-0123456789abcdef"


async def a_hook(tx: Any, event: PaidEvent) -> None:
    """Loaded by path in a test below."""


class AHookObject:
    async def __call__(self, tx: Any, event: PaidEvent) -> None:
        """An object whose call is async is a hook too."""


a_hook_object = AHookObject()


def plain_hook(conn: Any, order: Order) -> None:
    """The hooks' old form: refused, since it would block the engine's loop."""


class PlainHookObject:
    def __call__(self, conn: Any, order: Order) -> None:
        """Refused as well."""


plain_hook_object = PlainHookObject()


# -- signatures ---------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"id":"e1"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, body) == expected
    assert sign(SECRET, body, timestamp=1700000000) == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_good_signature_and_any_of_several_v1() -> None:
    body = b'{"id":"e1","type":"order.paid"}'
    now = 1_700_000_000
    good = sign(SECRET, body, timestamp=now)
    assert verify(SECRET, good, body, now=now)["id"] == "e1"
    rotated = f"t={now},v1={'0' * 64},{good.split(',')[1]}"
    assert verify(SECRET, rotated, body, now=now + 10)["type"] == "order.paid"


@pytest.mark.parametrize(
    ("header", "body", "now"),
    [
        (None, b"{}", 0),
        ("", b"{}", 0),
        ("t=1700000000", b"{}", 1700000000),  # no v1
        ("v1=abc", b"{}", 1700000000),  # no timestamp
        ("TAMPERED", b'{"id":"e2"}', 1700000000),
        ("STALE", b'{"id":"e1"}', 1700000000 + 301),
        ("WRONG_SECRET", b'{"id":"e1"}', 1700000000),
    ],
)
def test_verify_refuses(header: str | None, body: bytes, now: int) -> None:
    signed = b'{"id":"e1"}'
    if header in {"TAMPERED", "STALE"}:
        header = sign(SECRET, signed, timestamp=1700000000)
    elif header == "WRONG_SECRET":
        header = sign("some-other-secret-value", signed, timestamp=1700000000)
    with pytest.raises(InvalidSignature):
        verify(SECRET, header, body, now=now)


def test_verify_uses_the_clock_by_default() -> None:
    body = b'{"id":"e1"}'
    assert verify(SECRET, sign(SECRET, body), body)["id"] == "e1"
    with pytest.raises(InvalidSignature):
        verify(SECRET, sign(SECRET, body, timestamp=int(time.time()) - 3600), body)


# -- backoff, bonus arithmetic, points ------------------------------------------------------------


def test_backoff_grows_and_is_capped_with_full_jitter() -> None:
    backoff = Backoff(first=timedelta(seconds=10), cap=timedelta(hours=1))
    ceilings = [backoff.delay(n, rng=lambda: 1.0).total_seconds() for n in range(1, 12)]
    assert ceilings[:4] == [10, 20, 40, 80]
    assert max(ceilings) == 3600
    assert backoff.delay(50, rng=lambda: 1.0) == timedelta(hours=1)
    assert backoff.delay(3, rng=lambda: 0.0) > timedelta(0)  # never a busy loop
    # Three days of capped retries are about 72 attempts: parked only after that.
    assert sum(ceilings) < 3 * 24 * 3600


def test_share_rounds_down() -> None:
    assert share(1000, Decimal("2.5")) == 25
    assert share(999, Decimal("1")) == 9
    assert share(1, Decimal("50")) == 0
    assert share(10_000, Decimal(0)) == 0


def test_points_are_not_an_iso_currency() -> None:
    assert money(5, POINTS) == Points(5, POINTS)
    assert isinstance(money(5, POINTS), Money)
    assert str(Points(7, POINTS)) == "7 points"
    assert parse_amount("12", POINTS) == Points(12, POINTS)
    assert parse_amount("12.50", "USD") == Money(1250, "USD")
    with pytest.raises(UnknownCurrency):
        Money(5, POINTS)
    with pytest.raises(UnknownCurrency):
        Points(5, "USD")
    with pytest.raises(InvalidAmount):
        parse_amount("1.5", POINTS)


# -- the event body -----------------------------------------------------------------------------


def test_event_body_is_canonical_json_with_the_event_id() -> None:
    now = datetime.now(UTC)
    order = Order(
        id=uuid.uuid4(), number=1, site="shop", site_ref="A-1", user_id="42",
        money=Money(1999, "EUR"), adapter="sandbox", description="Top-up", return_url=None,
        metadata={"b": 1, "a": 2}, status=OrderStatus.PAID, psp_id="inv", pay_url=None,
        attempts=1, polls=1, next_run_at=None, lease_until=None, lease_token=None,
        expires_at=now, last_error=None, idempotency_key=None, created_at=now, updated_at=now,
        paid_at=now,
    )  # fmt: skip
    event_id = uuid.uuid4()
    body = event_body(event_id, order, late=True)
    data = json.loads(body)
    assert data["id"] == str(event_id)
    assert data["data"]["amount_decimal"] == "19.99"
    assert data["data"]["late"] is True
    assert body == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- settings and the hook loader ------------------------------------------------------------------


def test_billing_defaults_to_the_wallet_hook_with_no_bonus(tmp_path: Path) -> None:
    billing = load({"PAYDISPATCH_HOME": str(tmp_path)}).billing
    assert billing.hooks == ("wallet",)
    assert billing.cashback_percent == 0
    assert billing.referral_percents == ()
    assert billing.webhook_max_age == 3 * 24 * 3600


def test_billing_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "paydispatch.toml"
    path.write_text(
        '[billing]\nhooks = ["wallet", "webhook"]\ncashback_percent = 2.5\n'
        "referral_percents = [10, 5]\nwebhook_timeout = 4\n"
    )
    settings = load(
        {"PAYDISPATCH_CONFIG": str(path), "PAYDISPATCH_BILLING_REFERRAL_PERCENTS": "7,3,1"}
    )
    billing = settings.billing
    assert billing.hooks == ("wallet", "webhook")
    assert billing.cashback_percent == Decimal("2.5")
    assert billing.referral_percents == (Decimal(7), Decimal(3), Decimal(1))
    assert billing.webhook_timeout == 4


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        # The webhook's URL and secret are per site (issue #12, item 6).
        ({"PAYDISPATCH_BILLING_WEBHOOK_URL": "https://x.example/hook"}, "per site"),
        ({"PAYDISPATCH_BILLING_WEBHOOK_SECRET_FILE": "/run/secret"}, "WEBHOOK_SECRET: .* per site"),
        ({"PAYDISPATCH_BILLING_CASHBACK_PERCENT": "150"}, "between 0 and 100"),
        ({"PAYDISPATCH_BILLING_CASHBACK_PERCENT": "lots"}, "not a number"),
        ({"PAYDISPATCH_BILLING_REFERRAL_PERCENTS": ",".join(["1"] * 11)}, "at most 10"),
        ({"PAYDISPATCH_BILLING_WEBHOOK_TIMEOUT": "-1"}, "must be positive"),
    ],
)
def test_bad_billing_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(environ)


def test_no_billing_hook_at_all() -> None:
    assert load({"PAYDISPATCH_BILLING_HOOKS": "none"}).billing.hooks == ()


def test_python_hook_by_module_path() -> None:
    assert load_python_hook(f"{__name__}:a_hook") is a_hook
    assert load_python_hook(f"{__name__}:a_hook_object") is a_hook_object
    with pytest.raises(ConfigError, match="not callable"):
        load_python_hook(f"{__name__}:SECRET")
    with pytest.raises(ConfigError, match="no hook"):
        load_python_hook("not-installed")


@pytest.mark.parametrize("name", ["plain_hook", "plain_hook_object"])
def test_a_plain_function_hook_is_refused_with_the_form_to_use(name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_python_hook(f"{__name__}:{name}")
    assert str(refused.value) == (
        f"PAYDISPATCH_BILLING_HOOKS: '{__name__}:{name}' is not async: "
        "billing hooks are async def hook(tx, event): ..."
    )
