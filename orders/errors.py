"""The one error tree of paydispatch, split by what the caller should do.

DispatchError
├── TransientError          try again later, with the same idempotency key
│   └── DatabaseUnavailable
├── PermanentError          stop: repeating the same call cannot succeed
│   ├── InvalidInput        bad input, nothing was written (also a ValueError)
│   │   ├── InvalidAmount
│   │   ├── UnknownCurrency
│   │   ├── AmountPrecisionError
│   │   ├── UnknownAdapter
│   │   └── FieldTooLong
│   ├── InvalidTransition   the state machine forbids this move
│   ├── IdempotencyConflict same key, different request
│   ├── OrderNotFound
│   ├── InsufficientFunds   a debit larger than the balance; nothing was written
│   ├── WalletNotFound      no wallet for that site, user and currency
│   └── InvalidSignature    a billing webhook whose signature does not verify
├── StaleOrder              the row moved under us; reload and decide again
└── OutcomeUnknown          a call may or may not have taken effect: never guess
"""

from __future__ import annotations


class DispatchError(Exception):
    """Root of every error paydispatch raises on purpose."""


class TransientError(DispatchError):
    """A temporary failure: retry later with the same idempotency key."""


class DatabaseUnavailable(TransientError):
    """PostgreSQL could not be reached or dropped the connection."""


class PermanentError(DispatchError):
    """A definite failure: repeating the same call cannot succeed."""


class InvalidInput(PermanentError, ValueError):
    """Input that paydispatch refuses; nothing was written. ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidAmount(InvalidInput):
    """An amount that is not a positive whole number of minor units within range."""


class UnknownCurrency(InvalidInput):
    """A currency code that is not an active ISO 4217 code."""


class AmountPrecisionError(InvalidInput):
    """An amount with more decimal places than its currency's minor unit allows."""


class UnknownAdapter(InvalidInput):
    """A payment system that is not installed or not enabled."""


class FieldTooLong(InvalidInput):
    """A text field over its length limit."""


class InvalidTransition(PermanentError):
    """A status change the state machine does not allow."""

    def __init__(self, from_status: str, to_status: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        self.from_status = str(from_status)
        self.to_status = str(to_status)
        super().__init__(
            f"order cannot move from {self.from_status!r} to {self.to_status!r}{detail}"
        )


class SwitchRefused(PermanentError):
    """A buyer's switch to another payment system that cannot be made: the order is past
    paying (a cancelled order stays cancelled), or its chain of switches is at its limit."""


class IdempotencyConflict(PermanentError):
    """An idempotency key or site_ref replayed with a different request body."""


class OrderNotFound(PermanentError):
    """No such order (or not visible to this site)."""


class StaleOrder(DispatchError):
    """The order was not in the expected status or lease: another writer got there first."""


class OutcomeUnknown(DispatchError):
    """A call may or may not have taken effect; a person or a lookup must decide."""


class InsufficientFunds(PermanentError):
    """A debit larger than the wallet's balance; nothing was written."""

    def __init__(self, message: str, *, balance: int, requested: int) -> None:
        super().__init__(message)
        self.balance = balance
        self.requested = requested


class WalletNotFound(PermanentError):
    """No wallet for that site, user and currency (it is created by its first credit)."""


class InvalidSignature(PermanentError):
    """A billing webhook whose ``Paydispatch-Signature`` is missing, stale or wrong."""
