"""The order library: money, statuses, the order model and the PostgreSQL repository."""

from orders.errors import (
    AmountPrecisionError,
    DispatchError,
    FieldTooLong,
    IdempotencyConflict,
    InvalidAmount,
    InvalidInput,
    InvalidTransition,
    OrderNotFound,
    OutcomeUnknown,
    PermanentError,
    StaleOrder,
    TransientError,
    UnknownAdapter,
    UnknownCurrency,
)
from orders.model import NewOrder, Order, OrderEvent
from orders.money import Money
from orders.status import OrderStatus

__all__ = [
    "AmountPrecisionError",
    "DispatchError",
    "FieldTooLong",
    "IdempotencyConflict",
    "InvalidAmount",
    "InvalidInput",
    "InvalidTransition",
    "Money",
    "NewOrder",
    "Order",
    "OrderEvent",
    "OrderNotFound",
    "OrderStatus",
    "OutcomeUnknown",
    "PermanentError",
    "StaleOrder",
    "TransientError",
    "UnknownAdapter",
    "UnknownCurrency",
]
