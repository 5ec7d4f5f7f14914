"""Money as an integer number of minor units plus an ISO 4217 currency code; never a float."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from orders.errors import AmountPrecisionError, InvalidAmount, UnknownCurrency

# Active ISO 4217 codes (list one, 2025) by minor-unit exponent. Funds codes are included;
# precious metals and testing codes (XAU, XTS, XXX, ...) are not money a site sells for.
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN "
    "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU "
    "UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"
)

CURRENCY_EXPONENTS: dict[str, int] = {
    code: exponent
    for exponent, codes in ((0, _EXPONENT_0), (2, _EXPONENT_2), (3, _EXPONENT_3), (4, _EXPONENT_4))
    for code in codes.split()
}

# PostgreSQL bigint; amounts beyond it cannot be stored.
MAX_AMOUNT = 2**63 - 1


def currency_exponent(currency: str) -> int:
    """Number of decimal places of ``currency``'s minor unit (2 for USD, 0 for JPY, 3 for KWD)."""
    try:
        return CURRENCY_EXPONENTS[currency]
    except (KeyError, TypeError):
        raise UnknownCurrency(
            "currency", f"{currency!r} is not an active ISO 4217 currency code"
        ) from None


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in minor units (cents, kopecks; yen for JPY) of one currency."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise InvalidAmount(
                "amount",
                f"must be a whole number of minor units, got {type(self.amount).__name__} "
                f"{self.amount!r}",
            )
        if abs(self.amount) > MAX_AMOUNT:
            raise InvalidAmount("amount", f"{self.amount} is beyond the storable range")
        currency_exponent(self.currency)

    @classmethod
    def parse(cls, value: str | Decimal | int, currency: str) -> Money:
        """Money from major units (``"12.34"``, ``Decimal("5")``); refuses extra precision."""
        exponent = currency_exponent(currency)
        if isinstance(value, bool | float):
            raise InvalidAmount("amount", "give major units as a decimal string, not a float")
        try:
            major = Decimal(value)
        except (InvalidOperation, ValueError, TypeError):
            raise InvalidAmount("amount", f"{value!r} is not a decimal number") from None
        if not major.is_finite():
            raise InvalidAmount("amount", f"{value!r} is not a finite number")
        minor = major.scaleb(exponent)
        if minor != minor.to_integral_value():
            raise AmountPrecisionError(
                "amount",
                f"{value} has more than {exponent} decimal place(s), the most {currency} allows",
            )
        return cls(int(minor), currency)

    @property
    def exponent(self) -> int:
        return CURRENCY_EXPONENTS[self.currency]

    def to_decimal(self) -> Decimal:
        """The amount in major units, with exactly the currency's number of decimals."""
        return Decimal(self.amount).scaleb(-self.exponent)

    def __str__(self) -> str:
        return f"{self.to_decimal():.{self.exponent}f} {self.currency}"
