"""The chaos test of money going out (issue #14, "Proof"): refunds and withdrawals dispatched by
real worker processes through the sandbox, while the payment system loses answers and refuses, a
worker is SIGKILLed with a refund and a payout in flight, and the broker's queues are flushed.

What must hold at the end: one refund per refund id and one payout per payout id at the payment
system; every succeeded refund reversed in its wallet once, the refused one reversing nothing;
every withdrawal's hold settled or released exactly once; nothing held; every balance equal to
its entries (``paydispatch wallet audit`` clean); no order refunded past what was paid.

Deterministic: each phase waits on a condition (the sandbox's records and counters, the rows'
statuses and leases), never on time; the faults are queued per operation and served in order.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox import adapter as sandbox_adapter
from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.runner import SandboxHandle, running_sandbox
from dispatcher.billing.hooks import build_refund_hold
from dispatcher.billing.withdrawals import SyncWithdrawals, Withdrawal
from dispatcher.config import BillingSettings, WithdrawalSettings
from dispatcher.refunds import request_refund
from dispatcher.services import Services
from dispatcher.steps import Steps, make_broker
from dispatcher.sweeper import Sweeper
from orders import Money, NewOrder, OrderStatus
from orders.db import open_pool
from orders.errors import RefundRefused
from orders.model import Transfer, TransferStatus
from orders.repository import OrderRepository
from orders.transfers import SyncTransfers, Transfers
from tests.conftest import cli
from tests.dispatch_support import SandboxControl, wait_until
from tests.e2e.test_processes import daemon_env, spawn
from tests.namespaces import flush_namespace

TS = TransferStatus
SITE = "shop"
CUR = "USD"
CAPS = {"sandbox": sandbox_adapter.capabilities}
# Fee: 0.50 + 1 % (rounded up): 60 cents on 10.00, 70 on 20.00.
WITHDRAWALS = WithdrawalSettings(
    fee_fixed=Decimal("0.50"), fee_percent=Decimal(1), approval=False, adapter="sandbox"
)
LEASE = timedelta(seconds=4)
LONG = 60.0  # generous: a loaded 2-core machine


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    # Held requests (timeouts) outlast the worker's 30 s client timeout: the worker that is
    # killed is stuck in its sends. Refunds settle by themselves after 1 s; payouts only
    # through the control API (the test decides which one fails).
    config = SandboxConfig(hang_seconds=60.0, refund_settle_seconds=1.0)
    with running_sandbox(config) as handle:
        yield handle


@dataclass
class World:
    """The test's handles: its database, broker namespace, sandbox and the processes."""

    url: str
    env: dict[str, str]
    repo: OrderRepository
    transfers: SyncTransfers
    withdrawals: SyncWithdrawals
    control: SandboxControl
    db: psycopg.Connection[dict[str, Any]]

    def pay(self, user_id: str, amount: int) -> UUID:
        """An order paid at the sandbox; the worker's paid move credits the user's wallet."""
        new = NewOrder(
            site=SITE, user_id=user_id, money=Money(amount, CUR), adapter="sandbox",
            metadata={SCENARIO_METADATA_KEY: "pay_after:0"},
        )  # fmt: skip
        return self.repo.create(new).order.id

    def refund(self, order_id: UUID, amount: int | None, key: str) -> tuple[Transfer, bool]:
        """A site's refund, requested as the API requests it: billing's hold in the same
        transaction (policy ``refuse``)."""
        transfers = Transfers(self.repo.orders.pool, capabilities=CAPS)
        return self.repo.run(
            request_refund(
                transfers,
                order_id,
                None if amount is None else Money(amount, CUR),
                site=SITE,
                idempotency_key=key,
                reason="chaos",
                requested_by="test",
                origin="site",
                check=build_refund_hold(BillingSettings()),
            )
        )

    def withdraw(self, user_id: str, amount: int, key: str) -> Withdrawal:
        return self.withdrawals.request(
            SITE, user_id, Money(amount, CUR), destination={"account": f"acct-{user_id}"},
            idempotency_key=key, requested_by=user_id,
        )  # fmt: skip

    def get(self, transfer_id: UUID) -> Transfer:
        return self.transfers.get(transfer_id)

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return self.db.execute(sql, params).fetchall()

    def balance(self, user_id: str) -> tuple[int, int]:
        row = self.rows(
            "SELECT balance, held FROM wallets WHERE site = %s AND user_id = %s AND currency = %s",
            SITE, user_id, CUR,
        )[0]  # fmt: skip
        return row["balance"], row["held"]

    def keys(self, prefix: str) -> list[dict[str, Any]]:
        """The wallet entries whose idempotency key starts with ``prefix``."""
        return self.rows(
            "SELECT idempotency_key, kind, amount, held_amount FROM wallet_entries"
            " WHERE site = %s AND idempotency_key LIKE %s ORDER BY id",
            SITE, prefix + "%",
        )  # fmt: skip


class Sweeping:
    """The sweeper in a thread of the test, paused while a phase's transfers are written so
    that one tick claims them all (the same lease, one message to the worker)."""

    def __init__(self, sweeper: Sweeper, url: str) -> None:
        self.sweeper, self.url = sweeper, url
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=self.sweeper.run, args=(self.stop_event, self.url), daemon=True
        )
        self.thread.start()

    def stop(self) -> bool:
        """Stop it; True once its thread has ended."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
            if self.thread.is_alive():
                return False
            self.thread = None
        return True


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_refunds_and_payouts_survive_lost_answers_a_killed_worker_and_a_flushed_broker(
    found_services: Services, own_database_url: str, sandbox: SandboxHandle
) -> None:
    control = SandboxControl(sandbox.url)
    broker_url = found_services.broker_url
    env = daemon_env(own_database_url, broker_url, sandbox.url)
    env["PAYDISPATCH_BILLING_HOOKS"] = "wallet"
    namespace = env["PAYDISPATCH_BROKER_NAMESPACE"]
    pool = open_pool(own_database_url, max_size=4, name="e2e-chaos")
    repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
    broker = make_broker(broker_url, namespace=namespace)
    sweeper = Sweeper(repo, Steps(broker, ["sandbox"]), ["sandbox"], lease=LEASE, interval=0.1)
    sweeping = Sweeping(sweeper, own_database_url)
    db = psycopg.connect(own_database_url, autocommit=True, row_factory=dict_row)
    w = World(
        own_database_url, env, repo, SyncTransfers(repo, capabilities=CAPS),
        SyncWithdrawals(own_database_url, WITHDRAWALS, capabilities=CAPS), control, db,
    )  # fmt: skip
    first = spawn(env, "worker", "--threads", "2")
    second: subprocess.Popen[bytes] | None = None
    try:
        sweeping.start()
        # Given orders paid into three users' wallets (the wallet hook, in the worker),
        a, b = w.pay("u1", 3000), w.pay("u1", 2000)
        c, d = w.pay("u2", 4000), w.pay("u3", 6000)
        paid = [a, b, c, d]
        wait_until(lambda: all(repo.get(o).status is OrderStatus.PAID for o in paid), LONG, "paid")
        assert [w.balance(u) for u in ("u1", "u2", "u3")] == [(5000, 0), (4000, 0), (6000, 0)]

        # a refund the payment system refuses (failed: its hold comes back),
        control.faults("refund", queue=["refuse"])
        refused, _ = w.refund(b, 500, "b-refused")
        wait_until(lambda: w.get(refused.id).final, LONG, "the refused refund to fail")
        assert w.get(refused.id).status is TS.FAILED

        # a full refund and a withdrawal whose answers the payment system loses, in flight
        # in the first worker when it is SIGKILLed (claimed in one tick: one lease for both),
        control.faults("refund", queue=["accept_then_timeout"])
        control.faults("payout", queue=["accept_then_timeout"])
        assert sweeping.stop(), "the sweeper did not stop"
        lost_refund, _ = w.refund(a, None, "a-full")
        lost_payout = w.withdraw("u3", 1000, "w-1")
        sweeping.start()
        assert lost_payout.transfer_id is not None

        def both_made() -> bool:
            stats = control.stats()
            return (
                str(lost_refund.id) in stats["refunds_per_reference"]
                and str(lost_payout.transfer_id) in stats["payouts_per_reference"]
            )

        wait_until(both_made, LONG, "the sandbox to make the refund and the payout")
        in_flight = [w.get(lost_refund.id), w.get(lost_payout.transfer_id)]
        assert [t.status for t in in_flight] == [TS.SUBMITTING, TS.SUBMITTING]
        # (due again when their lease ends: else a dead worker's send is never taken over)
        assert None not in [t.next_run_at for t in in_flight]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        # more refunds (partial ones, some asked twice with the same key) and withdrawals
        # while no worker runs,
        partial_b, created = w.refund(b, 700, "b-1")
        assert created
        again, created = w.refund(b, 700, "b-1")
        assert (again.id, created) == (partial_b.id, False)
        second_b, _ = w.refund(b, 800, "b-2")
        partial_c, _ = w.refund(c, 1000, "c-1")
        rest_c, _ = w.refund(c, None, "c-2")
        assert rest_c.money == Money(3000, CUR)
        again, created = w.refund(c, None, "c-2")
        assert (again.id, created) == (rest_c.id, False)
        with pytest.raises(RefundRefused):  # A is refunded in full already (reserved)
            w.refund(a, 1, "a-more")
        failing = w.withdraw("u3", 2000, "w-2")
        paid_out = w.withdraw("u3", 1000, "w-3")
        assert w.withdraw("u3", 1000, "w-3").id == paid_out.id  # the same key: the same one
        refunds = [lost_refund, partial_b, second_b, partial_c, rest_c]
        payouts = [lost_payout, failing, paid_out]
        payout_ids = [p.transfer_id for p in payouts]
        assert None not in payout_ids
        transfer_ids = [r.id for r in refunds] + [t for t in payout_ids if t is not None]

        # the broker's queues are flushed once the sweeper has sent them all (the killed
        # worker's two again too, their leases run out),
        def all_sent() -> bool:
            now = [w.get(t) for t in transfer_ids]
            moved = [now[0].lease_token, now[5].lease_token] != [
                in_flight[0].lease_token,
                in_flight[1].lease_token,
            ]
            return moved and all(t.lease_token is not None for t in now)

        wait_until(all_sent, LONG, "the sweeper to send every transfer")
        assert flush_namespace(broker_url, namespace) > 0

        # and a second worker takes over when the lost messages' leases run out,
        # its reads meeting errors and garbage on the way,
        control.faults("status", queue=["http_500"])
        control.faults("refund_status", queue=["http_500", "malformed"])
        control.faults("payout_status", queue=[{"kind": "malformed", "style": "truncated"}])
        second = spawn(env, "worker", "--threads", "2")

        def payouts_pending() -> bool:
            return all(w.get(t).psp_transfer_id for t in transfer_ids[5:])

        wait_until(payouts_pending, LONG, "every payout sent and pending")
        for transfer_id, outcome in zip(
            transfer_ids[5:], ("succeed", "fail", "succeed"), strict=True
        ):
            psp_id = w.get(transfer_id).psp_transfer_id
            control.client.post(f"/_control/payouts/{psp_id}/{outcome}").raise_for_status()
        wait_until(lambda: all(w.get(t).final for t in transfer_ids), LONG, "every transfer final")

        # then every refund succeeded with one refund at the payment system each, the
        # refused one made none;
        done = {t: w.get(t) for t in transfer_ids}
        assert [done[r.id].status for r in refunds] == [TS.SUCCEEDED] * 5
        stats = control.stats()
        assert stats["refunds_per_reference"] == {str(r.id): 1 for r in refunds}
        assert stats["max_refunds_per_reference"] == 1
        assert set(stats["refunds_per_key"].values()) == {1}
        assert stats["refund_calls"] >= 7  # the refused, the lost one and its re-send, ...
        # one payout each, the lost one re-sent with the same key;
        assert stats["payouts_per_reference"] == {str(t): 1 for t in payout_ids}
        assert stats["max_payouts_per_reference"] == 1
        assert stats["payout_calls"] >= 4
        assert stats["faults_served"] == {
            "refund": {"refuse": 1, "accept_then_timeout": 1},
            "payout": {"accept_then_timeout": 1},
            "status": {"http_500": 1},
            "refund_status": {"http_500": 1, "malformed": 1},
            "payout_status": {"malformed": 1},
        }
        statuses = [done[t].status for t in transfer_ids[5:] if t is not None]
        assert statuses == [TS.SUCCEEDED, TS.FAILED, TS.SUCCEEDED]

        # every succeeded refund reversed once in its wallet, its hold settled; the refused
        # one's hold released and nothing reversed;
        # (policy refuse: the request moved the amount into the hold; the reversal takes it
        # out of the hold)
        for r in refunds:
            reversal = [
                (e["kind"], e["amount"], e["held_amount"]) for e in w.keys(f"refund:{r.id}")
            ]
            assert reversal == [("refund", 0, -r.money.amount)]
            assert len(w.keys(f"refund-hold:{r.id}")) == 1
            assert w.keys(f"refund-release:{r.id}") == []
        assert w.keys(f"refund:{refused.id}") == []
        assert len(w.keys(f"refund-release:{refused.id}")) == 1

        # every withdrawal succeeded or failed with its hold settled or released once;
        for withdrawal, status in zip(payouts, ("succeeded", "failed", "succeeded"), strict=True):
            assert str(w.withdrawals.get(withdrawal.id).status) == status
            entries = {
                e["idempotency_key"]: e["kind"] for e in w.keys(f"withdrawal:{withdrawal.id}")
            }
            base = f"withdrawal:{withdrawal.id}"
            if status == "succeeded":
                assert entries == {
                    base: "hold",
                    f"{base}:payout": "withdrawal",
                    f"{base}:fee": "fee",
                }
            else:
                assert entries == {base: "hold", f"{base}:release": "release"}

        # the balances are what was paid less what went out, nothing held anywhere;
        assert [w.balance(u) for u in ("u1", "u2", "u3")] == [
            (5000 - 3000 - 700 - 800, 0),
            (0, 0),
            (6000 - 1060 - 1060, 0),
        ]
        assert w.rows("SELECT coalesce(sum(held), 0) AS held FROM wallets")[0]["held"] == 0

        # no order refunded past what it was paid, the sandbox agreeing on each;
        for row in w.rows(
            "SELECT o.id, o.amount, o.psp_id, o.refunded_amount, o.refund_reserved,"
            " coalesce(sum(t.amount) FILTER (WHERE t.status = 'succeeded'), 0) AS succeeded,"
            " coalesce(sum(t.amount) FILTER (WHERE t.status NOT IN ('failed', 'cancelled')), 0)"
            " AS reserved"
            " FROM orders o LEFT JOIN transfers t ON t.order_id = o.id AND t.kind = 'refund'"
            " GROUP BY o.id"
        ):
            assert row["reserved"] <= row["amount"]
            assert (row["refunded_amount"], row["refund_reserved"]) == (
                row["succeeded"],
                row["reserved"],
            )
            assert control.invoice(row["psp_id"])["refunded"] == row["succeeded"]

        # and the audit finds every balance equal to its entries.
        audit = cli(own_database_url, "wallet", "audit")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "OK:" in audit.stdout
    finally:
        sweeping.stop()
        for proc in (first, second):
            _kill(proc)
        broker.close()
        w.withdrawals.close()
        repo.close()
        pool.close()
        db.close()
        control.close()
