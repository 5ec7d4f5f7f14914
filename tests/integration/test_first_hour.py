"""Issue #16, "Surprises to remove", against a real database: what `paydispatch status` and
`paydispatch db check` tell an operator who has just started."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
import pytest

from dispatcher.services import Services
from orders import Money, NewOrder, OrderStatus
from orders.db import open_pool, schema
from orders.repository import OrderRepository
from tests.conftest import cli, drop_database, make_database

S = OrderStatus
ADAPTERS = {"sandbox": timedelta(hours=1)}


@pytest.fixture
def repo(own_database_url: str) -> Iterator[OrderRepository]:
    pool = open_pool(own_database_url, max_size=2, name="tests")
    with OrderRepository(pool, ADAPTERS) as repo:
        yield repo
    pool.close()


def _order(repo: OrderRepository, ref: str) -> UUID:
    new = NewOrder(
        site="shop", site_ref=ref, user_id="u1", money=Money(1234, "USD"), adapter="sandbox"
    )
    return repo.create(new).order.id


def _finished_and_watched(repo: OrderRepository, ref: str, *, due: bool) -> UUID:
    """An order that expired after its invoice was made, watched for a late payment."""
    order_id = _order(repo, ref)
    repo.transition(order_id, S.NEW, S.SUBMITTING, actor="t")
    repo.transition(order_id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t", psp_id=f"p-{ref}")
    look = datetime.now(UTC) + (timedelta(minutes=-1) if due else timedelta(hours=1))
    repo.transition(order_id, S.AWAITING_PAYMENT, S.EXPIRED, actor="t", next_run_at=look)
    return order_id


def test_status_tells_active_due_orders_from_finished_ones_watched_for_late_payments(
    own_database_url: str, repo: OrderRepository
) -> None:
    # Given one active order due now, two finished orders watched for late payments that are
    # due now, and one watched order not due yet,
    _order(repo, "active-1")
    _finished_and_watched(repo, "late-1", due=True)
    _finished_and_watched(repo, "late-2", due=True)
    _finished_and_watched(repo, "late-3", due=False)

    # When an operator asks for the status,
    as_json = cli(own_database_url, "status", "--json")
    plain = cli(own_database_url, "status")

    # Then the due work is split by kind, in JSON
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert (data["due_now"], data["due_now_active"], data["due_now_late_watch"]) == (3, 1, 2)
    assert data["oldest_active_due_seconds"] >= 0
    # and in the text, which says what the finished ones are there for.
    assert plain.returncode == 0, plain.stderr
    assert "active orders due now: 1 " in plain.stdout
    assert "finished orders watched for late payments" in plain.stdout
    watched = next(line for line in plain.stdout.splitlines() if "late payments" in line)
    assert watched.endswith("due now: 2")


@pytest.fixture
def empty_url(found_services: Services) -> Iterator[str]:
    url = make_database(found_services, template=None)
    yield url
    drop_database(found_services, url)


def test_db_check_on_an_empty_database_says_to_run_db_init_and_lists_nothing(
    empty_url: str,
) -> None:
    result = cli(empty_url, "db", "check")

    assert result.returncode == 1
    assert result.stdout.splitlines() == ["no schema yet: run `paydispatch db init`"]


def test_db_check_says_no_schema_yet_beside_another_applications_tables(empty_url: str) -> None:
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE someone_elses (id int PRIMARY KEY)")

    result = cli(empty_url, "db", "check")

    assert result.returncode == 1
    assert result.stdout.splitlines() == ["no schema yet: run `paydispatch db init`"]


def test_db_check_still_lists_differences_of_a_schema_with_no_recorded_version(
    empty_url: str,
) -> None:
    # Given a database with paydispatch's tables whose version record was lost,
    with psycopg.connect(empty_url, autocommit=True) as conn:
        schema.init(conn)
        conn.execute("DROP TABLE schema_version")

    result = cli(empty_url, "db", "check")

    # Then it is not "no schema yet" (db init would not help): the differences are listed.
    assert result.returncode == 1
    assert "no schema yet" not in result.stdout
    assert "missing:    column schema_version.version" in result.stdout
