"""Money: integer minor units, ISO 4217 codes, exponent checks."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.errors import AmountPrecisionError, InvalidAmount, UnknownCurrency
from orders.money import CURRENCY_EXPONENTS, MAX_AMOUNT, Money, currency_exponent


@pytest.mark.parametrize(
    ("currency", "exponent"), [("USD", 2), ("EUR", 2), ("RUB", 2), ("JPY", 0), ("KWD", 3)]
)
def test_exponents_follow_iso_4217(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent


@pytest.mark.parametrize("code", ["XYZ", "usd", "US", "", "XAU", "XTS"])
def test_unknown_or_non_money_currency_is_refused(code: str) -> None:
    with pytest.raises(UnknownCurrency, match="ISO 4217"):
        Money(100, code)


@pytest.mark.parametrize("amount", [1.5, "100", Decimal("1"), True, None])
def test_amount_must_be_an_int_of_minor_units(amount: object) -> None:
    with pytest.raises(InvalidAmount, match="whole number of minor units"):
        Money(amount, "USD")  # type: ignore[arg-type]


def test_amount_beyond_bigint_is_refused() -> None:
    with pytest.raises(InvalidAmount, match="storable range"):
        Money(MAX_AMOUNT + 1, "USD")


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [("12.34", "USD", 1234), ("12", "USD", 1200), ("1500", "JPY", 1500), ("1.005", "KWD", 1005)],
)
def test_parse_major_units(text: str, currency: str, minor: int) -> None:
    assert Money.parse(text, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("text", "currency"), [("10.5", "JPY"), ("0.001", "USD"), ("1.0001", "KWD")]
)
def test_parse_refuses_more_precision_than_the_currency_has(text: str, currency: str) -> None:
    with pytest.raises(AmountPrecisionError, match=f"the most {currency} allows"):
        Money.parse(text, currency)


@pytest.mark.parametrize("value", [1.25, "abc", "NaN", "Infinity", ""])
def test_parse_refuses_floats_and_non_numbers(value: object) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(value, "USD")  # type: ignore[arg-type]


def test_str_shows_major_units_with_the_currency_exponent() -> None:
    assert str(Money(1234, "USD")) == "12.34 USD"
    assert str(Money(1500, "JPY")) == "1500 JPY"
    assert str(Money(5, "KWD")) == "0.005 KWD"


@given(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_decimal_round_trip_is_exact(amount: int, currency: str) -> None:
    money = Money(amount, currency)
    assert Money.parse(money.to_decimal(), currency) == money
