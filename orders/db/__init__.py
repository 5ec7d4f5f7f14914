"""The database module: pools, transactions, the mapping of database failures, named queries.

Everything that talks to PostgreSQL gets its connections here: the order repository
(:mod:`orders.repository`), billing, the API's keys and console, the operators' commands. The
async pool (:func:`open_async_pool`) is the one the repository runs on; the synchronous one
(:func:`open_pool`) stays for code that is synchronous by nature: the schema, the sweeper's
``LISTEN``, tests' own SQL.

Every statement has a name and lives in one of the ``sql/*.sql`` files beside this module, as a
``-- name --`` block; :func:`query` reads them all into one namespace, so a name says which
statement runs wherever it is used, and ``grep`` finds every user of a statement.
"""

from __future__ import annotations

import re
import select
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from orders.errors import DatabaseUnavailable

__all__ = [
    "AsyncConnection",
    "AsyncPool",
    "Connection",
    "Pool",
    "atransaction",
    "check_async_connection",
    "check_connection",
    "database_errors",
    "open_async_pool",
    "open_pool",
    "parse_queries",
    "queries",
    "query",
    "transaction",
    "use_prepared_statements",
]

Connection = psycopg.Connection[DictRow]
AsyncConnection = psycopg.AsyncConnection[DictRow]
Pool = ConnectionPool[Connection]
AsyncPool = AsyncConnectionPool[AsyncConnection]


@contextmanager
def database_errors() -> Iterator[None]:
    """Translate psycopg's connection failures into :class:`DatabaseUnavailable`.

    A plain context manager: it works as well around ``await`` s (``with database_errors():``
    inside a coroutine), since it only looks at what escapes its block.
    """
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
    except TimeoutError as exc:  # psycopg_pool.PoolTimeout
        raise DatabaseUnavailable(f"no database connection available: {exc}") from exc


@contextmanager
def transaction(pool: Pool | None, conn: Connection | None = None) -> Iterator[Connection]:
    """A transaction on a connection of ``pool``, or a savepoint in ``conn``'s (so a failure
    leaves the caller's transaction intact)."""
    with database_errors():
        if conn is not None:
            with conn.transaction():
                yield conn
            return
        if pool is None:
            raise RuntimeError("no pool to open a transaction on: pass conn=")
        with pool.connection() as fresh, fresh.transaction():
            yield fresh


@asynccontextmanager
async def atransaction(
    pool: AsyncPool | None, conn: AsyncConnection | None = None
) -> AsyncIterator[AsyncConnection]:
    """:func:`transaction` on the async pool: a transaction on a connection of ``pool``, or a
    savepoint in ``conn``'s. Connection failures raise :class:`DatabaseUnavailable`."""
    with database_errors():
        if conn is not None:
            async with conn.transaction():
                yield conn
            return
        if pool is None:
            raise RuntimeError("no pool to open a transaction on: pass conn=")
        async with pool.connection() as fresh, fresh.transaction():
            yield fresh


def _may_be_broken(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle pooled connection needs a round trip to prove it still works.

    An idle autocommit connection has nothing to read. One whose server went away has: the
    server's ``FATAL`` message (a terminated backend, a shutdown) or the end of the stream (a
    restart, a crash). So one non-blocking ``poll`` of its socket finds the dead ones without
    costing every checkout a round trip to the server.
    """
    if conn.closed:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def check_connection(pool: Pool, conn: Connection) -> None:
    """The pools' checkout check: raise for a dead connection, so the pool replaces it.

    Without it, the first requests after a PostgreSQL restart were handed connections the
    server had closed and answered 503 (issue #12, item 13). A dead one means the server went
    away, so the other idle ones are most likely dead too: they are all checked (and the dead
    replaced) at once, because the pool waits a second, then two, between failed checks.
    """
    if _may_be_broken(conn):
        pool.check()
        ConnectionPool.check_connection(conn)


async def check_async_connection(pool: AsyncConnectionPool[Any], conn: Any) -> None:
    """:func:`check_connection` for the async pool."""
    if _may_be_broken(conn):
        await pool.check()
        await AsyncConnectionPool.check_connection(conn)


# What every pooled connection is opened with. psycopg prepares a statement on its connection
# after ``prepare_threshold`` runs (its default, 5); None: never, which PgBouncer in transaction
# mode needs before 1.21 (or without max_prepared_statements): a statement prepared on one
# server connection is missing on the next one the pooler hands out.
_CONNECTION: dict[str, Any] = {"autocommit": True, "row_factory": dict_row, "prepare_threshold": 5}


def _connection_kwargs(url: str, name: str) -> dict[str, Any]:
    """What a pool's connections are opened with: :data:`_CONNECTION`, and the pool's name as
    ``application_name`` (unless the URL names one), so ``pg_stat_activity`` says which process
    and which of its pools holds each session."""
    if "application_name" in conninfo_to_dict(url):
        return dict(_CONNECTION)
    return {**_CONNECTION, "application_name": name[:63]}


def use_prepared_statements(on: bool) -> None:
    """Whether the pools opened from now on let psycopg prepare the statements it runs often.

    Set once by a process's composition root from ``PAYDISPATCH_DATABASE_PREPARE``, before it
    opens a pool (like ``structlog.configure``); every pool of the process then agrees.
    """
    _CONNECTION["prepare_threshold"] = 5 if on else None


class _NewestFirst(ConnectionPool[Connection]):
    """psycopg's pool, handing out the connection returned last instead of the oldest idle one.

    psycopg_pool (3.3) has no option for it: it takes idle connections from the left of its
    deque and puts them back on the right, so a pool that once grew to N connections sends
    consecutive statements to N server processes in turn. With the newest first, a steady
    load runs on as few server processes as it keeps busy, whose caches stay warm; the
    others stay idle at the left, where the pool's ``max_idle`` shrinking closes them first.
    Measured on the create path, where the API's pool had grown to 5 connections a worker:
    some 10 % more creates per second for the same CPU (docs/benchmarks.md, issue #13).
    This is SQLAlchemy's ``pool_use_lifo``. The override relies on the deque and the method
    psycopg_pool 3.2 and 3.3 have; ``tests/integration/test_db_pools.py`` fails if that changes.
    """

    def _get_ready_connection(self, timeout: float | None) -> Connection | None:
        if self._pool:
            self._pool.rotate(1)  # the newest (rightmost) becomes the one taken (leftmost)
        return super()._get_ready_connection(timeout)


class _AsyncNewestFirst(AsyncConnectionPool[AsyncConnection]):
    """:class:`_NewestFirst` for the async pool."""

    async def _get_ready_connection(self, timeout: float | None) -> AsyncConnection | None:
        if self._pool:
            self._pool.rotate(1)
        return await super()._get_ready_connection(timeout)


def open_pool(url: str, *, min_size: int = 1, max_size: int = 10, name: str = "orders") -> Pool:
    """A connection pool whose connections autocommit and return rows as dicts, handed out
    newest first (:class:`_NewestFirst`); a connection the server has closed is replaced at
    checkout (:func:`check_connection`)."""
    pool: Pool = _NewestFirst(
        url,
        connection_class=psycopg.Connection[DictRow],
        min_size=min_size,
        max_size=max_size,
        kwargs=_connection_kwargs(url, name),
        name=name,
        open=False,
        check=lambda conn: check_connection(pool, conn),
    )
    with database_errors():
        pool.open(wait=True, timeout=30)
    return pool


async def open_async_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, name: str = "orders"
) -> AsyncPool:
    """:func:`open_pool` on the running event loop: autocommit, rows as dicts, newest first,
    dead connections replaced at checkout. The pool belongs to this loop: use and close it
    there."""
    pool: AsyncPool = _AsyncNewestFirst(
        url,
        connection_class=psycopg.AsyncConnection[DictRow],
        min_size=min_size,
        max_size=max_size,
        kwargs=_connection_kwargs(url, name),
        name=name,
        open=False,
        check=lambda conn: check_async_connection(pool, conn),
    )
    try:
        with database_errors():
            await pool.open(wait=True, timeout=30)
    except BaseException:
        await pool.close()
        raise
    return pool


# -- named queries ---------------------------------------------------------------------------

_BLOCK = re.compile(r"^-- (\w+) --$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Every ``-- name --`` block of a SQL file, by name, without its comment lines."""
    parts = _BLOCK.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip()
    return found


def load_queries(files: dict[str, str]) -> dict[str, str]:
    """The named queries of several SQL files (file name -> text) as one namespace.

    A name defined twice, in one file or in two, is an error: which statement runs would
    otherwise depend on the order the files are read in.
    """
    found: dict[str, str] = {}
    where: dict[str, str] = {}
    for filename, text in sorted(files.items()):
        names = _BLOCK.findall(text)
        for name in names:
            if name in where:
                raise RuntimeError(
                    f"query {name!r} is defined twice: in {where[name]} and in {filename}"
                )
            where[name] = filename
        found |= parse_queries(text)
    return found


@cache
def queries() -> dict[str, str]:
    """Every named query of ``orders/db/sql/*.sql``, by name."""
    folder = resources.files(__package__).joinpath("sql")
    files = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    }
    return load_queries(files)


def query(name: str) -> str:
    """The statement named ``name`` in one of the ``sql/*.sql`` files."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in orders/db/sql/*.sql") from None
