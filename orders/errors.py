"""The one error tree of paydispatch, split by what the caller should do.

Every error paydispatch raises on purpose is a :class:`DispatchError`. The classes live beside
the code that raises them (the module is named where it is not this one); the whole tree is
drawn here, and ``tests/unit/test_error_tree.py`` holds the drawing to the code: every exception
class of ``orders``, ``adapters`` and ``dispatcher`` is drawn under its parent, or listed below
the tree as outside it on purpose. "also" names a class's other parents.

DispatchError
├── TransientError              try again later, with the same idempotency key
│   ├── DatabaseUnavailable     PostgreSQL could not be reached or dropped the connection
│   ├── PspUnavailable          dispatcher.worker.transport: timeout, network error, 5xx or 429
│   ├── CircuitOpen             dispatcher.worker.breaker: failed too often lately; nothing was sent
│   ├── MalformedResponse       adapters.base: an answer the adapter cannot read
│   ├── InvoiceMayExist         adapters.base: a create refused as a possible duplicate
│   ├── CredentialsRejected     adapters.base: the payment system refused our credentials
│   ├── PayPalUnavailableError  adapters.paypal: each payment system's "not now" ...
│   ├── PayPalRefusedError      adapters.paypal: ... and its refused poll (never final)
│   ├── RobokassaUnavailableError   adapters.robokassa
│   ├── RobokassaRefusedError   adapters.robokassa
│   ├── StripeUnavailableError  adapters.stripe
│   ├── StripeRefusedError      adapters.stripe
│   ├── TBankUnavailable        adapters.tbank
│   ├── TBankRefused            adapters.tbank
│   ├── YooKassaUnavailableError    adapters.yookassa
│   ├── YooKassaRefusedError    adapters.yookassa
│   └── NoSuchTransfer          adapters.sandbox.transfers: no refund or payout by that id yet
├── PermanentError              stop: repeating the same call cannot succeed
│   ├── InvalidInput            bad input, nothing was written (also a ValueError)
│   │   ├── InvalidAmount
│   │   ├── UnknownCurrency
│   │   ├── AmountPrecisionError
│   │   ├── UnknownAdapter
│   │   └── FieldTooLong
│   ├── InvalidTransition       the state machine forbids this move
│   ├── SwitchRefused           the buyer's switch to another payment system cannot be made
│   ├── IdempotencyConflict     same key, different request
│   ├── OrderNotFound
│   ├── RefundRefused           not paid, more than is left, or no refunds there; nothing sent
│   ├── WithdrawalRefused       dispatcher.billing.withdrawals: minimum, limit, funds, adapter
│   ├── WithdrawalNotFound      dispatcher.billing.withdrawals
│   ├── WithdrawalConflict      dispatcher.billing.withdrawals: cancel once sent, approve cancelled
│   ├── InsufficientFunds       a debit larger than the balance; nothing was written
│   ├── WalletNotFound          no wallet for that site, user and currency
│   ├── InvalidSignature        a billing webhook whose signature does not verify
│   ├── PspRejected             adapters.base: a definite "no" to a create; the order fails
│   ├── ConfigError             a setting is missing or malformed: fix the configuration
│   │   └── InvalidSettings     adapters.base: one adapter's setting
│   └── ServiceError            dispatcher.services: an embedded PostgreSQL or Redis won't start
├── StaleOrder                  the row moved under us; reload and decide again
├── NotSupported                adapters.base: no such operation here; ask its Capabilities
├── OutcomeUnknown              a call may or may not have taken effect: never guess
├── HttpError                   dispatcher.api.errors: an answer a route decided on (status, code)
└── ApiError                    orders.client: an error answer of the HTTP API, with its code
    ├── InvalidRequest          orders.client: 422 (also InvalidInput)
    ├── Unauthorized            orders.client: 401 (also PermanentError)
    ├── NotFound                orders.client: 404 (also OrderNotFound)
    ├── Conflict                orders.client: 409 (also PermanentError)
    │   └── KeyConflict         orders.client: 409 idempotency_conflict (also IdempotencyConflict)
    ├── BadRequest              orders.client: 400, 413 and other refusals (also PermanentError)
    └── Unavailable             orders.client: 5xx, or no answer after retries (also TransientError)

Outside the tree, on purpose (none of them reaches a caller of paydispatch):

- ``SandboxApiError`` (adapters.sandbox.store): the sandbox payment system's own error answer.
  It lives in the sandbox's process; paydispatch sees only the HTTP response it becomes.
- ``StripeError`` (adapters.fakes.stripe), ``Refused`` (adapters.fakes.tbank), ``PayUrlError``
  (adapters.fakes.robokassa), ``_Refusal`` (adapters.fakes.paypal): the fake payment systems'
  refusals, each turned into that payment system's own error answer.
- ``_Retryable`` (orders.client): the client's signal to its retry loop; after the last try it
  becomes :class:`ApiError` ``Unavailable``.
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


class RefundRefused(PermanentError):
    """A refund that cannot be made, and why: the order is not paid, the amount is more than
    is left to refund (the database's ``CHECK (refund_reserved <= amount)`` refused it), or the
    order's payment system cannot refund. Nothing was written or sent."""


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


class ConfigError(PermanentError):
    """A setting is missing or malformed; the message names the variable to fix.

    Raised while reading the configuration, before anything starts: ``paydispatch`` prints it
    and exits. An adapter's own settings raise its subclass ``InvalidSettings``.
    """
