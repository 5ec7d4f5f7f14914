"""Withdrawals end to end (issue #14): the real sweeper and worker (in one process), real
PostgreSQL and Redis, the sandbox over HTTP. A withdrawal's payout is sent once, read until the
sandbox's control API settles it, and the payout hook settles or releases the hold, once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

import dramatiq
import httpx
import pytest

from adapters.sandbox import Sandbox
from adapters.sandbox.runner import SandboxHandle
from dispatcher.billing.audit import audit
from dispatcher.billing.face import Face
from dispatcher.billing.wallet import EntryKind, SyncWallets
from dispatcher.billing.withdrawals import (
    SyncWithdrawals,
    Withdrawal,
    WithdrawalStatus,
    payout_hook,
)
from dispatcher.config import WithdrawalSettings
from dispatcher.services import Services
from dispatcher.steps import Steps, make_broker, queue_name
from dispatcher.sweeper import Sweeper
from dispatcher.worker import actors
from dispatcher.worker.engine import Engine
from dispatcher.worker.host import EngineHost
from orders.db import Pool, open_pool
from orders.model import TransferStatus
from orders.money import Money
from orders.repository import OrderRepository
from tests.conftest import drop_database, make_database
from tests.dispatch_support import SandboxControl, sandbox_runtime, wait_until
from tests.namespaces import own_namespace

SETTINGS = WithdrawalSettings(fee_fixed=Decimal("0.30"), fee_percent=Decimal(1), adapter="sandbox")
DEST = {"account": "acc-42"}


@contextmanager
def dispatching(database_url: str, broker_url: str, sandbox_url: str) -> Iterator[Pool]:
    """A sweeper and a worker whose engine runs the payout hook, as ``paydispatch run`` has
    them (tests.dispatch_support.running_daemon, with the transfer hook)."""
    pool = open_pool(database_url, max_size=8, name="withdrawals-e2e")
    runtime = sandbox_runtime(sandbox_url)
    lifetimes = {"sandbox": timedelta(minutes=15)}
    repo = OrderRepository(pool, lifetimes)
    broker = make_broker(broker_url, namespace=own_namespace())
    actors.Actors(broker, ["sandbox"])
    host = EngineHost.open(
        database_url,
        lifetimes,
        lambda orders: Engine(orders, {"sandbox": runtime}, transfer_hook=payout_hook),
        pool_size=4,
        max_in_flight=50,
        name="withdrawals-engine",
    )
    host.start()
    actors.set_host(host)
    worker = dramatiq.Worker(broker, queues={queue_name("sandbox")}, worker_threads=2)
    worker.start()
    sweeper = Sweeper(
        repo, Steps(broker, ["sandbox"]), ["sandbox"], batch=50, lease=timedelta(seconds=2),
        interval=0.1,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop, database_url), daemon=True)
    thread.start()
    try:
        yield pool
    finally:
        stop.set()
        thread.join(timeout=10)
        worker.stop(timeout=5000)
        host.drain(timeout=10)
        host.stop()
        actors.set_host(None)
        broker.close()
        repo.close()
        pool.close()


@pytest.fixture
def daemon(
    found_services: Services, template_database: str, sandbox: SandboxHandle
) -> Iterator[Pool]:
    url = make_database(found_services, template_database)
    try:
        with dispatching(url, found_services.broker_url, sandbox.url) as pool:
            yield pool
    finally:
        drop_database(found_services, url)


def funded(pool: Pool, user: str) -> None:
    with SyncWallets(pool) as wallets:
        wallets.credit(
            "shop", user, Money(10_000, "USD"), kind=EntryKind.ADJUSTMENT, key=f"top-{uuid4()}",
            description="test top-up",
        )  # fmt: skip


def pending_payout_id(pool: Pool, withdrawal: Withdrawal) -> str:
    """The sandbox's id of the withdrawal's payout, once the worker sent it and it is pending."""
    found: list[str] = []

    def sent() -> bool:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT status, psp_transfer_id FROM transfers WHERE id = %s",
                (withdrawal.transfer_id,),
            ).fetchone()
        if row and row["status"] == TransferStatus.PENDING and row["psp_transfer_id"]:
            found.append(row["psp_transfer_id"])
            return True
        return False

    wait_until(sent, what="the payout sent and pending")
    return found[0]


def final(withdrawals: SyncWithdrawals, withdrawal: Withdrawal) -> Withdrawal:
    wait_until(
        lambda: (
            withdrawals.get(withdrawal.id).status
            in (WithdrawalStatus.SUCCEEDED, WithdrawalStatus.FAILED, WithdrawalStatus.CANCELLED)
        ),
        what="the withdrawal final",
    )
    return withdrawals.get(withdrawal.id)


def balance(pool: Pool, user: str) -> tuple[int, int]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT balance, held FROM wallets WHERE site = 'shop' AND user_id = %s", (user,)
        ).fetchone()
    assert row is not None
    return row["balance"], row["held"]


def audit_ok(pool: Pool) -> None:
    with Face(pool, max_size=1) as database:
        report = database.run(lambda apool: audit(apool, site="shop"))
    assert report.ok, report.lines()


def test_a_payout_settled_at_the_sandbox_settles_the_hold_once(
    daemon: Pool, control: SandboxControl, sandbox: SandboxHandle
) -> None:
    funded(daemon, "u1")
    caps = {"sandbox": Sandbox.capabilities}
    with SyncWithdrawals(daemon, SETTINGS, capabilities=caps) as withdrawals:
        # Given a withdrawal of 50.00 USD (fee 0.30 + 0.50), held at once,
        w = withdrawals.request(
            "shop", "u1", Money(5000, "USD"), destination=DEST, idempotency_key="e2e-1",
            requested_by="test",
        )  # fmt: skip
        assert balance(daemon, "u1") == (10_000 - 5080, 5080)
        # when the worker sends its payout and the payment system completes it,
        psp_id = pending_payout_id(daemon, w)
        assert withdrawals.get(w.id).status is WithdrawalStatus.SENT
        httpx.post(f"{sandbox.url}/_control/payouts/{psp_id}/succeed", timeout=10)
        done = final(withdrawals, w)
    # then the withdrawal succeeded, the hold went out for good, and one payout was made.
    assert done.status is WithdrawalStatus.SUCCEEDED
    assert balance(daemon, "u1") == (10_000 - 5080, 0)
    assert control.stats()["payouts_per_reference"] == {str(w.transfer_id): 1}
    audit_ok(daemon)


def test_a_payout_that_fails_releases_the_hold_and_a_lost_answer_pays_once(
    daemon: Pool, control: SandboxControl, sandbox: SandboxHandle
) -> None:
    funded(daemon, "u2")
    # Given a payout whose first send is made by the sandbox and its answer lost,
    control.faults("payout", queue=["accept_then_timeout"])
    caps = {"sandbox": Sandbox.capabilities}
    with SyncWithdrawals(daemon, SETTINGS, capabilities=caps) as withdrawals:
        w = withdrawals.request(
            "shop", "u2", Money(2000, "USD"), destination=DEST, idempotency_key="e2e-2",
            requested_by="test",
        )  # fmt: skip
        # when the dispatcher tries again and the payment system then fails it,
        psp_id = pending_payout_id(daemon, w)
        httpx.post(
            f"{sandbox.url}/_control/payouts/{psp_id}/fail", json={"reason": "closed"}, timeout=10
        )
        done = final(withdrawals, w)
    # then one payout was made, it failed, and the hold came back to the balance once.
    assert done.status is WithdrawalStatus.FAILED
    assert balance(daemon, "u2") == (10_000, 0)
    stats = control.stats()
    assert stats["payouts_per_reference"] == {str(w.transfer_id): 1}
    assert stats["calls"]["payout"] >= 2
    audit_ok(daemon)
