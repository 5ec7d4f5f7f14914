"""Fault injection for the sandbox: what can go wrong, per operation, as a queue or a rate.

A :class:`FaultPlan` is the configuration (in :class:`~adapters.sandbox.config.SandboxConfig` or
posted to ``/_control/faults/{operation}``); a :class:`FaultInjector` is its running state, which
draws the next fault for each request and counts the faults it served.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Operation(StrEnum):
    """A merchant API operation that faults can be injected into."""

    CREATE = "create"
    STATUS = "status"
    CANCEL = "cancel"
    LOOKUP = "lookup"
    LIST = "list"  # the payment list reconciliation reads (issue #16)
    REFUND = "refund"  # refunds and payouts (issue #14)
    REFUND_STATUS = "refund_status"
    PAYOUT = "payout"
    PAYOUT_STATUS = "payout_status"


class FaultKind(StrEnum):
    LATENCY = "latency"  # answer normally after ``ms`` milliseconds
    HTTP_500 = "http_500"  # nothing happens; 500 with a JSON error
    HTTP_429 = "http_429"  # nothing happens; 429 with Retry-After: ``retry_after``
    TIMEOUT = "timeout"  # nothing happens; the request is held ``seconds``, then 504
    ACCEPT_THEN_TIMEOUT = "accept_then_timeout"  # the operation happens, then held like TIMEOUT
    MALFORMED = "malformed"  # the operation happens; 200 with an HTML page or truncated JSON
    AMOUNT_MISMATCH = "amount_mismatch"  # the reported amount is off by ``delta`` minor units
    REFUSE = "refuse"  # nothing happens; 422 ``refused``: a definite no


class MalformedStyle(StrEnum):
    HTML = "html"
    TRUNCATED = "truncated"


# What each fault kind does and which of :class:`Fault`'s fields it reads: listed at
# ``GET /_control/`` and in docs/sandbox.md (a test keeps all three in step with the enum).
FAULT_KIND_HELP: Mapping[FaultKind, tuple[str, tuple[str, ...]]] = {
    FaultKind.LATENCY: ("answer normally after `ms` milliseconds", ("ms",)),
    FaultKind.HTTP_500: ("nothing happens; 500 with a JSON error", ()),
    FaultKind.HTTP_429: (
        "nothing happens; 429 with `Retry-After: retry_after` (seconds)",
        ("retry_after",),
    ),
    FaultKind.TIMEOUT: (
        "nothing happens; the request is held `seconds` (default: the sandbox's hang_seconds), "
        "then 504",
        ("seconds",),
    ),
    FaultKind.ACCEPT_THEN_TIMEOUT: (
        "the operation happens, then the request is held like `timeout`: the answer is lost",
        ("seconds",),
    ),
    FaultKind.MALFORMED: (
        "the operation happens; 200 with an nginx HTML page (`style: html`) or the JSON cut in "
        "half (`style: truncated`)",
        ("style",),
    ),
    FaultKind.AMOUNT_MISMATCH: (
        "the operation happens; every reported amount is off by `delta` minor units",
        ("delta",),
    ),
    FaultKind.REFUSE: (
        "nothing happens; 422 with the error code `refused`: a definite no (a refund or payout "
        "the payment system declines)",
        (),
    ),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault. Only the parameters of its kind matter."""

    kind: FaultKind
    ms: int = 500
    retry_after: int = 1
    seconds: float | None = None  # None: the config's ``hang_seconds``
    style: MalformedStyle = MalformedStyle.HTML
    delta: int = 100

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """A fault from ``"http_500"`` or ``{"kind": "latency", "ms": 200}``; ValueError if bad."""
        if isinstance(data, str):
            data = {"kind": data}
        if not isinstance(data, Mapping):
            raise ValueError("a fault is a kind name or an object with a 'kind'")
        unknown = set(data) - {"kind", "ms", "retry_after", "seconds", "style", "delta"}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        try:
            return cls(
                kind=FaultKind(data["kind"]),
                ms=_number(data, "ms", 500, int),
                retry_after=_number(data, "retry_after", 1, int),
                seconds=None if data.get("seconds") is None else _number(data, "seconds", 0, float),
                style=MalformedStyle(data.get("style", MalformedStyle.HTML)),
                delta=_number(data, "delta", 100, int),
            )
        except KeyError:
            raise ValueError("a fault needs a 'kind'") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "ms": self.ms,
            "retry_after": self.retry_after,
            "seconds": self.seconds,
            "style": self.style.value,
            "delta": self.delta,
        }


def _number(
    data: Mapping[str, Any], key: str, default: float, kind: type[int] | type[float]
) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"fault field {key!r} must be a non-negative number")
    return kind(value)


@dataclass(frozen=True, slots=True)
class OperationFaults:
    """Faults for one operation: the queue is served first, one per call; then ``rate`` of the
    calls get a fault drawn at random from ``choices``."""

    queue: tuple[Fault, ...] = ()
    rate: float = 0.0
    choices: tuple[Fault, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> OperationFaults:
        if not isinstance(data, Mapping):
            raise ValueError("operation faults are an object {queue, rate, choices}")
        rate = data.get("rate", 0.0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError("'rate' must be a number between 0 and 1")
        queue, choices = data.get("queue", []), data.get("choices", [])
        if not isinstance(queue, list) or not isinstance(choices, list):
            raise ValueError("'queue' and 'choices' must be lists of faults")
        parsed = cls(
            tuple(map(Fault.from_json, queue)), float(rate), tuple(map(Fault.from_json, choices))
        )
        if parsed.rate and not parsed.choices:
            raise ValueError("a 'rate' needs at least one fault in 'choices'")
        return parsed


@dataclass(frozen=True, slots=True)
class WebhookFaults:
    duplicate: bool = False  # every webhook is delivered twice, with the same event_id
    reorder: bool = False  # webhooks are held back and delivered pairwise out of order


# The switches of ``POST /_control/webhooks``, for ``GET /_control/`` and docs/sandbox.md.
WEBHOOK_FAULT_HELP: Mapping[str, str] = {
    "duplicate": "every webhook is delivered twice, with the same event_id",
    "reorder": "webhooks are held back (up to reorder_window) and delivered pairwise out of order",
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults a sandbox starts with (and returns to on ``POST /_control/reset``)."""

    operations: Mapping[Operation, OperationFaults] = field(default_factory=dict)
    webhooks: WebhookFaults = field(default_factory=WebhookFaults)


class FaultInjector:
    """The running fault state. Used from the event loop only; every method is synchronous."""

    def __init__(self, plan: FaultPlan, seed: int | None = None) -> None:
        self._random = random.Random(seed)  # noqa: S311 - fault dice, not cryptography
        self._queues: dict[Operation, deque[Fault]] = {}
        self._rates: dict[Operation, OperationFaults] = {}
        self.webhooks = plan.webhooks
        self.served: Counter[tuple[Operation, FaultKind]] = Counter()
        for operation, faults in plan.operations.items():
            self.add(operation, faults)

    def add(self, operation: Operation, faults: OperationFaults) -> None:
        """Append ``faults.queue`` to the operation's queue and set its rate and choices."""
        self._queues.setdefault(operation, deque()).extend(faults.queue)
        self._rates[operation] = OperationFaults(rate=faults.rate, choices=faults.choices)

    def clear(self) -> None:
        """Drop every queued fault, rate and webhook fault; served counts stay."""
        self._queues.clear()
        self._rates.clear()
        self.webhooks = WebhookFaults()

    def draw(self, operation: Operation) -> Fault | None:
        """The fault for this call, if any, counted as served."""
        fault: Fault | None = None
        queue = self._queues.get(operation)
        if queue:
            fault = queue.popleft()
        else:
            rate = self._rates.get(operation)
            if rate and rate.choices and self._random.random() < rate.rate:
                fault = self._random.choice(rate.choices)
        if fault is not None:
            self.served[operation, fault.kind] += 1
        return fault

    def describe(self) -> dict[str, Any]:
        """The pending queues, rates and webhook faults, for ``GET /_control/faults``."""
        operations = {}
        for operation in Operation:
            rate = self._rates.get(operation, OperationFaults())
            operations[operation.value] = {
                "queue": [f.to_json() for f in self._queues.get(operation, ())],
                "rate": rate.rate,
                "choices": [f.to_json() for f in rate.choices],
            }
        return {
            "operations": operations,
            "webhooks": {"duplicate": self.webhooks.duplicate, "reorder": self.webhooks.reorder},
        }

    def served_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for (operation, kind), count in sorted(self.served.items()):
            counts.setdefault(operation.value, {})[kind.value] = count
        return counts
