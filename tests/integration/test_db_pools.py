"""The pools hand out the connection returned last (orders.db._NewestFirst), on PostgreSQL.

psycopg_pool's own order is the oldest idle connection first; these fail if a psycopg_pool
release changes what the override relies on.
"""

from __future__ import annotations

import asyncio

from psycopg.conninfo import make_conninfo

from orders.db import open_async_pool, open_pool


def test_the_sync_pool_hands_out_the_connection_returned_last(database_url: str) -> None:
    pool = open_pool(database_url, min_size=3, max_size=3, name="test-newest-first")
    try:
        taken = [pool.getconn() for _ in range(3)]
        pids = [conn.info.backend_pid for conn in taken]
        for conn in taken:  # returned oldest first: the last one back is pids[2]
            pool.putconn(conn)
        for _ in range(5):  # a steady load stays on one server process
            with pool.connection() as conn:
                assert conn.info.backend_pid == pids[2]
        first, second = pool.getconn(), pool.getconn()
        assert [first.info.backend_pid, second.info.backend_pid] == [pids[2], pids[1]]
        pool.putconn(first)
        pool.putconn(second)
    finally:
        pool.close()


def test_the_async_pool_hands_out_the_connection_returned_last(database_url: str) -> None:
    async def go() -> None:
        pool = await open_async_pool(database_url, min_size=3, max_size=3, name="test-newest")
        try:
            taken = [await pool.getconn() for _ in range(3)]
            pids = [conn.info.backend_pid for conn in taken]
            for conn in taken:
                await pool.putconn(conn)
            for _ in range(5):
                async with pool.connection() as conn:
                    assert conn.info.backend_pid == pids[2]
            first, second = await pool.getconn(), await pool.getconn()
            assert [first.info.backend_pid, second.info.backend_pid] == [pids[2], pids[1]]
            await pool.putconn(first)
            await pool.putconn(second)
        finally:
            await pool.close()

    asyncio.run(go())


def _session_name(url: str, pool_name: str) -> str:
    pool = open_pool(url, max_size=1, name=pool_name)
    try:
        with pool.connection() as conn:
            row = conn.execute("SELECT current_setting('application_name') AS name").fetchone()
            assert row is not None
            return str(row["name"])
    finally:
        pool.close()


def test_a_pool_names_its_sessions_after_itself_unless_the_url_names_them(
    database_url: str,
) -> None:
    assert _session_name(database_url, "test-named-sessions") == "test-named-sessions"
    named = make_conninfo(database_url, application_name="the-site-s-own")
    assert _session_name(named, "test-named-sessions") == "the-site-s-own"
