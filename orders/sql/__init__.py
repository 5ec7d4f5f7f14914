"""Named SQL of the order library (``queries.sql``) and where the schema files live."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

_BLOCK = re.compile(r"^-- (\w+) --$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Every ``-- name --`` block of queries.sql, by name."""
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _BLOCK.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip()
    return found


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
