"""The steps of money going out (issue #14): one async step per claimed refund or payout.

They run on the engine's loop, through the engine's transports (one breaker, token, rate limit
and set of metrics per payment system, shared with the orders' steps), like the orders' steps: a
step loads the transfer, checks it still holds the sweeper's lease, calls the payment system with
no transaction open, and ends with one compare-and-set write (:meth:`Transfers.write`).

- ``requested`` -> ``submitting`` (the lease kept) -> the request is sent with our id as the
  idempotency key. Its answer makes it ``pending`` or final; a definite refusal
  (:class:`PspRejected`, or a request that cannot be built) makes it ``failed`` with the reason;
  a failure that surely sent nothing makes it ``requested`` again.
- A send that may have reached the payment system (a timeout after connecting, a 5xx, a lost
  answer) leaves it in ``submitting``. The next attempt: with an idempotent refund (payout) the
  same request is sent again, same key, and the payment system answers the one it made; else,
  with ``refund_lookup``, the refund's status is read by our id; else it goes to
  ``needs_review``: a person decides, nothing is ever sent twice. Past ``submit_attempts`` such a
  transfer goes to ``needs_review`` too (it may have been sent: never ``failed``).
- ``pending`` -> its status read with backoff (the adapter's poll schedule) until final.

A refund first reads its payment's status (the adapter may need the payment system's payment id,
and the read shows what is refunded already). Every final state is counted in
``paydispatch_refunds_total{adapter,origin,status}`` (payouts in ``paydispatch_payouts_total``).

A refund check (:meth:`TransferSteps.check_refunds`, the ``refund_check`` step) reads a paid
order's payment status, with our own credentials, after a hint nobody signed: what it shows
refunded beyond what the order's refunds account for is recorded once as a refund the payment
system reported (origin ``psp``), a chargeback counted and alerted. The hint's content is never
used, so a forged one costs one status read and records nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from adapters.base import (
    CredentialsRejected,
    PayoutReport,
    PayoutRequest,
    PayoutState,
    PspRejected,
    RefundReport,
    RefundRequest,
    RefundState,
)
from dispatcher import metrics
from dispatcher.policy import next_poll, retry_delay
from dispatcher.runtime import AdapterRuntime
from dispatcher.worker.transport import CircuitOpen, PspUnavailable
from orders.errors import (
    InvalidInput,
    OrderNotFound,
    OutcomeUnknown,
    PermanentError,
    RefundRefused,
    StaleOrder,
    TransientError,
)
from orders.model import Order, Transfer, TransferKind, TransferStatus
from orders.status import OrderStatus
from orders.transfers import Transfers, unaccounted_refund

if TYPE_CHECKING:
    from dispatcher.worker.engine import Engine

log = structlog.get_logger(__name__)
TS = TransferStatus
MAX_ERROR = 500
# A transfer has no deadline; its reads back off up to the adapter's poll cap, and a failed
# step's retry up to this.
RETRY_CAP = 300.0
_FAR = timedelta(days=3650)

Report = RefundReport | PayoutReport
_SUCCEEDED = frozenset({RefundState.SUCCEEDED, PayoutState.SUCCEEDED})
_FAILED = frozenset({RefundState.FAILED, PayoutState.FAILED})


def utcnow() -> datetime:
    return datetime.now(UTC)


def count(transfer: Transfer) -> None:
    """Count a transfer that reached a final state (or needs_review) in its metric."""
    if transfer.kind is TransferKind.REFUND:
        metrics.REFUNDS.labels(transfer.adapter, transfer.origin, str(transfer.status)).inc()
    else:
        metrics.PAYOUTS.labels(transfer.adapter, str(transfer.status)).inc()


class TransferSteps:
    """Runs transfer steps on the engine's loop, with its runtimes and transports."""

    def __init__(
        self,
        engine: Engine,
        transfers: Transfers,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.transfers = transfers
        self.clock = clock

    # -- entry point ---------------------------------------------------------------------

    async def run(self, transfer_id: UUID, token: UUID) -> None:
        """One step for one transfer. Never raises for anything a transfer or a PSP can do."""
        structlog.contextvars.bind_contextvars(transfer_id=str(transfer_id), action="transfer")
        try:
            try:
                transfer = await self.transfers.get(transfer_id)
            except OrderNotFound:
                log.warning("step for an unknown transfer dropped")
                return
            if transfer.lease_token != token:
                log.debug("lease moved on; message dropped", status=str(transfer.status))
                return
            rt = self.engine.runtimes.get(transfer.adapter)
            if rt is None:
                log.error("adapter not enabled in this worker", adapter=transfer.adapter)
                return
            structlog.contextvars.bind_contextvars(adapter=transfer.adapter)
            try:
                await self._dispatch(rt, transfer)
            except StaleOrder as exc:
                log.info("transfer moved under us", detail=str(exc))
            except CredentialsRejected as exc:
                await self._credentials_rejected(rt, transfer, exc)
            except Exception as exc:
                await self._retry_later(rt, transfer, exc)
        except TransientError as exc:
            log.warning("step abandoned; the lease will bring the transfer back", error=str(exc))
        except Exception:
            log.exception("step crashed; the lease will bring the transfer back")
        finally:
            structlog.contextvars.unbind_contextvars("transfer_id", "action", "adapter")

    async def _dispatch(self, rt: AdapterRuntime, transfer: Transfer) -> None:
        if transfer.status in {TS.REQUESTED, TS.SUBMITTING}:
            await self._submit(rt, transfer)
        elif transfer.status is TS.PENDING:
            await self._read(rt, transfer)
        else:
            await self.transfers.write(transfer, None, next_run_at=None)

    # -- refund checks -----------------------------------------------------------------------

    async def check_refunds(self, order_id: UUID) -> None:
        """One refund check of a paid order. Never raises: a failed read leaves the check due,
        and the sweeper brings it back when its lease ends; anything else ends it (the next
        hint makes another)."""
        structlog.contextvars.bind_contextvars(order_id=str(order_id), action="refund_check")
        try:
            try:
                order = await self.engine.orders.get(order_id)
            except OrderNotFound:
                log.warning("refund check for an unknown order dropped")
                return
            rt = self.engine.runtimes.get(order.adapter)
            if rt is None:
                log.error("adapter not enabled in this worker", adapter=order.adapter)
                return
            structlog.contextvars.bind_contextvars(adapter=order.adapter)
            try:
                await self._check_refunds(rt, order)
            except (TransientError, OutcomeUnknown) as exc:
                if isinstance(exc, CredentialsRejected):
                    self.engine.transport(rt.name).breaker.trip()
                    metrics.CREDENTIALS_REJECTED.labels(rt.name).inc()
                kind = "unknown" if isinstance(exc, OutcomeUnknown) else "transient"
                metrics.STEP_ERRORS.labels(rt.name, "refund_check", kind).inc()
                log.warning("refund check failed; read again when its lease ends", error=str(exc))
            except Exception as exc:
                metrics.STEP_ERRORS.labels(rt.name, "refund_check", "permanent").inc()
                log.error("refund check ended unread", error=str(exc), exc_info=exc)
                await self.transfers.refund_checked(order.id)
        except Exception:
            log.exception("refund check crashed; its lease will bring it back")
        finally:
            structlog.contextvars.unbind_contextvars("order_id", "action", "adapter")

    async def _check_refunds(self, rt: AdapterRuntime, order: Order) -> None:
        if order.status is not OrderStatus.PAID or order.psp_id is None:
            await self.transfers.refund_checked(order.id)
            return
        request = rt.adapter.build_status(order, rt.settings)
        response = await self.engine.transport(rt.name).send(request)
        report = rt.adapter.parse_status(order, response, rt.settings, "status")
        if report.psp_id not in (None, order.psp_id):
            log.error("refund check read another payment", psp_id=report.psp_id)
            await self.transfers.refund_checked(order.id)
            return
        await self._remember_payment(order, report.psp_payment_id)
        # What our refunds account for now (one may have settled during the read).
        current = await self.engine.orders.get(order.id)
        refund = unaccounted_refund(current, report.refunded, chargeback=report.chargeback)
        if refund is not None:
            # A refunded total is a refund, disputed or not: only a chargeback without one is.
            reason = (
                "chargeback"
                if refund.raw_status == "chargeback"
                else "refunded at the payment system"
            )
            try:
                recorded = await self.transfers.record_reported_refund(
                    current, refund, actor=f"refund_check:{rt.name}", reason=reason
                )
            except RefundRefused as exc:  # the payment system and we disagree: a person looks
                log.error("reported refund not recorded", error=str(exc))
                metrics.REPORTED_REFUNDS_REFUSED.labels(rt.name).inc()
            else:
                if recorded is not None:
                    metrics.REFUNDS.labels(rt.name, "psp", "succeeded").inc()
                    if recorded.chargeback:
                        metrics.CHARGEBACKS.labels(rt.name).inc()
                        log.error("chargeback", amount=str(recorded.money))
                    log.info("refund at the payment system recorded", amount=str(recorded.money))
        await self.transfers.refund_checked(order.id)

    async def _remember_payment(self, order: Order, psp_payment_id: str | None) -> None:
        """An order paid before its payment id was stored (before migration 0013, or by a
        person's resolution) gets the one this read showed: the payment system's reports by it
        (Stripe's charge and dispute events) name the order from now on."""
        if order.psp_payment_id is None and await self.transfers.remember_payment(
            order, psp_payment_id
        ):
            log.info("payment id stored", psp_payment_id=psp_payment_id)

    # -- submit ----------------------------------------------------------------------------

    def _idempotent(self, rt: AdapterRuntime, transfer: Transfer) -> bool:
        caps = rt.adapter.capabilities
        return (
            caps.idempotent_refund
            if transfer.kind is TransferKind.REFUND
            else caps.idempotent_payout
        )

    def _lookup(self, rt: AdapterRuntime, transfer: Transfer) -> bool:
        return transfer.kind is TransferKind.REFUND and rt.adapter.capabilities.refund_lookup

    async def _submit(self, rt: AdapterRuntime, transfer: Transfer) -> None:
        resumed = transfer.status is TS.SUBMITTING
        if resumed and not self._idempotent(rt, transfer) and not self._lookup(rt, transfer):
            # It may have been sent; sending again could give the money out twice, and the
            # payment system cannot be asked by our id: only a person can tell.
            await self._review(transfer, "may have been sent; no idempotency key and no lookup")
            return
        try:
            sends = not resumed or self._idempotent(rt, transfer)  # else only a read by our id
            request = await self._request(rt, transfer, read_payment=sends)
        except (InvalidInput, OrderNotFound) as exc:  # nothing can be sent for it
            if resumed:
                await self._review(transfer, f"cannot be built again: {exc}")
            else:
                await self._final(transfer, TS.FAILED, reason=str(exc))
            return
        if not resumed:
            # The lease kept, and due again when it ends (as claimed): a worker that dies in
            # the send leaves it submitting, and the sweeper must bring it back.
            transfer = await self.transfers.write(
                transfer,
                TS.SUBMITTING,
                keep_lease=True,
                next_run_at=transfer.next_run_at,
                attempts=transfer.attempts + 1,
            )
        else:  # one more attempt, the lease kept (due again when it ends, as claimed)
            transfer = await self.transfers.write(
                transfer,
                None,
                keep_lease=True,
                next_run_at=transfer.next_run_at,
                attempts=transfer.attempts + 1,
            )
            if not self._idempotent(rt, transfer):
                # Without an idempotency key it is never sent again: read it by our id.
                await self._settle(rt, transfer, await self._status(rt, transfer, request))
                return
        transport = self.engine.transport(rt.name)
        report: Report
        if isinstance(request, RefundRequest):
            response = await transport.send(rt.adapter.build_refund(request, rt.settings))
            report = rt.adapter.parse_refund(request, response, rt.settings)
        else:
            response = await transport.send(rt.adapter.build_payout(request, rt.settings))
            report = rt.adapter.parse_payout(request, response, rt.settings)
        await self._settle(rt, transfer, report)

    async def _request(
        self, rt: AdapterRuntime, transfer: Transfer, *, read_payment: bool = True
    ) -> RefundRequest | PayoutRequest:
        """The adapter's request for ``transfer``; a refund's reads its payment's status first
        (``read_payment``: before a send, not before each read of a pending refund)."""
        if transfer.kind is TransferKind.PAYOUT:
            return PayoutRequest(
                id=transfer.id,
                money=transfer.money,
                destination={str(k): str(v) for k, v in (transfer.destination or {}).items()},
                description=transfer.reason,
                psp_payout_id=transfer.psp_transfer_id,
            )
        assert transfer.order_id is not None
        order = await self.engine.orders.get(transfer.order_id)
        psp_payment_id = None
        if read_payment and order.psp_id is not None:
            # The payment's own id where the payment system's refunds name it (and a read of
            # what is refunded already); a failure here sent nothing.
            status = rt.adapter.build_status(order, rt.settings)
            response = await self.engine.transport(rt.name).send(status)
            psp_payment_id = rt.adapter.parse_status(
                order, response, rt.settings, "status"
            ).psp_payment_id
            await self._remember_payment(order, psp_payment_id)
        return RefundRequest(
            id=transfer.id,
            order=order,
            money=transfer.money,
            reason=transfer.reason,
            psp_refund_id=transfer.psp_transfer_id,
            psp_payment_id=psp_payment_id,
        )

    # -- read ------------------------------------------------------------------------------

    async def _status(
        self, rt: AdapterRuntime, transfer: Transfer, request: RefundRequest | PayoutRequest
    ) -> Report:
        transport = self.engine.transport(rt.name)
        if isinstance(request, RefundRequest):
            response = await transport.send(rt.adapter.build_refund_status(request, rt.settings))
            return rt.adapter.parse_refund_status(request, response, rt.settings)
        response = await transport.send(rt.adapter.build_payout_status(request, rt.settings))
        return rt.adapter.parse_payout_status(request, response, rt.settings)

    async def _read(self, rt: AdapterRuntime, transfer: Transfer) -> None:
        request = await self._request(rt, transfer, read_payment=False)
        await self._settle(rt, transfer, await self._status(rt, transfer, request))

    # -- ends ------------------------------------------------------------------------------

    async def _settle(self, rt: AdapterRuntime, transfer: Transfer, report: Report) -> None:
        """Write what a report says: final, or pending (read again with backoff).

        A report of another amount than ours goes to a person, never to ``succeeded``: the
        wallet would be reversed by our amount while another left (as orders do on a mismatch).
        """
        mismatch = report.money is not None and report.money != transfer.money
        if mismatch and report.state not in _FAILED:
            reported = f"payment system reported {report.money}, {transfer.kind} is "
            await self._review(transfer, reported + str(transfer.money))
            return
        psp_id = report.psp_refund_id if isinstance(report, RefundReport) else report.psp_payout_id
        changes: dict[str, Any] = {"errors": 0, "last_error": None}
        if psp_id:
            changes["psp_transfer_id"] = psp_id
        detail = {"psp_status": report.raw_status, "psp_id": psp_id}
        if report.state in _SUCCEEDED:
            await self._final(transfer, TS.SUCCEEDED, detail=detail, **changes)
        elif report.state in _FAILED:
            changes["last_error"] = (report.reason or report.raw_status or "failed")[:MAX_ERROR]
            await self._final(transfer, TS.FAILED, detail=detail, **changes)
        else:
            # ``attempts`` counts the sends and then the reads: the reads back off from there.
            pending = transfer.status is TS.PENDING
            later = next_poll(rt.policy.poll, transfer.attempts, self.clock(), self.clock() + _FAR)
            changes["attempts"] = transfer.attempts + 1 if pending else transfer.attempts
            await self.transfers.write(
                transfer,
                None if pending else TS.PENDING,
                detail=None if pending else detail,
                next_run_at=later,
                **changes,
            )

    async def _final(
        self,
        transfer: Transfer,
        to: TransferStatus,
        *,
        reason: str = "",
        detail: dict[str, Any] | None = None,
        **changes: Any,
    ) -> None:
        if reason:
            changes["last_error"] = reason[:MAX_ERROR]
            detail = {**(detail or {}), "reason": reason[:MAX_ERROR]}
        written = await self.transfers.write(transfer, to, detail=detail, **changes)
        count(written)
        log.info("transfer settled", status=str(to), kind=str(written.kind))

    async def _review(self, transfer: Transfer, reason: str) -> None:
        """May have been sent, and nothing can tell: a person decides (the alert finds it)."""
        written = await self.transfers.write(
            transfer,
            TS.NEEDS_REVIEW,
            detail={"reason": reason[:MAX_ERROR]},
            last_error=reason[:MAX_ERROR],
        )
        count(written)
        log.error("transfer needs review", reason=reason, kind=str(written.kind))

    # -- errors ----------------------------------------------------------------------------

    async def _credentials_rejected(
        self, rt: AdapterRuntime, started: Transfer, exc: CredentialsRejected
    ) -> None:
        """As the orders' steps: the breaker opens, the transfer is kept as it was."""
        self.engine.transport(rt.name).breaker.trip()
        metrics.CREDENTIALS_REJECTED.labels(rt.name).inc()
        log.error("the payment system refused our credentials", error=str(exc))
        transfer = await self.transfers.get(started.id)
        if transfer.lease_token != started.lease_token:
            return
        later = self.clock() + timedelta(seconds=rt.policy.breaker_reset)
        if started.status is TS.REQUESTED and transfer.status is TS.SUBMITTING:
            await self.transfers.write(
                transfer, TS.REQUESTED, next_run_at=later, attempts=started.attempts
            )
        else:
            await self.transfers.write(transfer, None, next_run_at=later)

    async def _retry_later(self, rt: AdapterRuntime, started: Transfer, exc: Exception) -> None:
        transfer = await self.transfers.get(started.id)  # the step may have moved it
        if transfer.lease_token != started.lease_token:
            return
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        kind = (
            "transient"
            if isinstance(exc, TransientError)
            else "permanent"
            if isinstance(exc, PermanentError)
            else "unknown"
            if isinstance(exc, OutcomeUnknown)
            else "bug"
        )
        metrics.STEP_ERRORS.labels(transfer.adapter, "transfer", kind).inc()
        if kind == "bug":
            log.error("unexpected error in a transfer step", exc_info=exc)
        else:
            log.warning("transfer step failed", error=error, kind=kind, status=str(transfer.status))
        later = self.clock() + retry_delay(transfer.errors, cap=RETRY_CAP)
        errors = transfer.errors + 1
        if transfer.status is TS.SUBMITTING:
            fresh = started.status is TS.REQUESTED
            not_sent = isinstance(exc, CircuitOpen) or (
                isinstance(exc, PspUnavailable) and not exc.maybe_sent
            )
            if isinstance(exc, PspRejected) or (isinstance(exc, PermanentError) and fresh):
                # A definite no to this request: nothing was given out.
                await self._final(transfer, TS.FAILED, reason=error, errors=errors)
            elif isinstance(exc, OutcomeUnknown | PermanentError):
                await self._review(transfer, error)
            elif not_sent and fresh:
                # Nothing reached the payment system: requested again, the attempt not spent.
                await self.transfers.write(
                    transfer,
                    TS.REQUESTED,
                    next_run_at=later,
                    attempts=started.attempts,
                    errors=errors,
                    last_error=error,
                )
            elif transfer.attempts >= rt.policy.submit_attempts:
                await self._review(transfer, f"gave up after {transfer.attempts} attempts: {error}")
            else:
                await self.transfers.write(
                    transfer, None, next_run_at=later, errors=errors, last_error=error
                )
            return
        # requested (nothing sent yet: the payment's status read failed) or pending (a read).
        await self.transfers.write(
            transfer, None, next_run_at=later, errors=errors, last_error=error
        )
