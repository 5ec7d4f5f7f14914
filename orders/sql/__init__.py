"""Named SQL of the order library (``queries.sql``) and where the schema files live."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

_BLOCK = re.compile(r"^-- (\w+) --$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Every ``-- name --`` block of a SQL file, by name, without its comment lines."""
    parts = _BLOCK.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip()
    return found


@cache
def package_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """The named queries of a SQL file shipped inside ``package``."""
    return parse_queries(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))


def queries() -> dict[str, str]:
    """Every ``-- name --`` block of the order library's queries.sql, by name."""
    return package_queries(__package__)


def query(name: str) -> str:
    return queries()[name]


def schema_path() -> Path:
    """schema.sql: packaged beside this module in a wheel, at the repository root in a checkout."""
    packaged = Path(__file__).with_name("schema.sql")
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "schema.sql"


def migrations_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "migrations"
