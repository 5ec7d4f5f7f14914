"""The one backoff: capped exponential growth, with full jitter where many callers wait at once.

Every wait between tries in paydispatch is ``first * factor**attempt`` capped at ``cap``: the
poll schedule, a failed step's retry, the transport's and the client's retries of one call (never
shorter than the server's ``Retry-After``), the billing webhook's redelivery, the late watch, the
API key listener's reconnect and the sandbox's webhook retries.
Full jitter (a uniformly random wait up to that ceiling, as in AWS's "Exponential Backoff and
Jitter") spreads out the callers that failed together instead of sending them back in lockstep.

Standard library only: ``paydispatch-client`` ships this module beside ``orders.client``.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def ceiling(first: float, attempt: int, *, cap: float, factor: float = 2.0) -> float:
    """``first * factor**attempt``, at most ``cap`` (also when the power is too large for a float).

    ``attempt`` counts from 0: the first wait is ``first``.
    """
    try:
        return min(cap, first * factor**attempt)
    except OverflowError:
        return cap


def full_jitter(
    first: float,
    attempt: int,
    *,
    cap: float,
    factor: float = 2.0,
    rng: Callable[[], float] | None = None,
) -> float:
    """A uniformly random wait below :func:`ceiling` (``rng`` in ``[0, 1)``).

    ``rng`` defaults to :func:`random.random`, looked up at each call, so a test that replaces
    it replaces every backoff's draw.
    """
    draw = rng if rng is not None else random.random  # jitter, not cryptography
    return ceiling(first, attempt, cap=cap, factor=factor) * draw()


def retry_after_wait(
    first: float,
    attempt: int,
    *,
    cap: float,
    retry_after: float | None,
    rng: Callable[[], float] | None = None,
) -> float:
    """:func:`full_jitter`, but never shorter than the server's ``Retry-After`` (both at most
    ``cap``): a server that says when to come back is believed, up to the caller's patience."""
    wait = full_jitter(first, attempt, cap=cap, rng=rng)
    return min(cap, max(wait, retry_after or 0.0))
