"""How a sandbox payment system is set up: credentials, currencies, timings, initial faults."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.sandbox.faults import FaultPlan
from adapters.sandbox.protocol import CURRENCIES, DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything a sandbox server needs; the defaults match the adapter's defaults."""

    api_key: str = field(default=DEFAULT_API_KEY, repr=False)
    webhook_secret: str = field(default=DEFAULT_WEBHOOK_SECRET, repr=False)
    # Base of the pay_url links; None: the URL the create request came in on.
    public_url: str | None = None
    currencies: frozenset[str] = CURRENCIES
    faults: FaultPlan = field(default_factory=FaultPlan)
    # How long ``timeout`` faults hold a request; longer than any sane client timeout.
    hang_seconds: float = 30.0
    webhook_attempts: int = 4
    webhook_timeout: float = 5.0
    webhook_backoff: float = 0.5  # seconds before the first retry, doubled after each
    # Webhook requests on the wire at once (kept-alive connections); the rest wait their turn.
    webhook_concurrency: int = 64
    # How long a ``reorder`` webhook fault waits for a second webhook to swap with.
    reorder_window: float = 1.0
    seed: int | None = None  # for the fault dice, so runs with rates are reproducible
    # Refunds and payouts (issue #14): seconds until a pending one succeeds by itself; None:
    # it stays pending until the control API (or, for a payout, its page) settles it.
    refund_settle_seconds: float | None = 1.0
    payout_settle_seconds: float | None = None
