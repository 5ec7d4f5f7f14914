"""Each site's billing webhook: where its ``order.paid`` events go and the secret that signs them.

One URL and one secret for every site let site A receive site B's events and forge them
(issue #12, item 6). A site's webhook is set with ``paydispatch sites set-webhook``; its secret
is made here, shown once, and stored server-side (the daemon signs with it, so only the
database holds it, like the rest of what a site trusts us with). ``rotate`` makes a new secret;
the previous one keeps signing every delivery next to it until the overlap ends, so the site
can switch at its own pace with no event refused.

:class:`SiteWebhooks` is async; :class:`SyncSiteWebhooks` is its face for the CLI and tests.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dispatcher.billing.face import Face
from orders.db import AsyncPool, database_errors, query
from orders.errors import InvalidInput
from orders.model import LIMITS, check_text

SECRET_PREFIX = "whsec_"  # noqa: S105  # a label, not a secret
SECRET_BYTES = 32
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=30)
MAX_URL = 2048
_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def check_site(site: str) -> str:
    """``site`` if a webhook may be set for it: an order's site (:func:`check_text`) that is
    also a label, so no two sites look alike (:func:`orders.model.label_problem`)."""
    check_text("site", site, limit=LIMITS["site"], label=True)
    return site


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host and no whitespace or control characters."""
    if len(url) > MAX_URL or not url.isprintable() or _URL.fullmatch(url) is None:
        raise InvalidInput("url", "must be an http:// or https:// URL with a host")
    return url


@dataclass(frozen=True, slots=True)
class SiteWebhook:
    """A site's webhook as ops see it: never its secrets."""

    site: str
    url: str
    previous_until: datetime | None  # the previous secret signs too until then
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SiteWebhook:
        return cls(
            site=row["site"],
            url=row["url"],
            previous_until=row["previous_until"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class SiteWebhooks:
    """Set, rotate, list and remove sites' webhooks."""

    def __init__(self, pool: AsyncPool) -> None:
        self.pool = pool

    async def _one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        with database_errors():
            async with self.pool.connection() as conn:
                return await (await conn.execute(query(name), params)).fetchone()

    async def set(self, site: str, url: str) -> tuple[SiteWebhook, str | None]:
        """Point ``site``'s events at ``url``; returns the new secret when the site had none
        (shown once), else None (the secret is unchanged)."""
        secret = new_secret()
        params = {"site": check_site(site), "url": check_url(url), "secret": secret}
        row = await self._one("set_site_webhook", params)
        assert row is not None
        return SiteWebhook.from_row(row), secret if row["created"] else None

    async def rotate(
        self, site: str, overlap: timedelta = DEFAULT_OVERLAP
    ) -> tuple[SiteWebhook, str] | None:
        """A new secret for ``site`` (shown once); the current one keeps signing for
        ``overlap``. None when the site has no webhook."""
        if not timedelta(0) <= overlap <= MAX_OVERLAP:
            raise InvalidInput("overlap", f"must be between 0 and {MAX_OVERLAP.days} days")
        secret = new_secret()
        params = {"site": check_site(site), "secret": secret, "overlap": overlap}
        row = await self._one("rotate_site_secret", params)
        return None if row is None else (SiteWebhook.from_row(row), secret)

    async def list(self, site: str | None = None) -> list[SiteWebhook]:
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(query("list_site_webhooks"), {"site": site})
                rows = await cursor.fetchall()
        return [SiteWebhook.from_row(row) for row in rows]

    async def get(self, site: str) -> SiteWebhook | None:
        found = await self.list(site)
        return found[0] if found else None

    async def remove(self, site: str) -> bool:
        """Stop sending ``site``'s events (they wait, and park, until a webhook is set)."""
        return await self._one("delete_site_webhook", {"site": site}) is not None


class SyncSiteWebhooks(Face):
    """:class:`SiteWebhooks` for synchronous callers (the CLI, tests); see
    :mod:`dispatcher.billing.face`."""

    def set(self, site: str, url: str) -> tuple[SiteWebhook, str | None]:
        return self.run(lambda pool: SiteWebhooks(pool).set(site, url))

    def rotate(
        self, site: str, overlap: timedelta = DEFAULT_OVERLAP
    ) -> tuple[SiteWebhook, str] | None:
        return self.run(lambda pool: SiteWebhooks(pool).rotate(site, overlap))

    def list(self, site: str | None = None) -> list[SiteWebhook]:
        return self.run(lambda pool: SiteWebhooks(pool).list(site))

    def get(self, site: str) -> SiteWebhook | None:
        return self.run(lambda pool: SiteWebhooks(pool).get(site))

    def remove(self, site: str) -> bool:
        return self.run(lambda pool: SiteWebhooks(pool).remove(site))
