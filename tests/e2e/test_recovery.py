"""Recovery with real processes (issue #15, item 4): the daemon's processes outlive the loss of
every database session, and a second sweeper carries on when one is killed.

How long each takes is measured by ``bench/recovery.py``; these tests pin what must hold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg import conninfo

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.runner import SandboxHandle, running_sandbox
from dispatcher.services import Services
from orders import Money, NewOrder, OrderStatus
from orders.db import open_pool
from orders.repository import OrderRepository
from tests.dispatch_support import wait_until
from tests.namespaces import own_namespace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(SandboxConfig()) as handle:
        yield handle


@pytest.fixture
def repo(own_database_url: str) -> Iterator[OrderRepository]:
    pool = open_pool(own_database_url, max_size=2, name="e2e-recovery")
    repository = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
    yield repository
    repository.close()
    pool.close()


@pytest.fixture
def daemon(
    found_services: Services, own_database_url: str, sandbox: SandboxHandle, tmp_path: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Two sweepers and a worker, each its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env |= {
        "PAYDISPATCH_DATABASE_URL": own_database_url,
        "PAYDISPATCH_BROKER_URL": found_services.broker_url,
        "PAYDISPATCH_BROKER_NAMESPACE": own_namespace(),
        "PAYDISPATCH_DEV": "1",
        "PAYDISPATCH_ADAPTERS": "sandbox",
        "PAYDISPATCH_SANDBOX_API_URL": sandbox.url,
        "PAYDISPATCH_SANDBOX_POLL_FIRST": "0.2",
        "PAYDISPATCH_SANDBOX_POLL_CAP": "0.5",
        "PAYDISPATCH_LOG_FORMAT": "json",
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, args in (
        ("sweeper-a", ["sweeper", "--interval", "0.5"]),
        ("sweeper-b", ["sweeper", "--interval", "0.5"]),
        ("worker", ["worker", "--threads", "2"]),
    ):
        with (tmp_path / f"{name}.log").open("wb") as out:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "dispatcher.cli", *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _order(repo: OrderRepository, n: int) -> UUID:
    new = NewOrder(
        site="shop",
        user_id=f"u{n}",
        money=Money(1000 + n, "USD"),
        adapter="sandbox",
        metadata={SCENARIO_METADATA_KEY: "pay_after:0"},
    )
    return repo.create(new).order.id


def _paid(repo: OrderRepository, order_id: UUID) -> bool:
    return repo.get(order_id).status is OrderStatus.PAID


def _end_every_session(found_services: Services, database_url: str) -> list[str]:
    """What a PostgreSQL restart does to the daemon's sessions: every one of them ends, at once.

    Returns the ended sessions' ``application_name`` s once they have all ended:
    ``pg_terminate_backend`` only signals, and a statement sent in the moment before a server
    process exits fails (as one in flight during a real restart does), which is not what this
    test is about."""
    name = conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(found_services.database_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pid, application_name, pg_terminate_backend(pid) FROM"
            " (SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s"
            " OFFSET 0) AS sessions",
            (name,),
        ).fetchall()
        pids = [pid for pid, _, _ in ended]

        def gone() -> bool:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            return row is not None and row[0] == 0

        wait_until(gone, timeout=30, what="every session of the database ended")
    return [application for _, application, _ in ended]


def test_the_daemon_moves_orders_again_after_every_database_session_ended(
    found_services: Services,
    own_database_url: str,
    repo: OrderRepository,
    daemon: dict[str, subprocess.Popen[bytes]],
) -> None:
    # Given a running daemon that has paid an order (its pools and listeners connected),
    first = _order(repo, 1)
    wait_until(lambda: _paid(repo, first), timeout=60, what="the first order paid")
    # when every session of the database ends, as in a restart of PostgreSQL,
    ended = _end_every_session(found_services, own_database_url)
    # (the daemon's own among them: its pools name their sessions after the process)
    assert any(name.startswith("sweeper") for name in ended), ended
    assert any(name.startswith("worker") for name in ended), ended
    # then an order created afterwards is paid by the same processes, none restarted.
    second = _order(repo, 2)
    wait_until(lambda: _paid(repo, second), timeout=60, what="the order after the restart paid")
    assert all(proc.poll() is None for proc in daemon.values())


def test_a_second_sweeper_claims_when_the_first_is_killed(
    repo: OrderRepository, daemon: dict[str, subprocess.Popen[bytes]]
) -> None:
    # Given two sweepers, one of them killed with SIGKILL,
    daemon["sweeper-a"].send_signal(signal.SIGKILL)
    daemon["sweeper-a"].wait(timeout=10)
    # when orders are created, then the other claims them and they are paid.
    ids = [_order(repo, n) for n in range(5)]
    wait_until(lambda: all(_paid(repo, i) for i in ids), timeout=60, what="every order paid")
    assert daemon["sweeper-b"].poll() is None
