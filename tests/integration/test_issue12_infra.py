"""Issue #12, the infrastructure items: pools after a database restart (13), key revocation
across API processes (5, with tests/e2e/test_processes.py), per-site webhooks (6)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import psycopg
import pytest
from psycopg import conninfo

from dispatcher.services import Services
from orders.repository import OrderRepository, Pool, open_pool
from tests.dispatch_support import wait_until
from tests.integration.test_api import ORDER, running_api


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
    found_services: Services, own_database_url: str, own_pool: Pool
) -> None:
    # Given a pool whose every connection was opened and used,
    repo = OrderRepository(own_pool, {"sandbox": timedelta(hours=1)})
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
