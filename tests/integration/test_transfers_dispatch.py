"""Refunds dispatched end to end (issue #14): sweeper + worker in one process, real PostgreSQL,
Redis and the sandbox over HTTP, with the sandbox's faults on the refund call."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

import pytest

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.runner import SandboxHandle
from dispatcher.services import Services
from orders import Money, NewOrder, OrderStatus
from orders.model import Transfer, TransferStatus
from orders.transfers import SyncTransfers
from tests.conftest import drop_database, make_database
from tests.dispatch_support import Daemon, SandboxControl, running_daemon, wait_until

TS = TransferStatus


@pytest.fixture
def daemon(
    found_services: Services, template_database: str, sandbox: SandboxHandle
) -> Iterator[Daemon]:
    url = make_database(found_services, template_database)
    try:
        with running_daemon(
            url, found_services.broker_url, sandbox.url, lease=timedelta(seconds=2)
        ) as d:
            yield d
    finally:
        drop_database(found_services, url)


def paid_order(daemon: Daemon, amount: int = 1500) -> UUID:
    new = NewOrder(
        site="shop",
        user_id="u1",
        money=Money(amount, "USD"),
        adapter="sandbox",
        metadata={SCENARIO_METADATA_KEY: "pay_after:0"},
    )
    order_id = daemon.repo.create(new).order.id
    wait_until(lambda: daemon.repo.get(order_id).status is OrderStatus.PAID, what="paid")
    return order_id


def settled(transfers: SyncTransfers, transfer_id: UUID) -> Transfer:
    wait_until(lambda: transfers.get(transfer_id).final, what="the refund settled")
    return transfers.get(transfer_id)


def test_a_refund_is_sent_once_read_until_succeeded_and_counted_on_the_order(
    daemon: Daemon, control: SandboxControl
) -> None:
    transfers = SyncTransfers(daemon.repo)
    order_id = paid_order(daemon)
    refund, _ = transfers.request_refund(
        order_id,
        Money(500, "USD"),
        site="shop",
        idempotency_key="r1",
        reason="broken",
        requested_by="test",
    )
    done = settled(transfers, refund.id)
    assert done.status is TS.SUCCEEDED
    assert done.psp_transfer_id is not None
    assert done.next_run_at is None
    assert done.lease_token is None
    order = daemon.repo.get(order_id)
    assert (order.refunded_amount, order.refund_reserved) == (500, 500)
    assert order.status is OrderStatus.PAID  # a refund never changes the order's status
    stats = control.stats()
    assert stats["refunds_per_reference"] == {str(refund.id): 1}
    assert control.invoice(order.psp_id or "")["refunded"] == 500
    assert [e["to_status"] for e in transfers.events(refund.id)] in (
        ["requested", "submitting", "pending", "succeeded"],
        ["requested", "submitting", "succeeded"],
    )


def test_a_lost_answer_is_resent_with_the_same_key_and_refunds_once(
    daemon: Daemon, control: SandboxControl
) -> None:
    # Given a refund whose first send is made by the sandbox and its answer lost, and so is the
    # transport's own retry (the step ends with the refund in submitting),
    control.faults("refund", queue=["accept_then_timeout", "accept_then_timeout"])
    transfers = SyncTransfers(daemon.repo)
    order_id = paid_order(daemon)
    refund, _ = transfers.request_refund(
        order_id, None, site="shop", idempotency_key=None, reason="all", requested_by="test"
    )
    # when a later step finds it in submitting and sends it again,
    done = settled(transfers, refund.id)
    # then it succeeded, with one refund at the payment system for it.
    assert done.status is TS.SUCCEEDED
    assert done.attempts >= 2  # a second step sent it again
    stats = control.stats()
    assert stats["refunds_per_reference"] == {str(refund.id): 1}
    assert stats["max_refunds_per_reference"] == 1
    assert stats["calls"]["refund"] >= 3  # two lost answers and the re-send, one key
    order = daemon.repo.get(order_id)
    assert (order.refunded_amount, order.refund_reserved) == (1500, 1500)


def test_a_refused_refund_fails_and_gives_the_amount_back(
    daemon: Daemon, control: SandboxControl
) -> None:
    control.faults("refund", queue=["refuse"])
    transfers = SyncTransfers(daemon.repo)
    order_id = paid_order(daemon)
    refund, _ = transfers.request_refund(
        order_id, Money(700, "USD"), site="shop", idempotency_key="x", reason="r", requested_by="t"
    )
    done = settled(transfers, refund.id)
    assert done.status is TS.FAILED
    assert done.last_error
    order = daemon.repo.get(order_id)
    assert (order.refunded_amount, order.refund_reserved) == (0, 0)
    assert control.stats()["refunds_per_reference"] == {}
