"""Named SQL of billing (``queries.sql``, ``-- name --`` blocks like orders/sql/queries.sql)."""

from __future__ import annotations

from orders.sql import package_queries


def query(name: str) -> str:
    return package_queries(__package__)[name]
