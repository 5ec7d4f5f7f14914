"""The ``t=<unix seconds>,v1=<hex HMAC-SHA256>`` webhook signature, written and read in one place.

paydispatch signs its billing webhooks this way (``Paydispatch-Signature``, read by
:mod:`dispatcher.billing.receiver`), the sandbox payment system signs its own webhooks the
same way (``Sandbox-Signature``, :mod:`adapters.sandbox.protocol`), and so does Stripe
(``Stripe-Signature``, read by :mod:`adapters.stripe`). The digest covers
``"<t>.<body>"``, so a captured body cannot be replayed under a fresh timestamp; more than one
``v1`` may be present, one per secret, so a receiver holding either the new or the previous
secret accepts during a rotation.

Standard library only: a site may copy this check, and the sandbox's adapter loads it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

# At most 12 digits (past the year 33000) and exactly a SHA-256 hex digest: anything else in a
# header is refused while parsing, so it never reaches the comparison.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets: str | Sequence[str], timestamp: int, body: bytes) -> str:
    """The header value signing ``body`` at ``timestamp``: one ``v1`` per secret, in order."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys:
        raise ValueError("a signature needs at least one secret")
    return f"t={timestamp}," + ",".join(f"v1={signature(key, timestamp, body)}" for key in keys)


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """A parsed signature header: when it was signed and the ``v1`` digests it carries."""

    timestamp: int
    digests: tuple[str, ...]

    @classmethod
    def parse(cls, value: str) -> SignatureHeader | None:
        """None unless the header is of the form ``t=<digits>,v1=<hex>[,v1=<hex>...]`` with
        one ``t`` (two would leave it open which one was signed; unknown keys, such as a
        future ``v2``, are skipped)."""
        timestamps: list[int] = []
        digests: list[str] = []
        for part in value.split(","):
            key, _, item = part.strip().partition("=")
            if key == "t":
                if not _TIMESTAMP.fullmatch(item):
                    return None
                timestamps.append(int(item))
            elif key == "v1" and _DIGEST.fullmatch(item):
                digests.append(item)
        if len(timestamps) != 1 or not digests:
            return None
        return cls(timestamps[0], tuple(digests))

    def matches(self, secret: str | Sequence[str], body: bytes) -> bool:
        """Whether any digest is the body's HMAC under ``secret`` (or under any of several
        secrets, during a rotation), every pair compared in constant time."""
        keys = [secret] if isinstance(secret, str) else list(secret)
        expected = [signature(key, self.timestamp, body) for key in keys]
        # Compare every pair so timing does not reveal which one matched.
        results = [hmac.compare_digest(e, digest) for e in expected for digest in self.digests]
        return any(results)
