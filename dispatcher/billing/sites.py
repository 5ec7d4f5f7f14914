"""Each site's billing webhook: where its ``order.paid`` events go and the secret that signs them.

One URL and one secret for every site let site A receive site B's events and forge them
(issue #12, item 6). A site's webhook is set with ``paydispatch sites set-webhook``; its secret
is made here, shown once, and stored server-side (the daemon signs with it, so only the
database holds it, like the rest of what a site trusts us with). ``rotate`` makes a new secret;
the previous one keeps signing every delivery next to it until the overlap ends, so the site
can switch at its own pace with no event refused.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dispatcher.billing.sql import query
from orders.errors import InvalidInput
from orders.model import LIMITS
from orders.repository import Pool, database_errors

SECRET_PREFIX = "whsec_"  # noqa: S105  # a label, not a secret
SECRET_BYTES = 32
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=30)
MAX_URL = 2048
_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def check_site(site: str) -> str:
    if not 1 <= len(site) <= LIMITS["site"] or not site.isprintable() or site.strip() != site:
        raise InvalidInput("site", f"must be 1-{LIMITS['site']} printable characters")
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

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def set(self, site: str, url: str) -> tuple[SiteWebhook, str | None]:
        """Point ``site``'s events at ``url``; returns the new secret when the site had none
        (shown once), else None (the secret is unchanged)."""
        secret = new_secret()
        params = {"site": check_site(site), "url": check_url(url), "secret": secret}
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("set_site_webhook"), params).fetchone()
        assert row is not None
        return SiteWebhook.from_row(row), secret if row["created"] else None

    def rotate(
        self, site: str, overlap: timedelta = DEFAULT_OVERLAP
    ) -> tuple[SiteWebhook, str] | None:
        """A new secret for ``site`` (shown once); the current one keeps signing for
        ``overlap``. None when the site has no webhook."""
        if not timedelta(0) <= overlap <= MAX_OVERLAP:
            raise InvalidInput("overlap", f"must be between 0 and {MAX_OVERLAP.days} days")
        secret = new_secret()
        params = {"site": check_site(site), "secret": secret, "overlap": overlap}
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("rotate_site_secret"), params).fetchone()
        return None if row is None else (SiteWebhook.from_row(row), secret)

    def list(self, site: str | None = None) -> list[SiteWebhook]:
        with database_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("list_site_webhooks"), {"site": site}).fetchall()
        return [SiteWebhook.from_row(row) for row in rows]

    def get(self, site: str) -> SiteWebhook | None:
        found = self.list(site)
        return found[0] if found else None

    def remove(self, site: str) -> bool:
        """Stop sending ``site``'s events (they wait, and park, until a webhook is set)."""
        with database_errors(), self.pool.connection() as conn:
            return conn.execute(query("delete_site_webhook"), {"site": site}).fetchone() is not None
