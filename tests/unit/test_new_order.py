"""Bad input to order creation: each case has its own exception and message."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from orders import FieldTooLong, InvalidAmount, InvalidInput, Money, NewOrder, UnknownAdapter

GOOD = NewOrder(site="shop", user_id="u1", money=Money(1000, "USD"), adapter="sandbox")
ADAPTERS = {"sandbox"}


def test_a_good_order_validates() -> None:
    GOOD.validate(ADAPTERS)


@pytest.mark.parametrize("amount", [0, -1])
def test_zero_and_negative_amounts_are_refused(amount: int) -> None:
    with pytest.raises(InvalidAmount, match="must be positive"):
        replace(GOOD, money=Money(amount, "USD")).validate(ADAPTERS)


def test_unknown_adapter_names_the_enabled_ones() -> None:
    with pytest.raises(UnknownAdapter, match="enabled: sandbox"):
        replace(GOOD, adapter="paypal").validate(ADAPTERS)


@pytest.mark.parametrize(
    ("field", "length"),
    [("site", 65), ("user_id", 129), ("site_ref", 129), ("description", 1001), ("adapter", 65)],
)
def test_oversized_text_fields_are_refused(field: str, length: int) -> None:
    with pytest.raises(FieldTooLong) as info:
        replace(GOOD, **{field: "x" * length}).validate(ADAPTERS | {"x" * 65})
    assert info.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"site": ""}, "site"),
        ({"user_id": "  "}, "user_id"),
        ({"site_ref": ""}, "site_ref"),
        ({"idempotency_key": " "}, "idempotency_key"),
        ({"return_url": "javascript:alert(1)"}, "return_url"),
        ({"return_url": "/relative"}, "return_url"),
        ({"metadata": {"x": object()}}, "metadata"),
        ({"metadata": {"x": "y" * 20000}}, "metadata"),
        ({"expires_in": timedelta(seconds=5)}, "expires_in"),
        ({"description": "nul\x00byte"}, "description"),
    ],
)
def test_malformed_fields_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        replace(GOOD, **changes).validate(ADAPTERS)  # type: ignore[arg-type]
    assert info.value.field == field


def test_fingerprint_ignores_the_idempotency_key_but_not_the_body() -> None:
    assert GOOD.fingerprint() == replace(GOOD, idempotency_key="k").fingerprint()
    assert GOOD.fingerprint() != replace(GOOD, money=Money(1001, "USD")).fingerprint()
