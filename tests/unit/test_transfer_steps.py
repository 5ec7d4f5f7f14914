"""The steps of refunds and payouts (dispatcher/worker/transfers.py) with fakes: a refund that
may have been sent is never sent twice — re-sent with the same key where the adapter is
idempotent, read by our id where it can look refunds up, else left to a person."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

import pytest

from adapters.base import (
    Capabilities,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
)
from adapters.testing import SAMPLE_TIME, sample_order
from dispatcher.runtime import AdapterRuntime
from dispatcher.worker.transfers import TransferSteps
from dispatcher.worker.transport import PspUnavailable
from orders.errors import OrderNotFound, StaleOrder
from orders.model import (
    TRANSFER_TRANSITIONS,
    Order,
    Transfer,
    TransferKind,
    TransferStatus,
)
from orders.money import Money
from orders.status import OrderStatus
from tests.unit.engine_fakes import POLICY

TS = TransferStatus
NOW = SAMPLE_TIME + timedelta(minutes=10)
LEASE = uuid.UUID("00000000-0000-4000-8000-00000000cafe")


def a_refund(**changes: Any) -> Transfer:
    order = sample_order(adapter="fake")
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "kind": TransferKind.REFUND,
        "site": order.site,
        "adapter": "fake",
        "user_id": order.user_id,
        "money": Money(4000, "RUB"),
        "status": TS.REQUESTED,
        "order_id": order.id,
        "withdrawal_id": None,
        "origin": "site",
        "reason": "broken",
        "requested_by": "test",
        "idempotency_key": None,
        "request_hash": None,
        "psp_transfer_id": None,
        "destination": None,
        "attempts": 0,
        "errors": 0,
        "last_error": None,
        "next_run_at": NOW,
        "lease_until": NOW + timedelta(minutes=1),
        "lease_token": LEASE,
        "created_at": NOW,
        "updated_at": NOW,
        "settled_at": None,
    }
    values.update(changes)
    return Transfer(**values)


class FakeTransfers:
    """``Transfers.get`` and ``write`` on a dict: the transition table, the compare-and-set on
    status and lease, and every move recorded."""

    def __init__(self, transfer: Transfer) -> None:
        self.rows = {transfer.id: transfer}
        self.moves: list[tuple[TransferStatus, TransferStatus]] = []
        self.payment_ids: list[str] = []  # what remember_payment stored

    async def remember_payment(self, order: Any, psp_payment_id: str | None) -> bool:
        """``Transfers.remember_payment``: a payment id stored where the order has none."""
        if not psp_payment_id or order.psp_payment_id is not None:
            return False
        self.payment_ids.append(psp_payment_id)
        return True

    async def get(self, transfer_id: uuid.UUID, *, site: str | None = None) -> Transfer:
        if transfer_id not in self.rows:
            raise OrderNotFound(str(transfer_id))
        return self.rows[transfer_id]

    async def write(
        self,
        transfer: Transfer,
        to: TransferStatus | None,
        *,
        keep_lease: bool = False,
        next_run_at: datetime | None = None,
        **changes: Any,
    ) -> Transfer:
        changes.pop("actor", None)
        changes.pop("detail", None)
        current = self.rows[transfer.id]
        if current.status is not transfer.status or current.lease_token != transfer.lease_token:
            raise StaleOrder("moved")
        if to is not None:
            assert to in TRANSFER_TRANSITIONS[current.status], (current.status, to)
            self.moves.append((current.status, to))
            changes["status"] = to
        if not keep_lease:
            changes.update(lease_token=None, lease_until=None)
        written = replace(current, next_run_at=next_run_at, **changes)
        self.rows[written.id] = written
        return written


@dataclass
class FakeAdapter:
    """A payment system's refund operations; the wire is :class:`FakeTransport`."""

    capabilities: Capabilities
    name: str = "fake"
    reported: Money | None = None  # the amount the refund's status read reports

    def build_status(self, order: Order, settings: Any) -> PspRequest:
        return PspRequest("GET", "https://psp.test/payment", "status")

    def parse_status(self, order: Order, response: PspResponse, settings: Any, op: str) -> Any:
        return type("Report", (), {"psp_payment_id": "pay-1"})()

    def build_refund(self, refund: RefundRequest, settings: Any) -> PspRequest:
        return PspRequest("POST", "https://psp.test/refunds", "refund", json={"id": str(refund.id)})

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: Any
    ) -> RefundReport:
        return RefundReport(RefundState.PENDING, psp_refund_id="re-1", raw_status="pending")

    def build_refund_status(self, refund: RefundRequest, settings: Any) -> PspRequest:
        return PspRequest("GET", "https://psp.test/refunds/by-ref", "refund_status")

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: Any
    ) -> RefundReport:
        return RefundReport(
            RefundState.SUCCEEDED, psp_refund_id="re-1", money=self.reported, raw_status="succeeded"
        )


@dataclass
class FakeTransport:
    """Answers each operation from a queue of answers (an exception is raised); logs calls."""

    answers: dict[str, list[Any]] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)
    breaker: Any = None

    async def send(self, request: PspRequest) -> PspResponse:
        self.sent.append(request.operation)
        queue = self.answers.get(request.operation, [])
        answer = queue.pop(0) if queue else None
        if isinstance(answer, Exception):
            raise answer
        return PspResponse(200, b"{}")


class FakeOrders:
    async def get(self, order_id: uuid.UUID) -> Order:
        return replace(sample_order(adapter="fake"), status=OrderStatus.PAID, psp_id="pay-1")


@dataclass
class FakeEngine:
    runtimes: dict[str, AdapterRuntime]
    wire: FakeTransport
    orders: FakeOrders = field(default_factory=FakeOrders)

    def transport(self, name: str) -> FakeTransport:
        return self.wire


def run_steps(
    capabilities: Capabilities,
    transfer: Transfer,
    answers: dict[str, list[Any]],
    steps: int,
    *,
    reported: Money | None = None,
) -> tuple[FakeTransfers, FakeTransport]:
    """Run ``steps`` steps, each on a fresh lease as the sweeper would give."""
    adapter = FakeAdapter(capabilities, reported=reported)
    runtime = AdapterRuntime(cast(Any, adapter), cast(Any, None), POLICY)
    wire = FakeTransport(answers)
    repo = FakeTransfers(transfer)
    engine = FakeEngine({"fake": runtime}, wire)
    worker = TransferSteps(cast(Any, engine), cast(Any, repo), clock=lambda: NOW)
    for _ in range(steps):
        current = repo.rows[transfer.id]
        if current.final or current.status is TS.NEEDS_REVIEW:
            break
        token = uuid.uuid4()
        repo.rows[transfer.id] = replace(current, lease_token=token)
        asyncio.run(worker.run(transfer.id, token))
    return repo, wire


def caps(*, idempotent_refund: bool = False, refund_lookup: bool = False) -> Capabilities:
    return Capabilities(
        idempotent_create=True,
        refunds=True,
        partial_refunds=True,
        idempotent_refund=idempotent_refund,
        refund_lookup=refund_lookup,
    )


LOST = PspUnavailable("timed out after sending", maybe_sent=True)
NOT_SENT = PspUnavailable("connection refused", maybe_sent=False)


def test_a_refund_is_sent_then_read_until_it_succeeds() -> None:
    repo, wire = run_steps(caps(idempotent_refund=True), a_refund(), {}, steps=5)
    transfer = next(iter(repo.rows.values()))
    assert transfer.status is TS.SUCCEEDED
    assert transfer.psp_transfer_id == "re-1"
    assert repo.moves == [
        (TS.REQUESTED, TS.SUBMITTING),
        (TS.SUBMITTING, TS.PENDING),
        (TS.PENDING, TS.SUCCEEDED),
    ]
    assert wire.sent.count("refund") == 1
    # The read of the payment before the send stored the payment id the order lacked.
    assert repo.payment_ids == ["pay-1"]


@pytest.mark.parametrize("reported", [Money(3999, "RUB"), Money(4000, "EUR")])
def test_a_refund_reported_with_another_amount_goes_to_a_person_not_succeeded(
    reported: Money,
) -> None:
    repo, wire = run_steps(caps(idempotent_refund=True), a_refund(), {}, steps=5, reported=reported)
    transfer = next(iter(repo.rows.values()))
    assert transfer.status is TS.NEEDS_REVIEW
    assert repo.moves[-1] == (TS.PENDING, TS.NEEDS_REVIEW)
    assert str(reported) in (transfer.last_error or "")
    assert wire.sent.count("refund") == 1


def test_a_refund_reported_with_its_own_amount_succeeds() -> None:
    repo, _ = run_steps(
        caps(idempotent_refund=True), a_refund(), {}, steps=5, reported=Money(4000, "RUB")
    )
    assert next(iter(repo.rows.values())).status is TS.SUCCEEDED


def test_idempotent_refund_whose_answer_was_lost_is_resent_with_the_same_key() -> None:
    repo, wire = run_steps(caps(idempotent_refund=True), a_refund(), {"refund": [LOST]}, steps=5)
    assert next(iter(repo.rows.values())).status is TS.SUCCEEDED
    assert wire.sent.count("refund") == 2  # the lost one and its re-send (same id: same key)


def test_without_a_key_a_refund_that_may_have_been_sent_is_looked_up_never_resent() -> None:
    repo, wire = run_steps(caps(refund_lookup=True), a_refund(), {"refund": [LOST]}, steps=5)
    transfer = next(iter(repo.rows.values()))
    assert transfer.status is TS.SUCCEEDED
    assert wire.sent.count("refund") == 1
    assert "refund_status" in wire.sent
    assert repo.moves == [(TS.REQUESTED, TS.SUBMITTING), (TS.SUBMITTING, TS.SUCCEEDED)]


def test_without_a_key_or_a_lookup_it_goes_to_needs_review() -> None:
    repo, wire = run_steps(caps(), a_refund(), {"refund": [LOST]}, steps=5)
    transfer = next(iter(repo.rows.values()))
    assert transfer.status is TS.NEEDS_REVIEW
    assert transfer.next_run_at is None
    assert wire.sent.count("refund") == 1
    assert repo.moves == [(TS.REQUESTED, TS.SUBMITTING), (TS.SUBMITTING, TS.NEEDS_REVIEW)]


def test_a_lookup_that_never_finds_it_ends_in_needs_review_not_a_second_send() -> None:
    missing = [PspUnavailable("not found yet", maybe_sent=False) for _ in range(50)]
    repo, wire = run_steps(
        caps(refund_lookup=True),
        a_refund(),
        {"refund": [LOST], "refund_status": missing},
        steps=POLICY.submit_attempts + 5,
    )
    assert next(iter(repo.rows.values())).status is TS.NEEDS_REVIEW
    assert wire.sent.count("refund") == 1


def test_nothing_sent_makes_it_requested_again_and_a_refusal_fails_it() -> None:
    repo, _ = run_steps(caps(), a_refund(), {"refund": [NOT_SENT]}, steps=1)
    transfer = next(iter(repo.rows.values()))
    assert transfer.status is TS.REQUESTED
    assert transfer.attempts == 0
    repo, _ = run_steps(caps(), a_refund(), {"refund": [PspRejected("no")]}, steps=3)
    transfer = next(iter(repo.rows.values()))
    assert transfer.status is TS.FAILED
    assert transfer.last_error is not None
    assert "no" in transfer.last_error


@pytest.mark.parametrize("status", [TS.SUCCEEDED, TS.NEEDS_REVIEW])
def test_a_message_for_a_settled_transfer_or_an_old_lease_sends_nothing(
    status: TransferStatus,
) -> None:
    transfer = a_refund(status=status, next_run_at=None)
    repo = FakeTransfers(transfer)
    wire = FakeTransport()
    runtime = AdapterRuntime(cast(Any, FakeAdapter(caps())), cast(Any, None), POLICY)
    worker = TransferSteps(
        cast(Any, FakeEngine({"fake": runtime}, wire)), cast(Any, repo), clock=lambda: NOW
    )
    asyncio.run(worker.run(transfer.id, uuid.uuid4()))  # not its lease
    assert wire.sent == []
    assert repo.rows[transfer.id] == transfer
