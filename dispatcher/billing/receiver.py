"""For sites that receive paydispatch's billing webhooks: check the signature, then trust the body.

    from dispatcher.billing.receiver import verify

    event = verify(secret, request.headers["Paydispatch-Signature"], raw_body)
    # event["id"] is stable across retries: store it, ignore an id you have seen.

The header is ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``; more than one
``v1`` may be present (secret rotation). Apart from the error class it uses only the standard
library; docs/billing.md shows the same check in PHP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

from orders.errors import InvalidSignature

HEADER = "Paydispatch-Signature"
TOLERANCE = 300  # seconds; older signatures are refused as replays


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str | Sequence[str], body: bytes, timestamp: int | None = None) -> str:
    """The ``Paydispatch-Signature`` header value for ``body``: one ``v1`` per secret (during a
    rotation the new and the previous secret both sign, so a receiver holding either accepts)."""
    t = int(time.time()) if timestamp is None else timestamp
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("sign needs at least one secret")
    return f"t={t}," + ",".join(f"v1={signature(s, t, body)}" for s in secrets)


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
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature(f"{HEADER} has no timestamp or no v1 signature")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidSignature(f"{HEADER} timestamp is {current - timestamp:.0f}s away from now")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise InvalidSignature(f"{HEADER} does not match the body")
    try:
        event: dict[str, Any] = json.loads(body)
    except ValueError as exc:  # signed, so ours, but not JSON: refuse all the same
        raise InvalidSignature("signed body is not JSON") from exc
    return event
