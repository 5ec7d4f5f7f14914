"""For sites that receive paydispatch's billing webhooks: check the signature, then trust the body.

    from dispatcher.billing.receiver import verify

    event = verify(secret, request.headers["Paydispatch-Signature"], raw_body)
    # event["id"] is stable across retries: store it, ignore an id you have seen.

The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``; more than one
``v1`` may be present (secret rotation). Apart from the error class it uses only the standard
library and :mod:`orders.signing` (itself standard library only); docs/billing.md shows the same
check in PHP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from orders.errors import InvalidSignature
from orders.signing import SignatureHeader, signature_header

# The digest itself, for a receiver written by hand (tests/e2e/test_php_client.py, docs).
from orders.signing import signature as signature  # noqa: PLC0414

HEADER = "Paydispatch-Signature"
TOLERANCE = 300  # seconds; older signatures are refused as replays


def sign(secret: str | Sequence[str], body: bytes, timestamp: int | None = None) -> str:
    """The ``Paydispatch-Signature`` header value for ``body``: one ``v1`` per secret (during a
    rotation the new and the previous secret both sign, so a receiver holding either accepts)."""
    return signature_header(secret, int(time.time()) if timestamp is None else timestamp, body)


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance: int = TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """The event, if ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds;
    else :class:`InvalidSignature`."""
    if not header:
        raise InvalidSignature(f"no {HEADER} header")
    parsed = SignatureHeader.parse(header)
    if parsed is None:
        raise InvalidSignature(f"{HEADER} has no timestamp or no v1 signature")
    current = time.time() if now is None else now
    if abs(current - parsed.timestamp) > tolerance:
        away = current - parsed.timestamp
        raise InvalidSignature(f"{HEADER} timestamp is {away:.0f}s away from now")
    if not parsed.matches(secret, body):
        raise InvalidSignature(f"{HEADER} does not match the body")
    try:
        event: dict[str, Any] = json.loads(body)
    except ValueError as exc:  # signed, so ours, but not JSON: refuse all the same
        raise InvalidSignature("signed body is not JSON") from exc
    return event
