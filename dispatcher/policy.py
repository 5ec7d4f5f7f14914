"""Per-adapter dispatch policy: poll schedule, late-payment watch, limits on calls.

Defaults come from the adapter's capabilities; each value can be overridden like any adapter
setting, as ``PAYDISPATCH_<ADAPTER>_<KEY>`` or ``key`` in ``[adapters.<name>]``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from adapters.base import Adapter, PollPolicy
from adapters.registry import env_name
from orders.backoff import full_jitter
from orders.settings import number

MIN_DELAY = timedelta(milliseconds=200)
# How far past its deadline a failed step's retry may be scheduled; past that, retries come at
# most this far apart (a final check must not wait minutes behind a backoff).
RETRY_GRACE = timedelta(seconds=15)


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    poll: PollPolicy
    late_window: timedelta  # how long after expired/rejected/cancelled a late payment is watched
    late_interval: timedelta
    timeout: float  # seconds, per HTTP call
    retries: int  # extra tries of one call on transient errors, same idempotency key
    concurrency: int  # calls in flight to this payment system, per worker process
    rate: float  # calls per second to this payment system, per worker process
    submit_attempts: int  # submit steps before an order is given up as failed
    breaker_failures: int  # consecutive failures that open the circuit
    breaker_reset: float  # seconds before a half-open trial call


_KEYS: Mapping[str, type] = {
    "POLL_FIRST": float,
    "POLL_FACTOR": float,
    "POLL_CAP": float,
    "LATE_WINDOW": float,
    "LATE_INTERVAL": float,
    "TIMEOUT": float,
    "RETRIES": int,
    "CONCURRENCY": int,
    "RATE": float,
    "SUBMIT_ATTEMPTS": int,
    "BREAKER_FAILURES": int,
    "BREAKER_RESET": float,
}


def load_policy(
    adapter: Adapter,
    configured: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DispatchPolicy:
    environ = os.environ if environ is None else environ
    table = {k.upper(): v for k, v in (configured or {}).items()}
    poll = adapter.capabilities.poll
    defaults: dict[str, float] = {
        "POLL_FIRST": poll.first.total_seconds(),
        "POLL_FACTOR": poll.factor,
        "POLL_CAP": poll.cap.total_seconds(),
        "LATE_WINDOW": 24 * 3600.0,
        "LATE_INTERVAL": max(poll.cap.total_seconds(), 60.0),
        "TIMEOUT": 10.0,
        "RETRIES": 2,
        "CONCURRENCY": 200,
        "RATE": 100.0,
        "SUBMIT_ATTEMPTS": 20,
        "BREAKER_FAILURES": 20,
        "BREAKER_RESET": 10.0,
    }
    values: dict[str, float] = {}
    for key, kind in _KEYS.items():
        var = env_name(adapter.name, key)
        raw = environ.get(var, table.get(key))
        if raw is None:
            values[key] = defaults[key]
            continue
        if key == "RETRIES":  # no retry at all is a choice; every other value must be > 0
            values[key] = number(var, raw, kind=int, low=0)
        else:
            values[key] = number(var, raw, kind=kind, positive=True)
    return DispatchPolicy(
        poll=PollPolicy(
            first=timedelta(seconds=values["POLL_FIRST"]),
            factor=values["POLL_FACTOR"],
            cap=timedelta(seconds=values["POLL_CAP"]),
        ),
        late_window=timedelta(seconds=values["LATE_WINDOW"]),
        late_interval=timedelta(seconds=values["LATE_INTERVAL"]),
        timeout=values["TIMEOUT"],
        retries=int(values["RETRIES"]),
        concurrency=int(values["CONCURRENCY"]),
        rate=values["RATE"],
        submit_attempts=int(values["SUBMIT_ATTEMPTS"]),
        breaker_failures=int(values["BREAKER_FAILURES"]),
        breaker_reset=values["BREAKER_RESET"],
    )


# One generator for every poll's jitter: a new random.Random() seeds itself from the operating
# system, which cost a poll about 2 % of a worker's CPU.
_JITTER = random.Random()  # noqa: S311 - jitter, not cryptography
os.register_at_fork(after_in_child=_JITTER.seed)  # a forked process gets its own sequence


def next_poll(
    poll: PollPolicy,
    polls: int,
    now: datetime,
    deadline: datetime,
    rng: random.Random | None = None,
) -> datetime:
    """When to look next: capped exponential backoff with full jitter, never past ``deadline``.

    The first poll comes ``poll.first`` after submission; poll n waits a uniformly random time
    up to ``min(cap, first * factor**n)`` (at least 200 ms), so many orders created together
    spread out instead of polling in lockstep.
    """
    if polls == 0:
        delay = poll.first
    else:
        rng = rng or _JITTER
        wait = full_jitter(
            poll.first.total_seconds(),
            polls,
            cap=poll.cap.total_seconds(),
            factor=poll.factor,
            rng=rng.random,
        )
        delay = max(timedelta(seconds=wait), MIN_DELAY)
    return min(now + delay, deadline)


def retry_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0) -> timedelta:
    """Backoff before the next try of a failed step (full jitter)."""
    return max(timedelta(seconds=full_jitter(base, min(attempt, 30), cap=cap)), MIN_DELAY)


def retry_at(
    errors: int, now: datetime, deadline: datetime, *, grace: timedelta = RETRY_GRACE
) -> datetime:
    """When to try a failed step again, after ``errors`` consecutive failures before this one.

    Full-jitter backoff by the errors alone, never later than ``grace`` after ``deadline``;
    once that has passed, never more than ``grace`` from now.
    """
    delay = retry_delay(errors)
    latest = max(deadline + grace, now + min(delay, grace))
    return min(now + delay, latest)
