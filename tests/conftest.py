"""Shared fixtures: the configured or embedded services, and a fresh database per test module.

With PAYDISPATCH_DATABASE_URL / PAYDISPATCH_BROKER_URL set the tests use those servers; without,
the embedded PostgreSQL and Redis under .paydispatch/ (started on first use, then reused).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import conninfo, sql

from dispatcher import config, services
from orders.db import schema
from tests.cli_support import run_cli
from tests.namespaces import NAMESPACES, flush_namespace

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count()


@pytest.fixture(scope="session")
def found_services() -> Iterator[services.Services]:
    environ = dict(os.environ)
    environ.setdefault("PAYDISPATCH_HOME", str(ROOT / ".paydispatch"))
    environ.pop("PAYDISPATCH_CONFIG", None)
    found = services.ensure(config.load(environ))
    yield found
    # The tests' broker keys live in namespaces of their own in the configured Redis database
    # (issue #12, item 10): delete them, and only them, so the run leaves nothing behind.
    if found.broker_url.startswith(("redis://", "rediss://", "unix://")):
        for namespace in sorted(NAMESPACES):
            with contextlib.suppress(redis.RedisError):
                flush_namespace(found.broker_url, namespace)


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def template_database(found_services: services.Services) -> Iterator[str]:
    """A database built once from schema.sql, copied for each test module."""
    name = f"pdtest_tpl_{os.getpid()}"
    base = found_services.database_url
    with _admin(base) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(conninfo.make_conninfo(base, dbname=name), autocommit=True) as conn:
        schema.init(conn)
    yield name
    with _admin(base) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def make_database(found_services: services.Services, template: str | None) -> str:
    """A new database (a copy of ``template``, or empty); returns its URL."""
    name = f"pdtest_{os.getpid()}_{next(_counter)}"
    base = found_services.database_url
    with _admin(base) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)
    return conninfo.make_conninfo(base, dbname=name)


def drop_database(found_services: services.Services, url: str) -> None:
    name = conninfo.conninfo_to_dict(url)["dbname"]
    with _admin(found_services.database_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def switch_off_track_counts(url: str) -> None:
    """``track_counts = off`` for the database at ``url`` alone (autovacuum can only be switched
    for a whole server): autovacuum then never looks at its tables. Skips the test without a
    superuser, which the setting needs."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('is_superuser')").fetchone()
        if row is None or row[0] != "on":
            pytest.skip("switching track_counts for a database needs a superuser")
        name = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("ALTER DATABASE {} SET track_counts = off").format(name))


def _fresh_database(found_services: services.Services, template_database: str) -> Iterator[str]:
    url = make_database(found_services, template_database)
    yield url
    drop_database(found_services, url)


# A fresh database with the schema: shared by the tests of one module, or a test's own (for
# tests that run whole processes against it and must not see another test's orders).
database_url = pytest.fixture(_fresh_database, scope="module", name="database_url")
own_database_url = pytest.fixture(_fresh_database, name="own_database_url")


# Each takes a minute or more of one test process, mostly waiting on pip: started first, so that
# neither of the two processes is left running one of them alone at the end of the run.
FIRST = ("tests/e2e/test_wheel.py", "tests/e2e/test_client_install.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files in FIRST before the rest; the order within each file and of the rest is kept."""
    first = [str(ROOT / path) for path in FIRST]
    items.sort(
        key=lambda item: first.index(str(item.path)) if str(item.path) in first else len(first)
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    configured = [
        v for v in ("PAYDISPATCH_DATABASE_URL", "PAYDISPATCH_BROKER_URL") if v in os.environ
    ]
    if configured:
        return [f"paydispatch services: configured by {', '.join(configured)}"]
    return [f"paydispatch services: embedded under {ROOT / '.paydispatch'} (variables unset)"]


def cli(
    database_url: str, *args: str, site: str | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``paydispatch ARGS`` over ``database_url`` (no broker needed), run in this process as a
    subprocess would run it (tests/cli_support.py); ``settings`` are more PAYDISPATCH_*
    variables, named without the prefix (``ADAPTERS="sandbox"``)."""
    environ = {
        "PAYDISPATCH_DATABASE_URL": database_url,
        "PAYDISPATCH_BROKER_URL": "redis://127.0.0.1:1/0",  # not used by these commands
    }
    if site is not None:
        environ["PAYDISPATCH_SITE"] = site
    environ |= {f"PAYDISPATCH_{name}": value for name, value in settings.items()}
    return run_cli(args, environ)
