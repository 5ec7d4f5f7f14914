"""The daemon's pools through PgBouncer in transaction mode (issue #15, item 5).

PgBouncer before 1.21 (Debian 12 ships 1.18) hands each transaction whichever server connection
is free, so a statement psycopg prepared on one is missing on the next: the pools must not
prepare (``PAYDISPATCH_DATABASE_PREPARE=off``). Skipped without the ``pgbouncer`` binary.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from orders.db import Pool, open_pool, use_prepared_statements
from tests import pgbouncer_support

pytestmark = pytest.mark.skipif(
    pgbouncer_support.binary() is None, reason="pgbouncer is not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def bouncer(database_url: str) -> Iterator[str]:
    # Round robin over two server connections: consecutive transactions of one client land on
    # alternate servers, as they do under load.
    with pgbouncer_support.running_pgbouncer(database_url, pool_size=2, round_robin=True) as url:
        yield url


def _two_servers(url: str) -> None:
    """Make PgBouncer open both its server connections (two transactions at once)."""
    with psycopg.connect(url) as one, psycopg.connect(url) as two:
        one.execute("SELECT 1")
        two.execute("SELECT 1")  # both in a transaction: two server connections


def _run_often(pool: Pool, times: int = 20) -> None:
    for n in range(times):
        with pool.connection() as conn:
            conn.execute("SELECT id FROM orders WHERE id = %s::uuid", (f"{n:032x}",))


@pytest.fixture
def prepared_off() -> Iterator[None]:
    use_prepared_statements(False)
    try:
        yield
    finally:
        use_prepared_statements(True)


@pytest.mark.usefixtures("prepared_off")
def test_pools_without_prepared_statements_run_through_pgbouncer_in_transaction_mode(
    bouncer: str,
) -> None:
    # Given PgBouncer with two server connections used in turn, and the setting off,
    _two_servers(bouncer)
    pool = open_pool(bouncer, max_size=1, name="pgbouncer-off")
    try:
        # when one statement runs twenty times, then every run succeeds: none is prepared.
        _run_often(pool)
        with pool.connection() as conn:
            assert conn.prepare_threshold is None
    finally:
        pool.close()


def test_prepared_statements_break_through_pgbouncer_in_transaction_mode(bouncer: str) -> None:
    # Given the same PgBouncer and psycopg's default (prepare after five runs),
    _two_servers(bouncer)
    pool = open_pool(bouncer, max_size=1, name="pgbouncer-on")
    try:
        # then a run after the statement was prepared reaches the other server, which lacks it:
        # this is why the setting exists.
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            _run_often(pool)
    finally:
        pool.close()
