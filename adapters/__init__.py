"""Payment-system adapters: the contract, the registry, the conformance kit, built-in adapters.

An adapter author imports everything from here::

    from adapters import Adapter, Capabilities, PspRequest, PspResponse, StatusReport, ...

The contract itself is :mod:`adapters.base`; the conformance kit, :mod:`adapters.testing`, needs
pytest and is imported on its own. The built-in adapters are not imported here: the registry
loads each through its entry point when it is enabled.
"""

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    FollowUp,
    InvalidSettings,
    Invoice,
    InvoiceMayExist,
    ListedPayment,
    MalformedResponse,
    Notification,
    NotificationResult,
    NotSupported,
    OrderRef,
    Pairs,
    PaymentPage,
    PayoutReport,
    PayoutRequest,
    PayoutState,
    PollPolicy,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    Reply,
    Secret,
    SettingSpec,
    StatusReport,
    Token,
    money_object,
    pairs,
)
from adapters.registry import env_name, register
from orders.errors import InvalidInput, OutcomeUnknown, PermanentError, TransientError
from orders.model import Order
from orders.money import Money

__all__ = [
    "Adapter",
    "AdapterSettings",
    "CanonicalState",
    "Capabilities",
    "CredentialsRejected",
    "FollowUp",
    "InvalidInput",
    "InvalidSettings",
    "Invoice",
    "InvoiceMayExist",
    "ListedPayment",
    "MalformedResponse",
    "Money",
    "NotSupported",
    "Notification",
    "NotificationResult",
    "Order",
    "OrderRef",
    "OutcomeUnknown",
    "Pairs",
    "PaymentPage",
    "PayoutReport",
    "PayoutRequest",
    "PayoutState",
    "PermanentError",
    "PollPolicy",
    "PspRejected",
    "PspRequest",
    "PspResponse",
    "RefundReport",
    "RefundRequest",
    "RefundState",
    "Reply",
    "Secret",
    "SettingSpec",
    "StatusReport",
    "Token",
    "TransientError",
    "env_name",
    "money_object",
    "pairs",
    "register",
]
