"""schema.sql, `paydispatch db init|check`, and migrations that reach the same schema."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from structlog.testing import capture_logs

from dispatcher import config
from dispatcher.compose import Root
from dispatcher.services import Services
from dispatcher.sweeper.main import warn_about_upkeep
from orders.db import schema
from orders.status import TRANSITIONS
from tests.conftest import cli, drop_database, make_database, switch_off_track_counts


@pytest.fixture
def empty_url(found_services: Services) -> Iterator[str]:
    url = make_database(found_services, template=None)
    yield url
    drop_database(found_services, url)


def test_db_init_applies_the_schema_once_and_is_safe_to_repeat(empty_url: str) -> None:
    first = cli(empty_url, "db", "init")
    assert first.returncode == 0, first.stderr
    assert f"applied schema.sql (version {schema.latest_version()})" in first.stdout
    second = cli(empty_url, "db", "init")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    check = cli(empty_url, "db", "check")
    assert check.returncode == 0, check.stdout
    assert "matches schema.sql" in check.stdout


def test_db_check_reports_drift_and_exits_non_zero(empty_url: str) -> None:
    with psycopg.connect(empty_url, autocommit=True) as conn:
        schema.init(conn)
        conn.execute("DROP INDEX orders_due_idx")
        conn.execute("ALTER TABLE orders ADD COLUMN surprise text")
    result = cli(empty_url, "db", "check")
    assert result.returncode == 1
    assert "missing:    index CREATE INDEX orders_due_idx" in result.stdout
    assert "unexpected: column orders.surprise text" in result.stdout


def test_db_check_on_an_empty_database_says_it_does_not_match(empty_url: str) -> None:
    result = cli(empty_url, "db", "check")
    assert result.returncode == 1
    assert "no schema yet: run `paydispatch db init`" in result.stdout


def test_db_check_warns_when_the_server_would_never_vacuum_orders(empty_url: str) -> None:
    switch_off_track_counts(empty_url)
    with psycopg.connect(empty_url, autocommit=True) as conn:
        schema.init(conn)
    result = cli(empty_url, "db", "check")
    assert result.returncode == 0, result.stdout
    assert "warning: track_counts is off on this server" in result.stderr
    assert "matches schema.sql" in result.stdout


def test_the_sweeper_says_at_start_what_keeps_orders_from_being_vacuumed(
    found_services: Services, empty_url: str
) -> None:
    switch_off_track_counts(empty_url)
    with psycopg.connect(empty_url, autocommit=True) as conn:
        schema.init(conn)
    environ = {
        "PAYDISPATCH_DATABASE_URL": empty_url,
        "PAYDISPATCH_BROKER_URL": found_services.broker_url,
    }
    with Root(config.load(environ), name="sweeper") as root, capture_logs() as logs:
        warn_about_upkeep(root)
    said = [e for e in logs if e["event"] == "database upkeep"]
    assert {e["log_level"] for e in said} == {"warning"}
    # (autovacuum's own warning too, on a server that runs without it)
    assert [e["problem"].split(" is off")[0] for e in said][-1] == "track_counts"


def test_server_warnings_follow_the_servers_autovacuum(empty_url: str) -> None:
    with psycopg.connect(empty_url, autocommit=True) as conn:
        autovacuum = conn.execute("SHOW autovacuum").fetchone()
        warnings = schema.server_warnings(conn)
    assert autovacuum is not None
    assert any(w.startswith("autovacuum is off") for w in warnings) == (autovacuum[0] == "off")
    assert schema.upkeep_warnings({"autovacuum": "on", "track_counts": "on"}) == []
    assert [
        w.split(" is off")[0]
        for w in schema.upkeep_warnings({"autovacuum": "off", "track_counts": "off"})
    ] == ["autovacuum", "track_counts"]


def test_migrations_in_order_reach_exactly_schema_sql(empty_url: str) -> None:
    # Given an empty database, when every migration is applied in order,
    with psycopg.connect(empty_url, autocommit=True) as conn:
        for migration in schema.migrations():
            conn.execute(migration.sql().encode())
        # then its catalog is the one schema.sql builds, line for line.
        assert schema.fingerprint(conn, "public") == schema.expected_fingerprint(conn)
        assert schema.current_version(conn) == schema.latest_version()


def test_db_init_upgrades_an_old_database_with_the_pending_migrations(empty_url: str) -> None:
    # Given a database left at version 1,
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(schema.migrations()[0].sql().encode())
    # when `db init` runs,
    result = cli(empty_url, "db", "init")
    # then it applies every later migration, and the result matches schema.sql.
    assert result.returncode == 0, result.stderr
    later = [m.path.name for m in schema.migrations()[1:]]
    assert [
        line.removeprefix("applied migration ") for line in result.stdout.split("\n") if line
    ] == later
    assert cli(empty_url, "db", "check").returncode == 0


def test_concurrent_init_on_an_empty_database_applies_the_schema_once(empty_url: str) -> None:
    results: list[list[str]] = []
    barrier = threading.Barrier(3)

    def init() -> None:
        with psycopg.connect(empty_url, autocommit=True) as conn:
            barrier.wait(timeout=10)
            results.append(schema.init(conn))

    threads = [threading.Thread(target=init) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(len(r) for r in results) == [0, 0, 1]
    with psycopg.connect(empty_url, autocommit=True) as conn:
        assert schema.check(conn).ok


def test_the_database_transition_table_is_the_state_machine(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = set(conn.execute("SELECT from_status, to_status FROM order_transitions").fetchall())
    assert rows == {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}


def test_the_due_index_is_partial(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_get_indexdef('orders_due_idx'::regclass)").fetchone()
    assert row is not None
    assert "WHERE (next_run_at IS NOT NULL)" in row[0]
