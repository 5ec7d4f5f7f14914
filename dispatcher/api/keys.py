"""Site API keys: ``pd_<prefix>_<secret>``; only a SHA-256 of the whole key is stored.

The prefix is public (it finds the row and names the key in ``keys list``); the secret is 32
random bytes, so a fast hash is enough (there is nothing to brute-force).

Verified keys are cached, so most requests cost no query. A revoke must still reach every API
process at once (issue #12, item 5): the database announces each revoked key on the channel
``paydispatch_api_keys`` (a trigger on ``api_keys``), and each process's :meth:`ApiKeys.listen`
thread drops it from the cache when the notice arrives. While that listener is not connected
(at start, after a lost connection) the cache is not used at all and every request checks the
database, so a notice missed meanwhile cannot leave a revoked key working. ``ttl`` bounds an
entry's age all the same.
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

import psycopg
import structlog

from dispatcher.billing.sites import check_site
from orders.backoff import ceiling
from orders.db import AsyncPool, Pool, database_errors, query
from orders.model import check_text

log = structlog.get_logger(__name__)

PREFIX_BYTES = 6
SECRET_BYTES = 32
TOUCH_EVERY = 60.0  # seconds between last_used_at updates of one key
CHANNEL = "paydispatch_api_keys"  # the trigger api_keys_announce_revoked notifies it
CACHE_MAX = 10_000
# The listener's reconnect waits, in seconds: doubling from the first to the cap.
RECONNECT_FIRST = 0.1
RECONNECT_CAP = 5.0
DESCRIPTION_MAX = 200  # the schema's CHECK on api_keys.description


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
    """Create, list and revoke keys (synchronous, over ``pool``: the CLI's commands), and
    verify them (async, on the API's loop)."""

    def __init__(self, pool: Pool, *, ttl: float = 30.0) -> None:
        self.pool = pool
        self.ttl = ttl
        # key hash -> (site, prefix, checked at); trusted only while ``_trusted()``
        self._cache: dict[str, tuple[str, str, float]] = {}
        self._generation = 0  # bumped by every invalidation: a verify racing one caches nothing
        self._touched: dict[UUID, float] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._listening = False
        self._stop = threading.Event()

    def create(self, site: str, description: str = "") -> tuple[ApiKey, str]:
        """A new key for ``site``; the returned key string is never stored or shown again."""
        # The rule of `paydispatch sites`: a site its webhook cannot be set for would have
        # events that are never delivered.
        check_site(site)
        # Only stored and listed, so control characters pass as before; a NUL or a lone
        # surrogate, which the database cannot hold, is refused here instead of failing there.
        check_text("description", description, limit=DESCRIPTION_MAX, required=False, controls=True)
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
        """Revoke a key; every API process over the same database stops taking it at once."""
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("revoke_api_key"), {"prefix": prefix}).fetchone()
        self._forget(prefix)
        return None if row is None else ApiKey.from_row(row)

    # -- the cache and its invalidation ---------------------------------------------------

    def _trusted(self) -> bool:
        """Whether cached keys may be used: always without a listener (the CLI, tests that
        construct this directly), else only while it is connected."""
        return self._listener is None or self._listening

    def _forget(self, prefix: str | None) -> None:
        """Drop the cached key with ``prefix`` (None: every key)."""
        with self._lock:
            self._generation += 1
            if prefix is None:
                self._cache.clear()
            else:
                for digest in [d for d, hit in self._cache.items() if hit[1] == prefix]:
                    del self._cache[digest]

    def listen(self, conninfo: str) -> None:
        """Start the thread that drops revoked keys from the cache as their notices arrive."""
        if self._listener is not None:
            return
        self._stop.clear()
        self._listener = threading.Thread(
            target=self._listen, args=(conninfo,), name="paydispatch-api-keys", daemon=True
        )
        self._listener.start()

    def stop_listening(self) -> None:
        if self._listener is None:
            return
        self._stop.set()
        self._listener.join(timeout=10)
        self._listener = None
        self._listening = False
        self._forget(None)

    @property
    def listening(self) -> bool:
        """The listener is connected: the cache is in use."""
        return self._listener is not None and self._listening

    def _listen(self, conninfo: str) -> None:
        failures = 0  # tries since the listener was last connected
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(query("listen_api_keys"))  # CHANNEL
                    # Notices sent before LISTEN are lost: start from an empty cache.
                    self._forget(None)
                    self._listening = True
                    failures = 0
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self._forget(notice.payload)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("API key revocation listener lost; keys are checked per request",
                                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            finally:
                self._listening = False
                self._forget(None)
            # No jitter: one listener per process, and the cache is off until it is back.
            self._stop.wait(ceiling(RECONNECT_FIRST, failures, cap=RECONNECT_CAP))
            failures += 1

    def cached_site(self, key: str) -> str | None:
        """The site of a key verified less than ``ttl`` ago, without touching the database."""
        if not self._trusted():
            return None
        hit = self._cache.get(_hash(key))
        if hit is not None and time.monotonic() - hit[2] < self.ttl:
            return hit[0]
        return None

    async def verify(self, key: str, pool: AsyncPool) -> str | None:
        """The site a valid, unrevoked key belongs to; None for anything else. On ``pool``, the
        API's async pool (the management commands above are synchronous, for the CLI)."""
        cached = self.cached_site(key)
        if cached is not None:
            return cached
        prefix = split_key(key)
        if prefix is None:
            return None
        digest = _hash(key)
        generation = self._generation
        now = time.monotonic()
        with database_errors():
            async with pool.connection() as conn:
                cursor = await conn.execute(query("find_api_key"), {"prefix": prefix})
                row = await cursor.fetchone()
                if row is None or row["revoked_at"] is not None:
                    return None
                if not hmac.compare_digest(row["key_hash"], digest):
                    return None
                if now - self._touched.get(row["id"], -TOUCH_EVERY) >= TOUCH_EVERY:
                    await conn.execute(query("touch_api_key"), {"id": row["id"]})
                    self._touched[row["id"]] = now
        site: str = row["site"]
        with self._lock:
            # A revoke announced while this read was under way may predate it: cache nothing.
            if self._generation == generation and self._trusted():
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (site, prefix, now)
        return site
