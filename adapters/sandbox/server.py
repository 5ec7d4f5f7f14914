"""The sandbox payment system's HTTP face: merchant API, pay pages, control API (Starlette).

    /api/v1/invoices ...          merchant API, ``Authorization: Bearer <api key>``, faults apply
    /api/v1/refunds, /payouts ... refunds and payouts (issue #14), the same way
    /pay/{id} ...                 the pay page a person or a browser clicks
    /payouts/{id} ...             the payout page that completes or fails a payout
    /_control/ ...                unauthenticated local tool: faults, late payments, stats, reset
    /healthz                      liveness

Run it with :func:`adapters.sandbox.runner.serve`, or in a test with
:func:`adapters.sandbox.runner.running_sandbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from adapters.sandbox import pages
from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.control_index import control_index
from adapters.sandbox.faults import (
    Fault,
    FaultKind,
    MalformedStyle,
    Operation,
    OperationFaults,
    WebhookFaults,
)
from adapters.sandbox.money_out import TransferBook, TransferRequest
from adapters.sandbox.protocol import API_PREFIX, IDEMPOTENCY_HEADER, TransferStatus
from adapters.sandbox.service import SandboxService
from adapters.sandbox.store import InvoiceRequest, Move, SandboxApiError

_GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
    b"</center><hr><center>nginx</center></body></html>"
)


@dataclass(slots=True)
class _Result:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _error(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code, headers=headers)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise SandboxApiError(400, "invalid_json", "the body is not valid JSON") from None


def _shift_amounts(body: dict[str, Any], delta: int) -> dict[str, Any]:
    """The body with every reported invoice amount off by ``delta`` (amount_mismatch fault)."""
    shifted = dict(body)
    if isinstance(shifted.get("amount"), int):
        shifted["amount"] += delta
    if isinstance(shifted.get("invoice"), dict):
        shifted["invoice"] = _shift_amounts(shifted["invoice"], delta)
    if isinstance(shifted.get("items"), list):
        shifted["items"] = [_shift_amounts(item, delta) for item in shifted["items"]]
    return shifted


# Reconciliation (issue #16): the most invoices one page of the list holds.
LIST_LIMIT = 100


def _query_time(value: str | None) -> datetime | None:
    """An ISO 8601 time with a UTC offset from a query parameter; None when absent."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SandboxApiError(400, "invalid_field", f"{value[:40]!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise SandboxApiError(400, "invalid_field", f"{value[:40]!r} has no UTC offset")
    return parsed


# The control API pays even past the deadline or after a refusal: a late payment.
_CONTROL_MOVES = {"pay": Move.LATE_PAY, "decline": Move.DECLINE, "refund": Move.REFUND}
# How the control API (and the payout page) settles a pending refund or payout.
_SETTLE_OUTCOMES = {"succeed": TransferStatus.SUCCEEDED, "fail": TransferStatus.FAILED}


def _idempotency_key(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER, "")
    if not key.strip() or len(key) > 255:
        raise SandboxApiError(
            400, "missing_idempotency_key", f"send an {IDEMPOTENCY_HEADER} header (1-255)"
        )
    return key


class _Routes:
    """The request handlers, bound to one service."""

    def __init__(self, service: SandboxService) -> None:
        self.service = service
        self._auth = f"Bearer {service.config.api_key}".encode()

    # -- merchant API -------------------------------------------------------------------------

    async def _api(
        self, request: Request, operation: Operation, handler: Callable[[], Awaitable[_Result]]
    ) -> Response:
        """Authenticate, count, inject this operation's next fault around ``handler``."""
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._auth):
            return _error(
                401,
                "unauthorized",
                "send Authorization: Bearer <api key>",
                headers={"WWW-Authenticate": 'Bearer realm="sandbox"'},
            )
        self.service.calls[operation] += 1
        fault = self.service.faults.draw(operation)
        if fault is not None:
            refusal = await self._before(fault)
            if refusal is not None:
                return refusal
        try:
            result = await handler()
        except SandboxApiError as exc:
            result = _Result(exc.status_code, exc.to_json())
        if fault is not None:
            return await self._after(fault, result)
        return JSONResponse(result.body, result.status_code, headers=result.headers)

    async def _before(self, fault: Fault) -> Response | None:
        """Faults that strike before the operation; None lets the operation run."""
        if fault.kind is FaultKind.LATENCY:
            await asyncio.sleep(fault.ms / 1000)
        elif fault.kind is FaultKind.HTTP_500:
            return _error(500, "internal_error", "injected fault: internal server error")
        elif fault.kind is FaultKind.HTTP_429:
            return _error(
                429,
                "rate_limited",
                "injected fault: too many requests",
                headers={"Retry-After": str(fault.retry_after)},
            )
        elif fault.kind is FaultKind.TIMEOUT:
            await self.service.hold(fault.seconds)
            return _error(504, "timeout", "injected fault: held until the client gave up")
        elif fault.kind is FaultKind.REFUSE:
            return _error(422, "refused", "injected fault: the payment system refuses")
        return None

    async def _after(self, fault: Fault, result: _Result) -> Response:
        """Faults that strike after the operation took effect: the answer is lost or wrong."""
        if fault.kind is FaultKind.ACCEPT_THEN_TIMEOUT:
            await self.service.hold(fault.seconds)
            return _error(
                504, "timeout", "injected fault: done, then held until the client gave up"
            )
        if fault.kind is FaultKind.AMOUNT_MISMATCH:
            result.body = _shift_amounts(result.body, fault.delta)
        elif fault.kind is FaultKind.MALFORMED:
            if fault.style is MalformedStyle.HTML:
                return HTMLResponse(_GATEWAY_PAGE, 200)
            encoded = json.dumps(result.body).encode()
            return Response(encoded[: len(encoded) // 2], 200, media_type="application/json")
        return JSONResponse(result.body, result.status_code, headers=result.headers)

    async def create_invoice(self, request: Request) -> Response:
        async def handle() -> _Result:
            key = _idempotency_key(request)
            invoice_request = InvoiceRequest.parse(
                await _json_body(request), self.service.config.currencies
            )
            base = self.service.config.public_url or str(request.base_url)
            outcome = self.service.create(key, invoice_request, base)
            body = outcome.record.to_json(self.service.now())
            return _Result(201 if outcome.changed else 200, body)

        return await self._api(request, Operation.CREATE, handle)

    async def get_invoice(self, request: Request) -> Response:
        async def handle() -> _Result:
            record = self.service.store.get(request.path_params["invoice_id"])
            return _Result(200, record.to_json(self.service.now()))

        return await self._api(request, Operation.STATUS, handle)

    async def find_invoices(self, request: Request) -> Response:
        async def handle() -> _Result:
            number_text = request.query_params.get("number", "")
            if not (number_text.isascii() and number_text.isdigit()):
                raise SandboxApiError(
                    400, "invalid_field", "number: give ?number=<our order number>"
                )
            now = self.service.now()
            records = self.service.store.find(int(number_text))
            return _Result(200, {"items": [r.to_json(now) for r in records]})

        return await self._api(request, Operation.LOOKUP, handle)

    # -- Reconciliation (issue #16): the payment list ---------------------------------------

    async def get_invoices(self, request: Request) -> Response:
        """``?number=N`` looks invoices up by our order number; otherwise lists them."""
        if "number" in request.query_params:
            return await self.find_invoices(request)
        return await self.list_invoices(request)

    async def list_invoices(self, request: Request) -> Response:
        """Invoices created in ``[created_gte, created_lt)`` (ISO 8601), oldest first, ``limit``
        (1-100, default 100) a page; ``starting_after`` is the previous page's ``next_cursor``."""

        async def handle() -> _Result:
            query = request.query_params
            since = _query_time(query.get("created_gte"))
            until = _query_time(query.get("created_lt"))
            limit_text = query.get("limit", str(LIST_LIMIT))
            if not (limit_text.isascii() and limit_text.isdigit()) or not (
                1 <= int(limit_text) <= LIST_LIMIT
            ):
                raise SandboxApiError(400, "invalid_field", f"limit: 1 to {LIST_LIMIT}")
            records, more = self.service.store.created_between(
                since, until, query.get("starting_after"), int(limit_text)
            )
            now = self.service.now()
            cursor = records[-1].id if more and records else None
            return _Result(200, {"items": [r.to_json(now) for r in records], "next_cursor": cursor})

        return await self._api(request, Operation.LIST, handle)

    async def cancel_invoice(self, request: Request) -> Response:
        async def handle() -> _Result:
            outcome = self.service.move(request.path_params["invoice_id"], Move.CANCEL)
            return _Result(200, outcome.record.to_json(self.service.now()))

        return await self._api(request, Operation.CANCEL, handle)

    # -- refunds and payouts (issue #14) ------------------------------------------------------

    async def create_refund(self, request: Request) -> Response:
        async def handle() -> _Result:
            key = _idempotency_key(request)
            body = TransferRequest.parse_refund(await _json_body(request))
            outcome = self.service.create_refund(key, body)
            return _Result(201 if outcome.changed else 200, outcome.record.to_json())

        return await self._api(request, Operation.REFUND, handle)

    async def create_payout(self, request: Request) -> Response:
        async def handle() -> _Result:
            key = _idempotency_key(request)
            body = TransferRequest.parse_payout(
                await _json_body(request), self.service.config.currencies
            )
            base = self.service.config.public_url or str(request.base_url)
            outcome = self.service.create_payout(key, body, base)
            return _Result(201 if outcome.changed else 200, outcome.record.to_json())

        return await self._api(request, Operation.PAYOUT, handle)

    async def get_refund(self, request: Request) -> Response:
        return await self._get_transfer(request, self.service.refunds, Operation.REFUND_STATUS)

    async def get_payout(self, request: Request) -> Response:
        return await self._get_transfer(request, self.service.payouts, Operation.PAYOUT_STATUS)

    async def find_refunds(self, request: Request) -> Response:
        return await self._find_transfers(request, self.service.refunds, Operation.REFUND_STATUS)

    async def find_payouts(self, request: Request) -> Response:
        return await self._find_transfers(request, self.service.payouts, Operation.PAYOUT_STATUS)

    async def _get_transfer(
        self, request: Request, book: TransferBook, operation: Operation
    ) -> Response:
        async def handle() -> _Result:
            return _Result(200, book.get(request.path_params["record_id"]).to_json())

        return await self._api(request, operation, handle)

    async def _find_transfers(
        self, request: Request, book: TransferBook, operation: Operation
    ) -> Response:
        """``?reference=<the merchant's id>``: the records made for it, oldest first."""

        async def handle() -> _Result:
            reference = request.query_params.get("reference", "")
            if not reference:
                raise SandboxApiError(400, "invalid_field", "reference: give ?reference=<id>")
            return _Result(200, {"items": [r.to_json() for r in book.find(reference)]})

        return await self._api(request, operation, handle)

    async def payout_page(self, request: Request) -> Response:
        payout_id = request.path_params["record_id"]
        try:
            record = self.service.payouts.get(payout_id)
        except SandboxApiError:
            return HTMLResponse(pages.not_found_page(payout_id), 404)
        return HTMLResponse(pages.payout_page(record))

    async def complete_payout(self, request: Request) -> Response:
        return self._settle_on_page(request, TransferStatus.SUCCEEDED)

    async def fail_payout(self, request: Request) -> Response:
        return self._settle_on_page(request, TransferStatus.FAILED)

    def _settle_on_page(self, request: Request, status: TransferStatus) -> Response:
        payout_id = request.path_params["record_id"]
        reason = None if status is TransferStatus.SUCCEEDED else "failed on the payout page"
        try:
            record = self.service.settle(self.service.payouts, payout_id, status, reason).record
        except SandboxApiError as exc:
            if exc.status_code == 404:
                return HTMLResponse(pages.not_found_page(payout_id), 404)
            return HTMLResponse(pages.payout_page(self.service.payouts.get(payout_id)), 409)
        return HTMLResponse(pages.payout_page(record))

    # -- pay page -----------------------------------------------------------------------------

    async def pay_page(self, request: Request) -> Response:
        invoice_id = request.path_params["invoice_id"]
        try:
            record = self.service.store.get(invoice_id)
        except SandboxApiError:
            return HTMLResponse(pages.not_found_page(invoice_id), 404)
        return HTMLResponse(pages.pay_page(record, record.status_at(self.service.now())))

    async def pay(self, request: Request) -> Response:
        return self._click(request, Move.PAY)

    async def decline(self, request: Request) -> Response:
        return self._click(request, Move.DECLINE)

    def _click(self, request: Request, move: Move) -> Response:
        invoice_id = request.path_params["invoice_id"]
        service = self.service
        try:
            outcome = service.move(invoice_id, move)
        except SandboxApiError as exc:
            if exc.status_code == 404:
                return HTMLResponse(pages.not_found_page(invoice_id), 404)
            record = service.store.get(invoice_id)
            return HTMLResponse(pages.refusal_page(record, record.status_at(service.now())), 409)
        record = outcome.record
        if record.request.return_url:
            return RedirectResponse(record.request.return_url, 303)
        return HTMLResponse(pages.result_page(record, record.status_at(service.now())))

    # -- control API --------------------------------------------------------------------------
    # Each handler's first docstring paragraph is its line in the GET /_control/ listing.

    async def control_index(self, request: Request) -> Response:
        """This listing: every control route, fault kind and webhook switch."""
        choices = {
            "action": list(_CONTROL_MOVES),
            "outcome": list(_SETTLE_OUTCOMES),
            "operation": [o.value for o in Operation],
        }
        hang = self.service.config.hang_seconds
        return JSONResponse(control_index(request.app.routes, choices, hang))

    async def control_move(self, request: Request) -> Response:
        """Pay (also late: past the deadline or after a refusal), decline or refund an invoice,
        as the buyer or the payment system would."""
        move = _CONTROL_MOVES.get(request.path_params["action"])
        if move is None:
            known = ", ".join(_CONTROL_MOVES)
            return _error(404, "not_found", f"unknown action; use one of {known}")
        try:
            outcome = self.service.move(request.path_params["invoice_id"], move)
        except SandboxApiError as exc:
            return JSONResponse(exc.to_json(), exc.status_code)
        return JSONResponse(outcome.record.to_json(self.service.now()))

    async def control_refund(self, request: Request) -> Response:
        """Settle a pending refund: `outcome` succeed or fail ({"reason": ...} optional), as the
        payment system would; a succeeded refund counts against its invoice."""
        return await self._control_settle(request, self.service.refunds)

    async def control_payout(self, request: Request) -> Response:
        """Settle a pending payout: `outcome` succeed or fail ({"reason": ...} optional), as
        the payout page's buttons do."""
        return await self._control_settle(request, self.service.payouts)

    async def _control_settle(self, request: Request, book: TransferBook) -> Response:
        status = _SETTLE_OUTCOMES.get(request.path_params["outcome"])
        if status is None:
            known = ", ".join(_SETTLE_OUTCOMES)
            return _error(404, "not_found", f"unknown outcome; use one of {known}")
        reason = None
        raw = await request.body()
        try:
            if raw.strip():
                body = json.loads(raw)
                reason = body.get("reason") if isinstance(body, dict) else None
            reason = (
                str(reason or "failed by the control API")
                if status is TransferStatus.FAILED
                else None
            )
            outcome = self.service.settle(book, request.path_params["record_id"], status, reason)
        except ValueError:
            return _error(400, "invalid_json", "the body is not valid JSON")
        except SandboxApiError as exc:
            return JSONResponse(exc.to_json(), exc.status_code)
        return JSONResponse(outcome.record.to_json())

    async def get_faults(self, request: Request) -> Response:
        """The faults pending: each operation's queue, rate and choices, and webhook faults."""
        return JSONResponse(self.service.faults.describe())

    async def add_faults(self, request: Request) -> Response:
        """Add faults to an operation: {queue: [fault, ...], rate: 0..1, choices: [fault, ...]};
        the queue is served first, one fault per call, then `rate` of the calls get a choice."""
        try:
            operation = Operation(request.path_params["operation"])
            faults = OperationFaults.from_json(await _json_body(request))
        except SandboxApiError as exc:
            return JSONResponse(exc.to_json(), exc.status_code)
        except ValueError as exc:
            return _error(400, "invalid_faults", str(exc))
        self.service.faults.add(operation, faults)
        return JSONResponse(self.service.faults.describe())

    async def set_webhook_faults(self, request: Request) -> Response:
        """Switch webhook faults: {duplicate: bool, reorder: bool}."""
        try:
            body = await _json_body(request)
        except SandboxApiError as exc:
            return JSONResponse(exc.to_json(), exc.status_code)
        if not isinstance(body, dict) or set(body) - {"duplicate", "reorder"}:
            return _error(400, "invalid_faults", "send {duplicate: bool, reorder: bool}")
        values = {k: v for k, v in body.items() if isinstance(v, bool)}
        if len(values) != len(body):
            return _error(400, "invalid_faults", "duplicate and reorder are booleans")
        self.service.faults.webhooks = WebhookFaults(**values)
        return JSONResponse(self.service.faults.describe())

    async def clear_faults(self, request: Request) -> Response:
        """Drop every pending fault (served counts stay)."""
        self.service.faults.clear()
        return JSONResponse(self.service.faults.describe())

    async def stats(self, request: Request) -> Response:
        """Invoices, refunds and payouts (per idempotency key and per reference) by status,
        calls per operation, faults served, webhooks sent."""
        return JSONResponse(self.service.stats())

    async def calls(self, request: Request) -> Response:
        """Calls per operation only: a counter a load test can read every second, where
        ``stats`` lists every invoice by key and by order."""
        return JSONResponse(self.service.call_counts())

    async def reset(self, request: Request) -> Response:
        """Forget every invoice, refund, payout, counter and fault: back to the configured
        fault plan."""
        self.service.reset()
        return JSONResponse({"reset": True})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """A sandbox payment system as an ASGI app; its service is at ``app.state.sandbox``."""
    service = SandboxService(config or SandboxConfig())
    routes = _Routes(service)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service.running():
            yield

    app = Starlette(
        routes=[
            Route(f"{API_PREFIX}/invoices", routes.create_invoice, methods=["POST"]),
            Route(f"{API_PREFIX}/invoices", routes.get_invoices, methods=["GET"]),
            Route(f"{API_PREFIX}/invoices/{{invoice_id}}", routes.get_invoice, methods=["GET"]),
            Route(
                f"{API_PREFIX}/invoices/{{invoice_id}}/cancel",
                routes.cancel_invoice,
                methods=["POST"],
            ),
            Route(f"{API_PREFIX}/refunds", routes.create_refund, methods=["POST"]),
            Route(f"{API_PREFIX}/refunds", routes.find_refunds, methods=["GET"]),
            Route(f"{API_PREFIX}/refunds/{{record_id}}", routes.get_refund, methods=["GET"]),
            Route(f"{API_PREFIX}/payouts", routes.create_payout, methods=["POST"]),
            Route(f"{API_PREFIX}/payouts", routes.find_payouts, methods=["GET"]),
            Route(f"{API_PREFIX}/payouts/{{record_id}}", routes.get_payout, methods=["GET"]),
            Route("/payouts/{record_id}", routes.payout_page, methods=["GET"]),
            Route("/payouts/{record_id}/complete", routes.complete_payout, methods=["POST"]),
            Route("/payouts/{record_id}/fail", routes.fail_payout, methods=["POST"]),
            Route("/pay/{invoice_id}", routes.pay_page, methods=["GET"]),
            Route("/pay/{invoice_id}/pay", routes.pay, methods=["POST"]),
            Route("/pay/{invoice_id}/decline", routes.decline, methods=["POST"]),
            Route("/_control/", routes.control_index, methods=["GET"]),
            Route(
                "/_control/invoices/{invoice_id}/{action:str}",
                routes.control_move,
                methods=["POST"],
            ),
            Route(
                "/_control/refunds/{record_id}/{outcome:str}",
                routes.control_refund,
                methods=["POST"],
            ),
            Route(
                "/_control/payouts/{record_id}/{outcome:str}",
                routes.control_payout,
                methods=["POST"],
            ),
            Route("/_control/faults", routes.get_faults, methods=["GET"]),
            Route("/_control/faults", routes.clear_faults, methods=["DELETE"]),
            Route("/_control/faults/{operation}", routes.add_faults, methods=["POST"]),
            Route("/_control/webhooks", routes.set_webhook_faults, methods=["POST"]),
            Route("/_control/stats", routes.stats, methods=["GET"]),
            Route("/_control/calls", routes.calls, methods=["GET"]),
            Route("/_control/reset", routes.reset, methods=["POST"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.sandbox = service
    return app
