"""The operators' console under ``/console/``: find orders, read their history, resolve a
``needs_review`` order, replay a parked billing webhook, without a shell on the server.

Operators log in with accounts of their own (:mod:`dispatcher.api.operators`), never with a
site's API key. Pages are server-rendered HTML without script (:mod:`console_pages`); every
POST needs the session's CSRF token (the login form a double-submit token of its own), the
session cookie is HttpOnly and SameSite=Strict (and Secure behind an https public URL), and no
page is cached or framed. A resolve is ``paydispatch orders resolve`` (the same
``order_events`` row, actor ``ops:<operator>``); it and every replay are also recorded in
``operator_actions`` with who and why. ``PAYDISPATCH_CONSOLE=off`` leaves the routes out.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import parse_qs
from uuid import UUID

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dispatcher.api import console_pages as html
from dispatcher.api.auth import Context
from dispatcher.api.console_store import ConsoleStore
from dispatcher.api.context import ApiContext
from dispatcher.api.operators import SESSION_TTL, Operators, Session
from orders.errors import (
    InvalidInput,
    InvalidTransition,
    OrderNotFound,
    StaleOrder,
    TransientError,
)
from orders.status import OrderStatus

log = structlog.get_logger(__name__)

SESSION_COOKIE = "pd_console"
LOGIN_COOKIE = "pd_console_login"
FORM_FIELDS = 8
PAGE = 50
# A password check is scrypt's 16 MiB and ~50 ms, asked for by anyone who can load the login
# page, in the threads that also serve sites and buyers: at most this many run at once, and a
# login beyond them is told to try again rather than queued.
LOGIN_CHECKS = 2
_checking = threading.BoundedSemaphore(LOGIN_CHECKS)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": html.CONTENT_SECURITY_POLICY,
}


def _html(content: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status_code, headers=_HEADERS)


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, 303, headers=_HEADERS)


def _cookie(response: Response, ctx: ApiContext, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/console", httponly=True, samesite="strict",
        secure=ctx.public_url.startswith("https://"),
    )  # fmt: skip


def _login_form(ctx: ApiContext, status_code: int, *, failed: bool = False) -> HTMLResponse:
    """The login page with a fresh double-submit token, in its form and in a cookie."""
    token = secrets.token_urlsafe(32)
    response = _html(html.login_page(token, failed=failed), status_code)
    _cookie(response, ctx, LOGIN_COOKIE, token, 3600)
    return response


def _refused(status_code: int, title: str, text: str) -> HTMLResponse:
    return _html(html.message_page(title, text), status_code)


class _ConsoleRoute(APIRoute):
    """A page the database cannot serve right now answers 503 as a page, not as the API's JSON
    error: whether the database failed in the page itself or while finding its session."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except TransientError as exc:
                log.warning("console page unavailable", error=str(exc))
                return _refused(503, "Unavailable", "The database cannot be reached; try again.")

        return guarded


router = APIRouter(prefix="/console", include_in_schema=False, route_class=_ConsoleRoute)


async def _form(request: Request) -> dict[str, str]:
    """The console's small forms; a body of more fields than any of them sends is refused."""
    body = (await request.body()).decode("utf-8", "replace")
    try:
        fields = parse_qs(body, max_num_fields=FORM_FIELDS)
    except ValueError:
        return {}
    return {k: v[0] for k, v in fields.items() if v}


Form = Annotated[dict[str, str], Depends(_form)]


def _session(request: Request, ctx: Context) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE)
    session = Operators(ctx.pool).session(token)
    return None if session is None else Session(session.operator, session.csrf_token, token or "")


MaybeSession = Annotated[Session | None, Depends(_session)]


def _authorized(
    ctx: ApiContext, session: Session | None, form: dict[str, str]
) -> Session | Response:
    """The session of a POST, or its refusal: 401 without a live session, 403 without the
    session's CSRF token."""
    if session is None:
        return _login_form(ctx, 401)
    if not session.csrf_ok(form.get("csrf")):
        log.warning("console CSRF token refused", operator=session.operator)
        return _refused(403, "Refused", "The form was not sent from this console; reload it.")
    return session


# -- logging in and out --------------------------------------------------------------------


@router.get("/login")
def login_page(ctx: Context) -> Response:
    return _login_form(ctx, 200)


@router.post("/login")
def login(request: Request, ctx: Context, form: Form) -> Response:
    sent, kept = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
    if not sent or not kept or not secrets.compare_digest(sent.encode(), kept.encode()):
        return _refused(403, "Refused", "The login form expired or came from elsewhere; reload it.")
    if not _checking.acquire(blocking=False):
        log.warning("console login refused: too many at once")
        busy = _refused(429, "Busy", "Too many logins at once; try again in a moment.")
        busy.headers["Retry-After"] = "1"
        return busy
    try:
        session = Operators(ctx.pool).login(form.get("name", ""), form.get("password", ""))
    finally:
        _checking.release()
    if session is None:
        log.warning("console login refused")
        return _login_form(ctx, 401, failed=True)
    log.info("console login", operator=session.operator)
    replaced = request.cookies.get(SESSION_COOKIE)
    if replaced:  # the browser's earlier session (another operator's, perhaps) ends here
        Operators(ctx.pool).logout(replaced)
    response = _see("/console/")
    _cookie(response, ctx, SESSION_COOKIE, session.token, int(SESSION_TTL.total_seconds()))
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
def logout(ctx: Context, session: MaybeSession, form: Form) -> Response:
    checked = _authorized(ctx, session, form)
    if isinstance(checked, Response):
        return checked
    Operators(ctx.pool).logout(checked.token)
    response = _see("/console/login")
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


# -- reading -------------------------------------------------------------------------------


@router.get("/")
def dashboard(ctx: Context, session: MaybeSession) -> Response:
    if session is None:
        return _login_form(ctx, 401)
    view = ConsoleStore(ctx.repo).overview(limit=PAGE)
    return _html(html.dashboard(view, operator=session.operator, csrf=session.csrf_token))


@router.get("/orders")
def orders(
    ctx: Context,
    session: MaybeSession,
    *,
    status: str = "",
    adapter: str = "",
    site: str = "",
    cursor: str = "",
) -> Response:
    if session is None:
        return _login_form(ctx, 401)
    if status and status not in {str(s) for s in OrderStatus}:
        return _refused(400, "Orders", f"There is no status {status!r}.")
    if "\x00" in adapter + site:  # no order holds one; PostgreSQL refuses it in a query
        return _refused(400, "Orders", "A filter holds a NUL character.")
    filters = {k: v for k, v in (("status", status), ("adapter", adapter), ("site", site)) if v}
    try:
        found = ctx.repo.list_orders(
            status=OrderStatus(status) if status else None,
            adapter=adapter or None,
            site=site or None,
            limit=PAGE,
            cursor=cursor or None,
        )
    except InvalidInput as exc:
        return _refused(400, "Orders", str(exc))
    page = html.order_list(
        found.items, filters, found.next_cursor, operator=session.operator,
        csrf=session.csrf_token,
    )  # fmt: skip
    return _html(page)


@router.get("/search")
def search(ctx: Context, session: MaybeSession, q: str = "", site: str = "") -> Response:
    """Our id, our number or a payment system's id; with ``site``, that site's reference."""
    if session is None:
        return _login_form(ctx, 401)
    found = ConsoleStore(ctx.repo).search(q, site=site or None, adapters=sorted(ctx.runtimes))
    if len(found) == 1:
        return _see(f"/console/orders/{found[0].id}")
    page = html.search_results(q, found, operator=session.operator, csrf=session.csrf_token)
    return _html(page)


def _order_page(
    ctx: ApiContext,
    session: Session,
    order_id: UUID,
    *,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
) -> Response:
    try:
        order = ctx.repo.get(order_id)
    except OrderNotFound:
        return _refused(404, "Not found", f"There is no order {order_id}.")
    hooks, actions = ConsoleStore(ctx.repo).order_history(order.id)
    page = html.order_page(
        order, ctx.repo.events(order.id), hooks, actions, operator=session.operator,
        csrf=session.csrf_token, notice=notice, error=error,
    )  # fmt: skip
    return _html(page, status_code)


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


@router.get("/orders/{order_id}")
def order(ctx: Context, session: MaybeSession, order_id: str, done: str = "") -> Response:
    if session is None:
        return _login_form(ctx, 401)
    found = _uuid(order_id)
    if found is None:
        return _refused(404, "Not found", "That is not an order id.")
    return _order_page(ctx, session, found, notice=html.NOTICES.get(done))


# -- acting --------------------------------------------------------------------------------


@router.post("/orders/{order_id}/resolve")
def resolve(ctx: Context, session: MaybeSession, form: Form, order_id: str) -> Response:
    """Settle a needs_review order to paid or rejected, with a reason and the evidence."""
    checked = _authorized(ctx, session, form)
    if isinstance(checked, Response):
        return checked
    session = checked
    found = _uuid(order_id)
    if found is None:
        return _refused(404, "Not found", "That is not an order id.")
    try:
        moved = ConsoleStore(ctx.repo).resolve(
            ctx.paid_hook, found, form.get("to", ""), by=session.operator,
            reason=form.get("reason", ""), evidence=form.get("evidence", ""),
        )  # fmt: skip
    except OrderNotFound:
        return _refused(404, "Not found", f"There is no order {found}.")
    except InvalidInput as exc:
        return _order_page(ctx, session, found, status_code=400, error=f"Not resolved: {exc}.")
    except (InvalidTransition, StaleOrder):
        return _order_page(
            ctx, session, found, status_code=409,
            error="Not resolved: the order is not in needs_review (any more).",
        )  # fmt: skip
    log.info("order resolved in the console", order_id=str(found), operator=session.operator,
             to=str(moved.status))  # fmt: skip
    return _see(f"/console/orders/{found}?done=resolved")


@router.post("/webhooks/{event_id}/replay")
def replay(ctx: Context, session: MaybeSession, form: Form, event_id: str) -> Response:
    """Queue a parked billing webhook event for delivery again, saying why."""
    checked = _authorized(ctx, session, form)
    if isinstance(checked, Response):
        return checked
    session = checked
    found = _uuid(event_id)
    if found is None:
        return _refused(404, "Not found", "That is not an event id.")
    try:
        order_id = ConsoleStore(ctx.repo).replay(
            found, by=session.operator, reason=form.get("reason", ""),
            max_age=timedelta(seconds=ctx.webhook_max_age),
        )  # fmt: skip
    except InvalidInput as exc:
        return _refused(400, "Not replayed", f"Not replayed: {exc}.")
    if order_id is None:
        return _refused(409, "Not replayed", "That event is not parked (any more).")
    log.info("webhook replayed in the console", event_id=str(found), operator=session.operator)
    return _see(f"/console/orders/{order_id}?done=replayed")
