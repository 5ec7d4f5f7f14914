"""The dispatch engine: one async step per claimed order — submit, poll, finalize, watch.

A step loads the order, checks it still holds the lease the sweeper gave it, calls the payment
system through the transport (no transaction is open meanwhile), and commits one transition or
gives the lease back with the next time to look. Errors never crash the step: transient ones
(timeouts, 5xx, 429, unreadable answers, an unavailable database) only delay the order; only a
definite answer from the payment system rejects or fails it.

Submitting, for adapters with and without idempotency keys:

- A new order moves to ``submitting`` and its create is sent. An answer becomes the invoice
  (``awaiting_payment``); a definite refusal fails the order; a failure that surely sent nothing
  (connection refused, an open breaker) makes it ``new`` again.
- A create that may have reached the payment system (a timeout after connecting, a 5xx, a
  dropped connection) or that the adapter answered with :class:`InvoiceMayExist` leaves the
  order in ``submitting``. With ``idempotent_create`` the next attempt sends the same create
  again (same key). Without it, the next attempt first runs the adapter's lookup
  (``build_lookup``/``parse_lookup``): an invoice found is taken as the create's answer; ``None``
  means the payment system surely has none, so a new create is sent; an adapter without lookup
  sends the order to ``needs_review`` (only a person can tell). A found invoice without a pay URL
  still makes the order ``awaiting_payment``: the buyer's page shows no pay link, and the polls
  settle the order as for any other invoice.

No invoice is made for an order within ``CUTOFF`` of its deadline (or past it): it expires
without a call, since an invoice made then would stay open, payable, behind an expired order.

A failed step is retried after a backoff by the order's consecutive errors (``orders.errors``,
reset by any step that ends well), never scheduled later than a short grace after the deadline
(after the late watch's end for a given-up order).

Late payments (the watch of ``expired``, ``rejected`` and ``cancelled`` orders): a payment seen
paid makes the order ``paid`` (counted as late); one held for capture (two-step payments) is
captured and credited the same way, or cancelled at the payment system when its amount differs;
a late payment of another amount goes to ``needs_review``, where the alert finds it.

Cancels go to the payment system only when the adapter's ``can_cancel`` says one can succeed for
the state just read (never without a fresh report): at the deadline after the final status read,
on an amount mismatch of a payment held for capture, and on the first look of the late watch.

When the payment system refuses our own credentials (:class:`CredentialsRejected`), the
adapter's breaker opens at once, the refusal is counted and logged, and the order is released as
it was: no attempt is spent, nothing is failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import structlog

from adapters.base import (
    CanonicalState,
    CredentialsRejected,
    FollowUp,
    Invoice,
    MalformedResponse,
    NotSupported,
    StatusReport,
)
from dispatcher import metrics, settle
from dispatcher.policy import next_poll, retry_at
from dispatcher.runtime import AdapterRuntime
from dispatcher.settle import Decision
from dispatcher.steps import Action
from dispatcher.worker.breaker import BreakerState
from dispatcher.worker.transfers import TransferSteps
from dispatcher.worker.transport import CircuitOpen, PspUnavailable, Transport
from orders.backoff import ceiling
from orders.errors import (
    InvalidInput,
    OrderNotFound,
    OutcomeUnknown,
    PermanentError,
    StaleOrder,
    TransientError,
)
from orders.model import Order, PaidHook, TransferHook
from orders.repository import Orders, Write
from orders.status import LATE_PAYMENT_FROM, OrderStatus
from orders.transfers import Transfers

log = structlog.get_logger(__name__)
S = OrderStatus
MAX_ERROR = 500
LATE_INTERVAL_CAP = timedelta(hours=1)
# No invoice is made for an order this close to its deadline (or past it): it expires instead.
CUTOFF = timedelta(seconds=5)
# States a cancel's answer may report that mean money moved after the last read.
_MONEY_MOVED = frozenset({CanonicalState.PAID, CanonicalState.REFUNDED})


def utcnow() -> datetime:
    return datetime.now(UTC)


def _held_for_capture(report: StatusReport) -> bool:
    """A two-step payment authorized and waiting for our capture (or our cancel)."""
    return report.follow_up is FollowUp.CAPTURE and report.state is CanonicalState.PENDING


class Engine:
    """Runs steps on one event loop, over the async repository opened on that loop.

    HTTP and the database both stay on the loop. The repository coalesces: the reads of all
    steps that start together are one query, and the writes that end steps together are one
    statement (:meth:`orders.repository.Orders.write`). Every move is written by
    :func:`dispatcher.settle.apply`, so a move to paid runs the billing hook in its own
    transaction, as a notification's or a person's does.
    """

    def __init__(
        self,
        orders: Orders,
        runtimes: Mapping[str, AdapterRuntime],
        *,
        paid_hook: PaidHook | None = None,
        clock: Callable[[], datetime] = utcnow,
        http_transport: httpx.AsyncBaseTransport | None = None,
        transfer_hook: TransferHook | None = None,
        transfers: Transfers | None = None,
    ) -> None:
        """``http_transport`` replaces the wire to every payment system (``httpx.MockTransport``
        or a replay of recorded answers), so an adapter runs in the engine without a server.
        ``orders`` must belong to the loop the steps run on; its pool is its opener's to close.
        Refunds and payouts (:mod:`dispatcher.worker.transfers`) run on ``transfers`` (by
        default over ``orders``' pool, with ``transfer_hook``) through the same transports."""
        self.orders = orders
        self.runtimes = dict(runtimes)
        self.paid_hook = paid_hook
        self.clock = clock
        self.transports: dict[str, Transport] = {}
        self.http_transport = http_transport
        self.transfer_hook = transfer_hook
        self._transfers = transfers
        self._transfer_steps: TransferSteps | None = None

    @property
    def transfer_steps(self) -> TransferSteps:
        """The steps of refunds and payouts, made on first use (on the engine's loop)."""
        if self._transfer_steps is None:
            transfers = self._transfers or Transfers(
                self.orders.pool,
                capabilities={n: rt.adapter.capabilities for n, rt in self.runtimes.items()},
                hook=self.transfer_hook,
            )
            self._transfer_steps = TransferSteps(self, transfers, clock=self.clock)
        return self._transfer_steps

    def transport(self, name: str) -> Transport:
        if name not in self.transports:  # created on the loop that uses it
            rt = self.runtimes[name]
            self.transports[name] = Transport(
                rt.adapter, rt.settings, rt.policy, http_transport=self.http_transport
            )
        return self.transports[name]

    async def aclose(self) -> None:
        for transport in self.transports.values():
            await transport.aclose()
        self.transports.clear()

    # -- entry point ---------------------------------------------------------------------

    async def run(self, order_id: UUID, token: UUID, action: Action) -> None:
        """One step for one order (or, for ``transfer``, one refund or payout). Never raises for
        anything an order or a PSP can do."""
        if action is Action.TRANSFER:
            await self.transfer_steps.run(order_id, token)
            return
        if action is Action.REFUND_CHECK:
            await self.transfer_steps.check_refunds(order_id)
            return
        structlog.contextvars.bind_contextvars(order_id=str(order_id), action=str(action))
        try:
            try:
                order = await self.orders.get(order_id)
            except OrderNotFound:
                log.warning("step for an unknown order dropped")
                return
            if order.lease_token != token:
                log.debug("lease moved on; message dropped", status=str(order.status))
                return
            rt = self.runtimes.get(order.adapter)
            if rt is None:
                log.error("adapter not enabled in this worker", adapter=order.adapter)
                return
            structlog.contextvars.bind_contextvars(adapter=order.adapter)
            try:
                await self._dispatch(rt, order, action)
            except StaleOrder as exc:
                log.info("order moved under us", detail=str(exc))
            except CredentialsRejected as exc:
                await self._credentials_rejected(rt, order, exc)
            except Exception as exc:
                await self._retry_later(rt, order, action, exc)
        except TransientError as exc:  # the database went away while giving the lease back
            log.warning("step abandoned; the lease will bring the order back", error=str(exc))
        except Exception:
            log.exception("step crashed; the lease will bring the order back")
        finally:
            structlog.contextvars.unbind_contextvars("order_id", "action", "adapter")

    async def _dispatch(self, rt: AdapterRuntime, order: Order, action: Action) -> None:
        if action is Action.SUBMIT:
            await self._submit(rt, order)
        elif action in {Action.POLL, Action.FINALIZE} and order.status is S.AWAITING_PAYMENT:
            await self._poll(rt, order)
        elif action is Action.WATCH and order.status in LATE_PAYMENT_FROM:
            await self._watch(rt, order)
        else:
            log.info("nothing to do for this status", status=str(order.status))

    # -- submit ----------------------------------------------------------------------------

    async def _submit(self, rt: AdapterRuntime, order: Order) -> None:
        if order.status in {S.NEW, S.SUBMITTING} and self.clock() >= order.expires_at - CUTOFF:
            # Too late for a buyer to pay: an invoice now would only stay open behind an
            # expired order. No buyer has seen a pay link, so nothing is left to watch.
            detail = {"reason": "deadline passed before an invoice was made"}
            await self._move(order, S.EXPIRED, detail=detail, next_run_at=None)
            return
        # Found in submitting: an earlier step began this submission, and its create may have
        # reached the payment system.
        resumed = order.status is S.SUBMITTING
        if order.status is S.NEW:
            order = await self._move(
                order, S.SUBMITTING, keep_lease=True, attempts=order.attempts + 1
            )
        elif order.status is not S.SUBMITTING:
            return
        try:
            built = rt.adapter.build_create(order, rt.settings)
        except InvalidInput as exc:
            await self._move(order, S.FAILED, last_error=str(exc)[:MAX_ERROR])
            return
        if isinstance(built, Invoice):
            # Built locally (Robokassa's signed pay URL): the same invoice every time, nothing
            # was sent, so there is nothing to look up either.
            await self._invoice_ready(rt, order, built)
            return
        if resumed and not rt.adapter.capabilities.idempotent_create:
            # Never create blindly twice: look the earlier create's invoice up first.
            invoice = await self._lookup(rt, order)
            if invoice is not None:
                await self._invoice_ready(rt, order, invoice)
                return
        response = await self.transport(rt.name).send(built)
        invoice = rt.adapter.parse_create(order, response)
        await self._invoice_ready(rt, order, invoice)

    async def _lookup(self, rt: AdapterRuntime, order: Order) -> Invoice | None:
        if not rt.adapter.capabilities.lookup_by_reference:
            raise OutcomeUnknown(
                f"{rt.name} has no idempotency key and no lookup: an earlier create may exist"
            )
        response = await self.transport(rt.name).send(rt.adapter.build_lookup(order, rt.settings))
        return rt.adapter.parse_lookup(order, response, rt.settings)

    async def _invoice_ready(self, rt: AdapterRuntime, order: Order, invoice: Invoice) -> None:
        now = self.clock()
        deadline = order.expires_at
        if invoice.expires_at is not None:
            deadline = min(deadline, invoice.expires_at)
        await self._move(
            order,
            S.AWAITING_PAYMENT,
            detail={"psp_id": invoice.psp_id},
            psp_id=invoice.psp_id,
            pay_url=invoice.pay_url,
            expires_at=deadline,
            polls=0,
            last_error=None,
            next_run_at=next_poll(rt.policy.poll, 0, now, deadline),
        )

    # -- poll and finalize -----------------------------------------------------------------

    async def _status(self, rt: AdapterRuntime, order: Order) -> StatusReport:
        request = rt.adapter.build_status(order, rt.settings)
        response = await self.transport(rt.name).send(request)
        return rt.adapter.parse_status(order, response, rt.settings, "status")

    async def _poll(self, rt: AdapterRuntime, order: Order) -> None:
        report = await self._status(rt, order)
        if _held_for_capture(report):
            report = await self._capture_or_cancel(rt, order, report)
        now = self.clock()
        watch = {"late_watch": rt.policy.late_window, "first_watch": rt.policy.late_interval}
        decision = settle.decide(order, report, now=now, **watch)
        if decision is not None:
            await self._apply(order, decision)
            return
        if now >= order.expires_at:
            cancelled = await self._cancel_at_psp(rt, order, report)
            if cancelled is not None and cancelled.state in _MONEY_MOVED:
                # Paid between the final read and the cancel: the cancel's answer says so.
                decision = settle.decide(order, cancelled, now=now, **watch)
                if decision is not None:
                    await self._apply(order, decision)
                    return
            detail = {"psp_status": report.raw_status, "final_check": True}
            await self._apply(order, settle.leave(order, S.EXPIRED, detail, now=now, **watch))
            return
        await self._release(
            order,
            next_run_at=next_poll(rt.policy.poll, order.polls + 1, now, order.expires_at),
            polls=order.polls + 1,
            last_error=None,
        )

    async def _capture_or_cancel(
        self, rt: AdapterRuntime, order: Order, held: StatusReport
    ) -> StatusReport:
        """A payment held for capture: take our amount, or give the money back when the amount
        differs (never capture money we did not ask for). Returns the report to decide on."""
        if held.money is not None and held.money != order.money:
            await self._cancel_at_psp(rt, order, held)
            return held
        capture = rt.adapter.build_capture(order, rt.settings)
        response = await self.transport(rt.name).send(capture)
        return rt.adapter.parse_status(order, response, rt.settings, "capture")

    async def _cancel_at_psp(
        self, rt: AdapterRuntime, order: Order, report: StatusReport | None
    ) -> StatusReport | None:
        """Best effort, and only where the adapter says a cancel can succeed for ``report``: an
        invoice left open could still be paid, and the watch would see it.

        Returns the state the cancel's answer reports, None when no cancel was sent or its
        answer says nothing readable.
        """
        if not rt.adapter.can_cancel(order, report):
            return None
        try:
            request = rt.adapter.build_cancel(order, rt.settings)
            response = await self.transport(rt.name).send(request)
            return rt.adapter.parse_status(order, response, rt.settings, "cancel")
        except CredentialsRejected:
            raise
        except (TransientError, NotSupported, PermanentError) as exc:
            log.info("cancel at the payment system failed", error=str(exc))
            return None

    # -- late payments ---------------------------------------------------------------------

    async def _watch(self, rt: AdapterRuntime, order: Order) -> None:
        if order.psp_id is None:  # never reached the payment system: nothing to watch
            await self._release(order, next_run_at=None)
            return
        report = await self._status(rt, order)
        held = _held_for_capture(report)
        if held:  # paid late under two-step capture: the money waits for us
            report = await self._capture_or_cancel(rt, order, report)
        elif report.state is CanonicalState.PENDING and order.polls == 0:
            # e.g. cancelled by the site: close it at the payment system too
            report = await self._cancel_at_psp(rt, order, report) or report
        now = self.clock()
        mismatch = report.money is not None and report.money != order.money
        if report.state is CanonicalState.PAID or (held and mismatch):
            decision = settle.decide(order, report, now=now, late_watch=rt.policy.late_window)
            if decision is not None:
                await self._apply(order, decision)
            else:  # a late payment of another amount: logged; a person decides
                await self._release(
                    order,
                    next_run_at=None,
                    last_error=f"late payment of {report.money}, order is {order.money}",
                )
            return
        watch_until = order.expires_at + rt.policy.late_window
        # Look less and less often: a late payment is rare, and payment systems rate-limit.
        step = timedelta(
            seconds=ceiling(
                rt.policy.late_interval.total_seconds(),
                min(order.polls + 1, 20),
                cap=LATE_INTERVAL_CAP.total_seconds(),
            )
        )
        later = now + step
        await self._release(
            order,
            next_run_at=later if later < watch_until else None,
            polls=order.polls + 1,
        )

    # -- our credentials refused -----------------------------------------------------------

    async def _credentials_rejected(
        self, rt: AdapterRuntime, started: Order, exc: CredentialsRejected
    ) -> None:
        """Stop calling the payment system and keep the order as it was (no order is at fault).

        The breaker's trial call after ``BREAKER_RESET`` tells when the credentials work again.
        """
        breaker = self.transport(rt.name).breaker
        already_open = breaker.state is BreakerState.OPEN
        breaker.trip()
        metrics.CREDENTIALS_REJECTED.labels(rt.name).inc()
        if not already_open:
            log.error(
                "the payment system refused our credentials: calls stop until the breaker's "
                "trial call; check the adapter's credential settings",
                error=str(exc),
            )
        order = await self.orders.get(started.id)
        if order.lease_token != started.lease_token:  # ended, or claimed again meanwhile
            return
        later = self.clock() + timedelta(seconds=rt.policy.breaker_reset)
        if started.status is S.NEW and order.status is S.SUBMITTING:
            # The create was refused, so nothing exists: new again, the attempt not spent.
            await self._move(
                order, S.NEW, attempts=started.attempts, errors=order.errors, next_run_at=later
            )
        else:
            await self._release(order, next_run_at=later, errors=order.errors)

    # -- errors ----------------------------------------------------------------------------

    async def _retry_later(
        self, rt: AdapterRuntime, order: Order, action: Action, exc: Exception
    ) -> None:
        started = order
        order = await self.orders.get(order.id)  # the step may have moved it
        if order.lease_token != started.lease_token:  # ended, or claimed again meanwhile
            return
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        kind = (
            "malformed"
            if isinstance(exc, MalformedResponse)
            else "transient"
            if isinstance(exc, TransientError)
            else "permanent"
            if isinstance(exc, PermanentError)
            else "unknown"
            if isinstance(exc, OutcomeUnknown)
            else "bug"
        )
        metrics.STEP_ERRORS.labels(order.adapter, str(action), kind).inc()
        # An unavailable payment system fails every order sent to it: the transport warns once
        # per interval for all of them (dispatcher/worker/outage.py); each order's line is detail.
        unavailable = isinstance(exc, PspUnavailable | CircuitOpen)
        report = log.debug if unavailable else log.warning
        report("step failed", error=error, kind=kind, status=str(order.status))
        now = self.clock()
        if order.status is S.SUBMITTING:
            await self._submit_failed(rt, order, exc, error, now, fresh=started.status is S.NEW)
            return
        if kind == "bug":
            log.error("unexpected error in a step", exc_info=exc)
        # Back off by this order's consecutive errors (its polls say nothing about the payment
        # system's health), and come back by the deadline: a final check must not wait minutes.
        deadline = order.expires_at
        if order.status in LATE_PAYMENT_FROM:
            deadline += rt.policy.late_window
        await self._release(
            order,
            next_run_at=retry_at(order.errors, now, deadline),
            errors=order.errors + 1,
            last_error=error,
        )

    async def _submit_failed(
        self,
        rt: AdapterRuntime,
        order: Order,
        exc: Exception,
        error: str,
        now: datetime,
        *,
        fresh: bool,
    ) -> None:
        """``fresh``: this step began the submission (the order was ``new``); otherwise an
        earlier create may have reached the payment system, whatever this step's failure."""
        if isinstance(exc, OutcomeUnknown):
            await self._move(order, S.NEEDS_REVIEW, detail={"reason": error}, last_error=error)
            return
        if isinstance(exc, PermanentError):
            await self._move(order, S.FAILED, detail={"reason": error}, last_error=error)
            return
        # An open breaker sent nothing and is no fault of this order's: never its last attempt.
        exhausted = order.attempts >= rt.policy.submit_attempts and not isinstance(exc, CircuitOpen)
        not_sent = isinstance(exc, CircuitOpen) or (
            isinstance(exc, PspUnavailable) and not exc.maybe_sent
        )
        if exhausted:
            if rt.adapter.capabilities.idempotent_create or not_sent:
                await self._move(order, S.FAILED, detail={"reason": error}, last_error=error)
            else:
                await self._move(order, S.NEEDS_REVIEW, detail={"reason": error}, last_error=error)
            return
        # Past the deadline the next submit step expires the order without a call.
        later = retry_at(order.attempts, now, order.expires_at)
        errors = order.errors + 1
        # An open breaker is no attempt of this order's: it does not count towards giving up.
        refund = 1 if isinstance(exc, CircuitOpen) and fresh else 0
        if not_sent and fresh:
            # Nothing reached the payment system: the order is simply new again.
            await self._move(
                order,
                S.NEW,
                last_error=error,
                next_run_at=later,
                attempts=order.attempts - refund,
                errors=errors,
            )
        elif not_sent:
            # Nothing was sent this time, but an earlier create may have been: stay in
            # submitting, so the next try still reuses the key or looks the invoice up.
            await self._release(order, next_run_at=later, errors=errors, last_error=error)
        else:
            # The create may have been accepted: stay in submitting, so the next try uses the
            # same idempotency key (or looks the invoice up first).
            await self._release(
                order,
                next_run_at=later,
                attempts=order.attempts + 1,
                errors=errors,
                last_error=error,
            )

    # -- writing a step's end -----------------------------------------------------------------

    async def _move(
        self,
        order: Order,
        to: OrderStatus,
        *,
        detail: Mapping[str, Any] | None = None,
        keep_lease: bool = False,
        **changes: Any,
    ) -> Order:
        """One compare-and-set transition on the step's lease (:func:`dispatcher.settle.apply`):
        written together with other steps' in one statement, except ``paid`` with a billing
        hook, whose transaction (update, event, hook) is its own. A step that ends here ended
        well unless it says otherwise: its consecutive errors go back to 0."""
        changes.setdefault("errors", 0)
        decision = Decision(to, dict(detail or {}), changes)
        return await settle.apply(
            self.orders, order, decision, actor="worker", hook=self.paid_hook, keep_lease=keep_lease
        )

    async def _apply(self, order: Order, decision: Decision) -> Order:
        return await self._move(order, decision.to, detail=decision.detail, **decision.changes)

    async def _release(self, order: Order, *, next_run_at: datetime | None, **changes: Any) -> None:
        """Give the lease back, due again at ``next_run_at`` (coalesced like transitions); the
        consecutive errors go back to 0 unless given."""
        changes.setdefault("errors", 0)
        await self.orders.write(Write.release(order, next_run_at=next_run_at, **changes))
