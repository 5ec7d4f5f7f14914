"""Every error the API answers, as ``{"error": {"code", "message", "field"}}``.

Codes are stable (clients match on them; docs/api.md lists them); messages are for people.
Domain errors from :mod:`orders.errors` are translated here, at the boundary, and nothing a
client sends can produce a 500: an unexpected exception is logged and answered
``internal_error`` without details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from orders import errors as domain

log = structlog.get_logger(__name__)


class HttpError(domain.DispatchError):
    """An HTTP error with a stable code; raise it from any route or dependency.

    An answer already decided: on the error tree of :mod:`orders.errors` directly under
    ``DispatchError``, beside the domain errors that become one here (:func:`from_domain`). Its
    own handler renders it as it is (the app's handlers are looked up by the exception's class
    first, so the domain errors' handler never sees it).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.details = list(details)


def _printable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate an error message quotes from the
    request is shown escaped, so answering the error cannot itself fail."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(
    code: str, message: str, field: str | None = None, details: Sequence[Any] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "message": _printable(message),
        "field": None if field is None else _printable(field),
    }
    if details:
        body["details"] = list(details)
    return {"error": body}


def error_response(exc: HttpError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.field, exc.details),
        exc.status_code,
        headers=exc.headers,
    )


# InvalidInput subclasses by their stable code; the repository names the field.
_INPUT_CODES: Mapping[type[domain.InvalidInput], str] = {
    domain.UnknownCurrency: "unknown_currency",
    domain.AmountPrecisionError: "amount_precision",
    domain.InvalidAmount: "invalid_amount",
    domain.UnknownAdapter: "unknown_adapter",
    domain.FieldTooLong: "field_too_long",
}


def from_domain(exc: domain.DispatchError) -> HttpError:  # noqa: PLR0911 - one per family
    """The HTTP face of a domain error (an :class:`HttpError` is its own)."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, domain.InvalidInput):
        code = next((c for t, c in _INPUT_CODES.items() if isinstance(exc, t)), "invalid_field")
        if exc.field == "cursor":
            code = "invalid_cursor"
        return HttpError(422, code, exc.message, field=exc.field)
    if isinstance(exc, domain.InsufficientFunds):
        return HttpError(409, "insufficient_funds", str(exc))
    if isinstance(exc, domain.WalletNotFound):
        return HttpError(404, "wallet_not_found", "no wallet in that currency for this user")
    if isinstance(exc, domain.IdempotencyConflict):
        return HttpError(409, "idempotency_conflict", str(exc))
    if isinstance(exc, domain.OrderNotFound):
        return HttpError(404, "order_not_found", "no such order")
    if isinstance(exc, domain.RefundRefused):
        return HttpError(409, "refund_refused", str(exc))
    if isinstance(exc, domain.InvalidTransition):
        return HttpError(409, "invalid_transition", str(exc))
    if isinstance(exc, domain.StaleOrder):
        return HttpError(409, "conflict", "the order changed meanwhile; try again")
    if isinstance(exc, domain.TransientError):
        return HttpError(
            503, "unavailable", "a service paydispatch needs is unavailable; try again",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    return HttpError(422, "refused", str(exc))


def _field_name(loc: Sequence[Any]) -> str | None:
    """``("body", "metadata", "a")`` -> ``"metadata.a"``; query/path/header names as sent."""
    sources = {"body", "query", "path", "header"}
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in sources else []
    if loc and loc[0] == "header" and parts:
        parts = [parts[0].replace("_", "-").title()]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> HttpError:
    details: list[dict[str, str | None]] = []
    for err in exc.errors():
        kind = str(err.get("type", ""))
        field = _field_name(err.get("loc", ()))
        if kind == "json_invalid":
            return HttpError(400, "malformed_json", "the body is not valid JSON")
        code = {"missing": "missing_field", "extra_forbidden": "unknown_field"}.get(
            kind, "invalid_field"
        )
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = "is not a field of this request"
        if field is None and kind == "missing":
            code, message = "missing_body", "send a JSON object as the body"
        details.append({"code": code, "field": field, "message": message})
    first = details[0] if details else {"code": "invalid_field", "field": None, "message": ""}
    field, message = first["field"], str(first["message"])
    return HttpError(
        422,
        str(first["code"]),
        f"{field}: {message}" if field else message,
        field=field,
        details=details,
    )


# Failures of reading what a request sent, wherever a route's parsing meets them: text that
# is not UTF-8 (or holds lone surrogates), JSON nested beyond the interpreter's stack, a value
# PostgreSQL refuses as data (SQLSTATE class 22: an integer past bigint, a NUL in text).
# They are the client's (400), never a crash; any other exception stays a logged 500.
UNREADABLE_INPUT: tuple[type[Exception], ...] = (UnicodeError, RecursionError, psycopg.DataError)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: every method some route takes at this path. (Starlette
    names only the methods of the first route matching the path: DELETE beside GET went
    missing.) Each method is tried against the app's routes as a request of it would be."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one JSON shape."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return error_response(exc)

    async def on_domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, domain.DispatchError)
        return error_response(from_domain(exc))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {
            400: ("bad_request", "the request could not be read"),
            404: ("not_found", "no such endpoint"),
            405: ("method_not_allowed", "this endpoint does not take that method"),
        }
        code, message = codes.get(exc.status_code, ("http_error", str(exc.detail)))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return JSONResponse(error_body(code, message), exc.status_code, headers=headers or None)

    async def on_unreadable_input(request: Request, exc: Exception) -> Response:
        # Kept in the log (without the request's data) so a bug of ours still shows.
        log.warning(
            "unreadable request input",
            path=request.url.path,
            method=request.method,
            error=type(exc).__name__,
        )
        return JSONResponse(error_body("bad_request", "the request could not be read"), 400)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error in the API", path=request.url.path)
        return JSONResponse(error_body("internal_error", "internal error"), 500)

    app.add_exception_handler(HttpError, on_api_error)
    app.add_exception_handler(domain.DispatchError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for kind in UNREADABLE_INPUT:
        app.add_exception_handler(kind, on_unreadable_input)
    app.add_exception_handler(Exception, on_unexpected)
