"""Create, upgrade and check the database schema.

``schema.sql`` is the truth. A new database gets it whole; an existing one gets the numbered
files of ``orders/migrations/`` after its recorded version. ``check`` compares the live catalog
with the catalog ``schema.sql`` produces, built inside a transaction that is rolled back.
This module's own statements (the lock, the version, the catalog queries) are named queries of
``orders/db/sql/schema.sql``, like every other statement.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from orders.db import query

# Serialises concurrent `db init` runs (any constant works; this one spells "paydisp").
_INIT_LOCK = 0x7061796469737030

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def schema_path() -> Path:
    """schema.sql: packaged beside this module in a wheel, at the repository root in a checkout."""
    packaged = Path(__file__).with_name("schema.sql")
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "schema.sql"


def migrations_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "migrations"


def migrations() -> list[Migration]:
    found = []
    for path in sorted(migrations_dir().glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_description.sql")
        found.append(Migration(int(match.group(1)), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def latest_version() -> int:
    return migrations()[-1].version


def schema_sql() -> str:
    return schema_path().read_text(encoding="utf-8")


def _rows(
    conn: psycopg.Connection[Any], statement: str | sql.Composed, params: Any = None
) -> list[tuple[Any, ...]]:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def current_version(conn: psycopg.Connection[Any]) -> int | None:
    """The recorded schema version, or None for a database paydispatch never touched."""
    if not _rows(conn, query("schema_version_exists"))[0][0]:
        return None
    version: int | None = _rows(conn, query("schema_version"))[0][0]
    return version


def init(conn: psycopg.Connection[Any]) -> list[str]:
    """Bring the database to the latest schema; safe to run any number of times, concurrently.

    Returns what was done, one line per step (empty when already up to date).
    """
    done: list[str] = []
    with conn.transaction():
        conn.execute(query("schema_init_lock"), {"key": _INIT_LOCK})
        version = current_version(conn)
        if version is None:
            conn.execute(schema_sql().encode())
            done.append(f"applied schema.sql (version {latest_version()})")
            return done
        for migration in migrations():
            if migration.version > version:
                conn.execute(migration.sql().encode())
                done.append(f"applied migration {migration.path.name}")
    return done


# Each kind of catalog object, with the named query (orders/db/sql/schema.sql) that lists it.
_CATALOG = {
    "column": "schema_catalog_columns",
    "constraint": "schema_catalog_constraints",
    "index": "schema_catalog_indexes",
    "trigger": "schema_catalog_triggers",
    "options": "schema_catalog_options",
    "function": "schema_catalog_functions",
}


def fingerprint(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The catalog of one schema as sorted lines: columns, constraints, indexes, triggers,
    tables' storage options (autovacuum), functions, and the allowed transitions. Two schemas
    match when their lines are equal."""
    lines: list[str] = []
    for kind, name in _CATALOG.items():
        lines.extend(f"{kind} {line}" for (line,) in _rows(conn, query(name), {"schema": schema}))
    has_transitions = _rows(conn, query("schema_has_transitions"), {"schema": schema})[0][0]
    if has_transitions:
        # A template: the schema's name is an identifier, which psycopg.sql quotes.
        transitions = sql.SQL(query("schema_transitions")).format(sql.Identifier(schema))
        rows = _rows(conn, transitions)
        lines.extend(f"transition {a} -> {b}" for a, b in rows)
    return sorted(lines)


def expected_fingerprint(conn: psycopg.Connection[Any]) -> list[str]:
    """The fingerprint schema.sql produces, built in a scratch schema and rolled back."""
    scratch = f"paydispatch_check_{secrets.token_hex(4)}"
    name = sql.Identifier(scratch)
    with conn.transaction(force_rollback=True):
        # Templates: DDL and SET take no parameters, so psycopg.sql quotes the scratch name.
        conn.execute(sql.SQL(query("schema_scratch_create")).format(name))
        conn.execute(sql.SQL(query("schema_scratch_search_path")).format(name))
        conn.execute(schema_sql().encode())
        return fingerprint(conn, scratch)


@dataclass(frozen=True, slots=True)
class CheckResult:
    version: int | None
    latest: int
    missing: list[str]  # in schema.sql, not in the database
    unexpected: list[str]  # in the database, not in schema.sql
    matching: int = 0  # lines of schema.sql's catalog the database has

    @property
    def ok(self) -> bool:
        return self.version == self.latest and not self.missing and not self.unexpected

    @property
    def no_schema(self) -> bool:
        """paydispatch never touched this database: no recorded version and nothing of
        schema.sql in it (whatever else it holds). ``db init`` is the whole answer, so the
        hundreds of missing lines are not worth listing."""
        return self.version is None and self.matching == 0


def check(conn: psycopg.Connection[Any], schema: str = "public") -> CheckResult:
    """Compare the database's schema with schema.sql."""
    version = current_version(conn)
    expected = set(expected_fingerprint(conn))
    actual = set(fingerprint(conn, schema))
    return CheckResult(
        version=version,
        latest=latest_version(),
        missing=sorted(expected - actual),
        unexpected=sorted(actual - expected),
        matching=len(expected & actual),
    )


# The orders table is also the queue: every claim and every step's end rewrites a row, leaving
# a dead version in the heap and in each index. Only autovacuum takes them away and refreshes the
# planner's statistics; with it off, the claim and the steps' reads slow down poll after poll.
_UPKEEP = {
    "autovacuum": (
        "autovacuum is off on this server: the dead row versions every claim and step leaves in "
        "orders and its indexes are never taken away, and the planner keeps the statistics of "
        "the table's first minutes, so each claim and write costs more as the day goes on; set "
        "autovacuum = on (the schema tunes it per table)"
    ),
    "track_counts": (
        "track_counts is off on this server: autovacuum cannot tell which tables need it, so it "
        "never vacuums or analyzes orders; set track_counts = on"
    ),
}


def upkeep_warnings(settings: dict[str, str]) -> list[str]:
    """The warnings :func:`server_warnings` gives for these server settings (name: value)."""
    return [warning for name, warning in _UPKEEP.items() if settings.get(name) == "off"]


def server_warnings(conn: psycopg.Connection[Any]) -> list[str]:
    """What in the server's settings defeats the tables' upkeep (``paydispatch db check`` and
    the sweeper at start say it); empty when nothing does."""
    return upkeep_warnings(dict(_rows(conn, query("server_upkeep"))))
