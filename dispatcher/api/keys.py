"""Site API keys: ``pd_<prefix>_<secret>``; only a SHA-256 of the whole key is stored.

The prefix is public (it finds the row and names the key in ``keys list``); the secret is 32
random bytes, so a fast hash is enough (there is nothing to brute-force). Verified keys are
cached for ``ttl`` seconds, so a revoked key stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from orders.errors import InvalidInput
from orders.model import LIMITS
from orders.repository import Pool, database_errors
from orders.sql import query

PREFIX_BYTES = 6
SECRET_BYTES = 32
TOUCH_EVERY = 60.0  # seconds between last_used_at updates of one key


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_key(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "pd" or len(parts[1]) != PREFIX_BYTES * 2:
        return None
    if not all(c in "0123456789abcdef" for c in parts[1]) or len(parts[2]) < 32:
        return None
    return parts[1]


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: UUID
    site: str
    prefix: str
    description: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        return cls(
            id=row["id"],
            site=row["site"],
            prefix=row["prefix"],
            description=row["description"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            revoked_at=row["revoked_at"],
        )


class ApiKeys:
    """Create, list, revoke and verify keys."""

    def __init__(self, pool: Pool, *, ttl: float = 30.0) -> None:
        self.pool = pool
        self.ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}  # key hash -> (site, checked at)
        self._touched: dict[UUID, float] = {}
        self._lock = threading.Lock()

    def create(self, site: str, description: str = "") -> tuple[ApiKey, str]:
        """A new key for ``site``; the returned key string is never stored or shown again."""
        if not site.strip() or len(site) > LIMITS["site"] or "\x00" in site:
            raise InvalidInput("site", f"must be 1-{LIMITS['site']} characters")
        if len(description) > 200:
            raise InvalidInput("description", "is longer than 200 characters")
        prefix = secrets.token_hex(PREFIX_BYTES)
        key = f"pd_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
        params = {
            "site": site,
            "prefix": prefix,
            "key_hash": _hash(key),
            "description": description,
        }
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("insert_api_key"), params).fetchone()
        assert row is not None
        return ApiKey.from_row(row), key

    def list(self, site: str | None = None) -> list[ApiKey]:
        with database_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("list_api_keys"), {"site": site}).fetchall()
        return [ApiKey.from_row(row) for row in rows]

    def revoke(self, prefix: str) -> ApiKey | None:
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("revoke_api_key"), {"prefix": prefix}).fetchone()
        with self._lock:
            self._cache.clear()
        return None if row is None else ApiKey.from_row(row)

    def cached_site(self, key: str) -> str | None:
        """The site of a key verified less than ``ttl`` ago, without touching the database."""
        hit = self._cache.get(_hash(key))
        if hit is not None and time.monotonic() - hit[1] < self.ttl:
            return hit[0]
        return None

    def verify(self, key: str) -> str | None:
        """The site a valid, unrevoked key belongs to; None for anything else."""
        digest = _hash(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self.ttl:
            return hit[0]
        prefix = split_key(key)
        if prefix is None:
            return None
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("find_api_key"), {"prefix": prefix}).fetchone()
            if row is None or row["revoked_at"] is not None:
                return None
            if not hmac.compare_digest(row["key_hash"], digest):
                return None
            if now - self._touched.get(row["id"], -TOUCH_EVERY) >= TOUCH_EVERY:
                conn.execute(query("touch_api_key"), {"id": row["id"]})
                self._touched[row["id"]] = now
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (row["site"], now)
        site: str = row["site"]
        return site
