"""The sandbox's behaviour behind its HTTP routes: invoices, timed outcomes, webhooks, counters.

One :class:`SandboxService` per app. Its background work (the timeline and the webhook sender)
runs as asyncio tasks inside the app's lifespan (:meth:`SandboxService.running`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.faults import FaultInjector, Operation
from adapters.sandbox.money_out import TransferBook, TransferOutcome, TransferRequest
from adapters.sandbox.protocol import (
    PAYOUT_EVENT_TYPE,
    REFUND_EVENT_TYPE,
    InvoiceStatus,
    ScenarioKind,
    TransferStatus,
)
from adapters.sandbox.store import (
    InvoiceRecord,
    InvoiceRequest,
    InvoiceStore,
    Move,
    Outcome,
    SandboxApiError,
)
from adapters.sandbox.timeline import Timeline
from adapters.sandbox.webhooks import WebhookSender, build_event, build_webhook


class SandboxService:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = InvoiceStore()
        self.refunds = TransferBook("refund", "rf")
        self.payouts = TransferBook("payout", "po")
        self.faults = FaultInjector(config.faults, config.seed)
        self.calls: Counter[Operation] = Counter()
        self.timeline = Timeline()
        self.webhooks = WebhookSender(
            config.webhook_secret,
            lambda: self.faults.webhooks,
            attempts=config.webhook_attempts,
            timeout=config.webhook_timeout,
            backoff=config.webhook_backoff,
            reorder_window=config.reorder_window,
            concurrency=config.webhook_concurrency,
        )
        self._released = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the timeline and the webhook sender for as long as the app lives."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self.timeline.run(), name="sandbox-timeline"),
            loop.create_task(self.webhooks.run(), name="sandbox-webhooks"),
        ]
        try:
            yield
        finally:
            self.release_holds()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def create(self, key: str, request: InvoiceRequest, pay_url_base: str) -> Outcome:
        outcome = self.store.create(key, request, pay_url_base, self.now())
        if outcome.changed:
            self._schedule(outcome.record)
        return outcome

    def move(self, invoice_id: str, move: Move) -> Outcome:
        """Change an invoice's status and, when it changed, queue its signed webhook."""
        outcome = self.store.move(invoice_id, move, self.now())
        notify_url = outcome.record.request.notify_url
        if outcome.changed and notify_url is not None:
            self.webhooks.send(build_webhook(notify_url, outcome.record.to_json(self.now())))
        return outcome

    def _schedule(self, record: InvoiceRecord) -> None:
        deadline = record.request.expires_at.timestamp()
        # Reads already show "expired" after the deadline; this writes it down and notifies.
        self.timeline.at(deadline, lambda: self._try(record.id, Move.EXPIRE))
        scenario = record.request.scenario
        if scenario is None or scenario.kind is ScenarioKind.NEVER:
            return
        created = record.created_at.timestamp()
        if scenario.kind is ScenarioKind.PAY_AFTER:
            self.timeline.at(created + scenario.seconds, lambda: self._try(record.id, Move.PAY))
        elif scenario.kind is ScenarioKind.DECLINE_AFTER:
            self.timeline.at(created + scenario.seconds, lambda: self._try(record.id, Move.DECLINE))
        elif scenario.kind is ScenarioKind.PAY_LATE:
            self.timeline.at(
                deadline + scenario.seconds, lambda: self._try(record.id, Move.LATE_PAY)
            )

    def _try(self, invoice_id: str, move: Move) -> None:
        # A timed outcome that no longer applies (paid by hand, cancelled, reset) is dropped.
        with contextlib.suppress(SandboxApiError):
            self.move(invoice_id, move)

    # -- refunds and payouts (issue #14) ---------------------------------------------------------

    def create_refund(self, key: str, request: TransferRequest) -> TransferOutcome:
        """A refund of a paid invoice; never more than its pending and succeeded refunds leave.

        404 for an unknown invoice, 409 ``not_refundable`` unless it is paid, 422
        ``currency_mismatch`` or ``amount_exceeds`` (with what is left).
        """
        now = self.now()

        def admit(held: int) -> None:
            invoice = self.store.get(request.invoice_id or "")
            status = invoice.status_at(now)
            if status is not InvoiceStatus.PAID:
                raise SandboxApiError(
                    409, "not_refundable", f"invoice {invoice.id} is {status}, not paid"
                )
            if request.currency != invoice.request.currency:
                raise SandboxApiError(
                    422,
                    "currency_mismatch",
                    f"the invoice is in {invoice.request.currency}, not {request.currency}",
                )
            left = invoice.request.amount - held
            if request.amount > left:
                raise SandboxApiError(
                    422,
                    "amount_exceeds",
                    f"refund of {request.amount} exceeds the {left} left of invoice {invoice.id}",
                )

        outcome = self.refunds.create(key, request, now, admit)
        if outcome.changed:
            self._schedule_settle(
                self.refunds, outcome.record.id, self.config.refund_settle_seconds
            )
        return outcome

    def create_payout(
        self, key: str, request: TransferRequest, page_url_base: str
    ) -> TransferOutcome:
        outcome = self.payouts.create(key, request, self.now(), page_url_base=page_url_base)
        if outcome.changed:
            self._schedule_settle(
                self.payouts, outcome.record.id, self.config.payout_settle_seconds
            )
        return outcome

    def settle(
        self, book: TransferBook, record_id: str, status: TransferStatus, reason: str | None = None
    ) -> TransferOutcome:
        """Settle a refund or payout; a succeeded refund counts against its invoice. Either way
        a changed record is notified (a refund at its invoice's notify_url)."""
        outcome = book.settle(record_id, status, self.now(), reason)
        if not outcome.changed:
            return outcome
        record = outcome.record
        if book is self.refunds:
            invoice_id = record.request.invoice_id or ""
            if status is TransferStatus.SUCCEEDED:
                invoice = self.store.add_refunded(invoice_id, record.request.amount, self.now())
                current = invoice.record
            else:
                current = self.store.get(invoice_id)
            url = current.request.notify_url
            if url is not None:
                event = build_event(
                    url,
                    REFUND_EVENT_TYPE,
                    refund=record.to_json(),
                    invoice=current.to_json(self.now()),
                )
                self.webhooks.send(event)
        elif record.request.notify_url is not None:
            self.webhooks.send(
                build_event(record.request.notify_url, PAYOUT_EVENT_TYPE, payout=record.to_json())
            )
        return outcome

    def _schedule_settle(self, book: TransferBook, record_id: str, seconds: float | None) -> None:
        if seconds is None:
            return

        def succeed() -> None:
            # Settled by hand (or reset) meanwhile: nothing left to do.
            with contextlib.suppress(SandboxApiError):
                self.settle(book, record_id, TransferStatus.SUCCEEDED)

        self.timeline.at(self.now().timestamp() + seconds, succeed)

    async def hold(self, seconds: float | None) -> None:
        """Hold a request like a hung server; released early when the server shuts down."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._released.wait(), self.config.hang_seconds if seconds is None else seconds
            )

    def release_holds(self) -> None:
        self._released.set()

    def reset(self) -> None:
        """Forget every invoice, counter and fault; back to the configured fault plan."""
        self.store = InvoiceStore()
        self.refunds = TransferBook("refund", "rf")
        self.payouts = TransferBook("payout", "po")
        self.faults = FaultInjector(self.config.faults, self.config.seed)
        self.calls.clear()
        self.timeline.clear()
        self.webhooks.clear()

    def call_counts(self) -> dict[str, int]:
        """Calls per operation, by the operation's name."""
        return {op.value: self.calls[op] for op in Operation}

    def stats(self) -> dict[str, Any]:
        served = self.faults.served_counts()
        return {
            **self.store.stats(),
            **self.refunds.stats(),
            **self.payouts.stats(),
            "calls": self.call_counts(),
            "create_calls": self.calls[Operation.CREATE],
            "status_calls": self.calls[Operation.STATUS],
            "cancel_calls": self.calls[Operation.CANCEL],
            "lookup_calls": self.calls[Operation.LOOKUP],
            "refund_calls": self.calls[Operation.REFUND],
            "payout_calls": self.calls[Operation.PAYOUT],
            "faults_served": served,
            "faults_served_total": sum(sum(kinds.values()) for kinds in served.values()),
            "webhooks": self.webhooks.stats(),
            "scheduled": len(self.timeline),
        }
