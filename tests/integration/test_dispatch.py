"""The dispatch engine end to end in one process: real PostgreSQL, Redis and sandbox over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from prometheus_client import REGISTRY

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.runner import SandboxHandle
from dispatcher.services import Services
from orders import Money, NewOrder, OrderStatus
from orders.repository import OrderRepository
from tests.conftest import drop_database, make_database
from tests.dispatch_support import (
    Daemon,
    SandboxControl,
    running_daemon,
    wait_until,
)

S = OrderStatus
FINAL = {S.PAID, S.REJECTED, S.EXPIRED, S.CANCELLED, S.FAILED, S.NEEDS_REVIEW}


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


def create(
    repo: OrderRepository,
    scenario: str,
    *,
    money: Money | None = None,
    expires_in: timedelta | None = None,
) -> UUID:
    new = NewOrder(
        site="shop",
        user_id="u1",
        money=money or Money(1500, "USD"),
        adapter="sandbox",
        description=f"test {scenario}",
        metadata={SCENARIO_METADATA_KEY: scenario},
        expires_in=expires_in,
    )
    return repo.create(new).order.id


def status_of(repo: OrderRepository, order_id: UUID) -> OrderStatus:
    return repo.get(order_id).status


def shorten_deadline(repo: OrderRepository, order_id: UUID, seconds: float) -> None:
    """Orders live at least 10 s; tests that wait for a deadline bring it closer."""
    with repo.pool.connection() as conn:
        conn.execute(
            "UPDATE orders SET expires_at = now() + make_interval(secs => %s) WHERE id = %s",
            (seconds, order_id),
        )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def transitions(repo: OrderRepository, order_id: UUID) -> list[tuple[Any, Any]]:
    return [(e.from_status, e.to_status) for e in repo.events(order_id)]


def test_new_order_is_submitted_polled_and_paid(daemon: Daemon, control: SandboxControl) -> None:
    order_id = create(daemon.repo, "pay_after:1")
    wait_until(lambda: status_of(daemon.repo, order_id) is S.PAID, what="paid")
    order = daemon.repo.get(order_id)
    assert order.psp_id is not None
    assert order.pay_url is not None
    assert order.paid_at is not None
    assert order.next_run_at is None
    assert transitions(daemon.repo, order_id) == [
        (None, S.NEW),
        (S.NEW, S.SUBMITTING),
        (S.SUBMITTING, S.AWAITING_PAYMENT),
        (S.AWAITING_PAYMENT, S.PAID),
    ]
    assert control.stats()["invoices_per_order"][str(order_id)] == 1


def test_declined_payment_rejects_the_order(daemon: Daemon, control: SandboxControl) -> None:
    order_id = create(daemon.repo, "decline_after:1")
    wait_until(lambda: status_of(daemon.repo, order_id) is S.REJECTED, what="rejected")
    assert transitions(daemon.repo, order_id)[-1] == (S.AWAITING_PAYMENT, S.REJECTED)


def test_unpaid_order_expires_after_a_final_check(daemon: Daemon, control: SandboxControl) -> None:
    order_id = create(daemon.repo, "never")
    wait_until(lambda: status_of(daemon.repo, order_id) is S.AWAITING_PAYMENT, what="invoice")
    polls_before = control.stats()["status_calls"]
    shorten_deadline(daemon.repo, order_id, 1.0)
    wait_until(lambda: status_of(daemon.repo, order_id) is S.EXPIRED, what="expired")
    events = daemon.repo.events(order_id)
    assert (events[-1].from_status, events[-1].to_status) == (S.AWAITING_PAYMENT, S.EXPIRED)
    # The move to expired came from a status call made at or after the deadline.
    assert control.stats()["status_calls"] > polls_before
    assert events[-1].detail.get("final_check") or events[-1].detail.get("psp_status") == "expired"


def test_late_payment_after_expiry_is_paid_and_counted(
    daemon: Daemon, control: SandboxControl
) -> None:
    late_before = metric("paydispatch_late_payments_total", adapter="sandbox")
    order_id = create(daemon.repo, "pay_late:1")
    wait_until(lambda: status_of(daemon.repo, order_id) is S.AWAITING_PAYMENT, what="invoice")
    shorten_deadline(daemon.repo, order_id, 0.5)
    # The sandbox takes its deadline from the create request: pay it by hand once expired.
    wait_until(lambda: status_of(daemon.repo, order_id) is S.EXPIRED, what="expired")
    psp_id = daemon.repo.get(order_id).psp_id
    assert psp_id is not None
    control.client.post(f"/_control/invoices/{psp_id}/pay").raise_for_status()
    wait_until(lambda: status_of(daemon.repo, order_id) is S.PAID, what="late payment")
    assert transitions(daemon.repo, order_id)[-2:] == [
        (S.AWAITING_PAYMENT, S.EXPIRED),
        (S.EXPIRED, S.PAID),
    ]
    assert daemon.repo.events(order_id)[-1].detail["late"] is True
    assert metric("paydispatch_late_payments_total", adapter="sandbox") == late_before + 1


def test_cancelled_order_is_cancelled_at_the_payment_system_too(
    daemon: Daemon, control: SandboxControl
) -> None:
    order_id = create(daemon.repo, "never")
    wait_until(lambda: status_of(daemon.repo, order_id) is S.AWAITING_PAYMENT, what="invoice")
    cancelled = daemon.repo.cancel(order_id, reason="buyer left")
    assert cancelled.status is S.CANCELLED
    psp_id = cancelled.psp_id
    assert psp_id is not None
    wait_until(lambda: control.invoice(psp_id)["status"] == "cancelled", what="sandbox cancel")
    assert status_of(daemon.repo, order_id) is S.CANCELLED


def test_transient_faults_never_reject_an_order(daemon: Daemon, control: SandboxControl) -> None:
    # Given a sandbox that answers creates with 5xx, 429, time-outs and an accepted-then-timed-
    # out create, and status calls with each fault twice (a queue, not a rate: the same faults
    # every run; tests/unit/test_engine_table.py drives every fault on every step),
    control.faults(
        "create", queue=["http_500", "http_429", "timeout", "accept_then_timeout", "malformed"]
    )
    control.faults("status", queue=["http_500", "http_429", "timeout", "malformed"] * 2)
    # when orders that the buyer pays go through,
    ids = [create(daemon.repo, "pay_after:1") for _ in range(5)]
    # then every one ends paid, with one invoice each.
    wait_until(
        lambda: all(status_of(daemon.repo, i) in FINAL for i in ids), timeout=60, what="final"
    )
    assert [status_of(daemon.repo, i) for i in ids] == [S.PAID] * 5
    stats = control.stats()
    assert stats["max_invoices_per_order"] == 1
    assert sum(stats["faults_served"].get("create", {}).values()) == 5
    assert sum(stats["faults_served"].get("status", {}).values()) == 8


def test_reported_amount_mismatch_goes_to_needs_review(
    daemon: Daemon, control: SandboxControl
) -> None:
    control.faults("status", rate=1.0, choices=[{"kind": "amount_mismatch", "delta": 100}])
    order_id = create(daemon.repo, "pay_after:1")
    wait_until(lambda: status_of(daemon.repo, order_id) in FINAL, what="final")
    order = daemon.repo.get(order_id)
    assert order.status is S.NEEDS_REVIEW
    assert order.paid_at is None
    detail = daemon.repo.events(order_id)[-1].detail
    assert detail["reason"] == "amount mismatch"
    assert detail["expected"] == "15.00 USD"


def test_definite_refusal_fails_the_order(daemon: Daemon, control: SandboxControl) -> None:
    order_id = create(daemon.repo, "pay_after:1", money=Money(1500, "CHF"))
    wait_until(lambda: status_of(daemon.repo, order_id) in FINAL, what="final")
    order = daemon.repo.get(order_id)
    assert order.status is S.FAILED
    assert order.last_error is not None
    assert "unsupported_currency" in order.last_error


def test_flushed_redis_loses_no_order(daemon: Daemon, control: SandboxControl) -> None:
    # Given twenty orders in flight,
    ids = [create(daemon.repo, "pay_after:2") for _ in range(20)]
    wait_until(
        lambda: sum(status_of(daemon.repo, i) is not S.NEW for i in ids) >= 10, what="in flight"
    )
    # when Redis loses every message,
    daemon.flush_broker()
    # then the sweeper re-derives the work from the table and every order is paid.
    wait_until(
        lambda: all(status_of(daemon.repo, i) is S.PAID for i in ids), timeout=60, what="paid"
    )
    assert control.stats()["max_invoices_per_order"] == 1
