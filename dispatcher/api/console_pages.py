"""The operators' console as server-rendered HTML: plain forms, no script at all.

Every value shown is escaped; the one style sheet is allowed by its hash and nothing else loads
or runs (see :data:`CONTENT_SECURITY_POLICY`). Each form that changes something carries the
session's CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from dispatcher.api.console_store import Action, Overview
from orders.model import Order, OrderEvent
from orders.status import OrderStatus

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0;color:#222;font-size:15px}"
    "header{background:#24303f;color:#fff;padding:.5rem 1rem;display:flex;gap:1rem;"
    "align-items:center;flex-wrap:wrap}header a{color:#fff}header form{display:inline}"
    "main{padding:1rem;max-width:72rem}table{border-collapse:collapse;margin:.5rem 0 1rem}"
    "th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}"
    "td.n{text-align:right}pre{margin:0;white-space:pre-wrap;font-size:13px}"
    "header input{width:15rem}label{display:block;margin:.5rem 0 .2rem}"
    "main textarea,main input[type=text],main input[type=password]"
    "{width:100%;max-width:36rem;box-sizing:border-box}.notice{background:#e6f4e6;padding:.5rem}"
    "form.replay input{width:14rem}"
    ".error{background:#fbe3e3;padding:.5rem}.big{font-size:1.6rem;font-weight:600}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dd{margin:0}"
)


def _source_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# No script-src: nothing runs. Forms post only here, and no other site may frame a page.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        f"style-src {_source_hash(_STYLE)}",
        "img-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

NOTICES = {
    "resolved": "The order was resolved.",
    "replayed": "The webhook event was queued for delivery again.",
}


def _when(value: datetime | None) -> str:
    return "" if value is None else escape(value.isoformat(timespec="seconds"))


def _order_link(order_id: object, text: object | None = None) -> str:
    shown = order_id if text is None else text
    return f'<a href="/console/orders/{escape(str(order_id))}">{escape(str(shown))}</a>'


def _csrf(token: str) -> str:
    return f'<input type=hidden name=csrf value="{escape(token, quote=True)}">'


def page(title: str, body: str, *, operator: str | None = None, csrf: str | None = None) -> str:
    header = "<header><strong>paydispatch console</strong>"
    if operator is not None and csrf is not None:
        header += (
            '<a href="/console/">Dashboard</a>'
            '<a href="/console/orders?status=needs_review">Needs review</a>'
            '<form method=get action="/console/search" id=search-form>'
            '<input type=text name=q id=q placeholder="order id, number or PSP id" required> '
            '<input type=text name=site id=site placeholder="site (for a site reference)"> '
            "<button type=submit id=search>Find</button></form>"
            f"<span id=operator>{escape(operator)}</span>"
            f'<form method=post action="/console/logout">{_csrf(csrf)}'
            "<button type=submit id=logout>Log out</button></form>"
        )
    header += "</header>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} - paydispatch console</title><style>{_STYLE}</style></head>"
        f"<body>{header}<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def login_page(login_csrf: str, *, failed: bool = False) -> str:
    error = "<p class=error id=error>The name or the password is wrong.</p>" if failed else ""
    body = (
        f'{error}<form method=post action="/console/login" id=login-form>{_csrf(login_csrf)}'
        "<label for=name>Name</label><input type=text name=name id=name required "
        "autocomplete=username>"
        "<label for=password>Password</label><input type=password name=password id=password "
        "required autocomplete=current-password>"
        "<p><button type=submit id=login>Log in</button></p></form>"
    )
    return page("Log in", body)


def message_page(title: str, text: str) -> str:
    body = f'<p id=message>{escape(text)}</p><p><a href="/console/">Back to the console</a></p>'
    return page(title, body)


def _order_rows(orders: Iterable[Order]) -> str:
    rows = "".join(
        f"<tr><td>{_order_link(o.id, o.number)}</td><td>{_order_link(o.id)}</td>"
        f"<td>{escape(o.site)}</td><td>{escape(o.site_ref or '')}</td>"
        f"<td>{escape(o.adapter)}</td><td>{escape(str(o.status))}</td>"
        f"<td class=n>{escape(str(o.money))}</td><td>{_when(o.created_at)}</td></tr>"
        for o in orders
    )
    return (
        "<table class=orders><tr><th>number</th><th>id</th><th>site</th><th>site_ref</th>"
        f"<th>adapter</th><th>status</th><th>amount</th><th>created</th></tr>{rows}</table>"
    )


def _replay_form(event_id: object, csrf: str) -> str:
    eid = escape(str(event_id), quote=True)
    return (
        f'<form method=post action="/console/webhooks/{eid}/replay" class=replay>{_csrf(csrf)}'
        f'<input type=text name=reason id="replay-reason-{eid}" required maxlength=1000 '
        'placeholder="why (recorded)"> '
        f'<button type=submit id="replay-{eid}">Replay</button></form>'
    )


def _hook_rows(hooks: Sequence[Mapping[str, Any]], csrf: str, *, with_order: bool) -> str:
    rows = []
    for h in hooks:
        status = h.get("status", "parked")
        cells = [
            f"<td>{escape(str(h['id']))}</td>",
            f"<td>{_order_link(h['order_id'])}</td>" if with_order else "",
            f"<td>{escape(h['event_type'])}</td><td>{escape(status)}</td>",
            f"<td class=n>{h['attempts']}</td><td>{escape(str(h['last_status'] or ''))}</td>",
            f"<td>{escape(h['last_error'] or '')}</td><td>{_when(h['parked_at'])}</td>",
            f"<td>{_replay_form(h['id'], csrf) if status == 'parked' else ''}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    order_head = "<th>order</th>" if with_order else ""
    return (
        f"<table class=webhooks><tr><th>event</th>{order_head}<th>type</th><th>status</th>"
        "<th>attempts</th><th>last HTTP</th><th>last error</th><th>parked</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _action_rows(actions: Sequence[Action]) -> str:
    rows = "".join(
        f"<tr><td>{_when(a.at)}</td><td>{escape(a.operator)}</td><td>{escape(a.action)}</td>"
        f"<td>{_order_link(a.order_id) if a.order_id else ''}</td><td>{escape(a.target)}</td>"
        f"<td>{escape(a.reason)}</td></tr>"
        for a in actions
    )
    return (
        "<table class=actions><tr><th>at</th><th>operator</th><th>action</th><th>order</th>"
        f"<th>target</th><th>reason</th></tr>{rows}</table>"
    )


def dashboard(view: Overview, *, operator: str, csrf: str) -> str:
    adapters = sorted({adapter for adapter, _ in view.counts})
    head = "".join(f"<th>{escape(str(s))}</th>" for s in OrderStatus)
    rows = []
    for adapter in adapters:
        cells = []
        for status in OrderStatus:
            n = view.counts.get((adapter, status), 0)
            query = urlencode({"adapter": adapter, "status": str(status)})
            link = f'<a href="/console/orders?{escape(query)}">{n}</a>' if n else "0"
            cells.append(f"<td class=n>{link}</td>")
        rows.append(f"<tr><th>{escape(adapter)}</th>{''.join(cells)}</tr>")
    due, box = view.due, view.outbox
    body = (
        '<p>Orders needing review: <a class=big id=needs-review href="/console/orders?'
        f'status=needs_review">{view.needs_review}</a></p>'
        f"<h2>Orders</h2><table id=counts><tr><th>adapter</th>{head}</tr>{''.join(rows)}</table>"
        f"<p>Due now: {due.get('due_active', due.get('due', 0))} active orders, "
        f"{due.get('due_late_watch', 0)} finished orders watched for late payments; "
        f"in flight: {due.get('leased', 0)}.</p>"
        f"<h2>Stuck or needing review</h2>{_order_rows(view.stuck)}"
        f"<h2>Billing webhooks</h2><p>Pending: {box.get('pending', 0)}; "
        f"parked: <span id=parked-count>{box.get('parked', 0)}</span>.</p>"
        + (_hook_rows(view.parked, csrf, with_order=True) if view.parked else "")
        + "<h2>Recent console actions</h2>"
        + (_action_rows(view.actions) if view.actions else "<p>None yet.</p>")
    )
    return page("Dashboard", body, operator=operator, csrf=csrf)


def order_list(
    orders: Sequence[Order],
    filters: Mapping[str, str],
    next_cursor: str | None,
    *,
    operator: str,
    csrf: str,
) -> str:
    shown = ", ".join(f"{k} = {v}" for k, v in filters.items()) or "all"
    more = ""
    if next_cursor:
        query = urlencode({**filters, "cursor": next_cursor})
        more = f'<p><a id=more href="/console/orders?{escape(query)}">Older orders</a></p>'
    body = f"<p>Newest first; {escape(shown)}.</p>{_order_rows(orders)}{more}"
    return page("Orders", body, operator=operator, csrf=csrf)


def search_results(text: str, orders: Sequence[Order], *, operator: str, csrf: str) -> str:
    if not orders:
        body = f"<p id=message>No order matches {escape(text)!r}.</p>"
    else:
        body = _order_rows(orders)
    return page("Search", body, operator=operator, csrf=csrf)


def _resolve_form(order: Order, csrf: str) -> str:
    return (
        "<h2>Resolve</h2><p>Decide what the payment system's records show. Resolving to paid "
        "credits the payment like any other.</p>"
        f'<form method=post action="/console/orders/{order.id}/resolve" id=resolve-form>'
        f"{_csrf(csrf)}<label><input type=radio name=to value=paid id=to-paid required> paid"
        "</label><label><input type=radio name=to value=rejected id=to-rejected> rejected"
        "</label><label for=reason>Reason (recorded)</label>"
        "<textarea name=reason id=reason required maxlength=1000 rows=2></textarea>"
        "<label for=evidence>Evidence: what was checked (recorded)</label>"
        "<textarea name=evidence id=evidence required maxlength=2000 rows=2></textarea>"
        "<p><button type=submit id=resolve>Resolve</button></p></form>"
    )


def order_page(
    order: Order,
    events: Sequence[OrderEvent],
    hooks: Sequence[Mapping[str, Any]],
    actions: Sequence[Action],
    *,
    operator: str,
    csrf: str,
    notice: str | None = None,
    error: str | None = None,
) -> str:
    fields: list[tuple[str, object]] = [
        ("id", order.id), ("number", order.number), ("site", order.site),
        ("site_ref", order.site_ref), ("user_id", order.user_id), ("amount", order.money),
        ("adapter", order.adapter), ("psp_id", order.psp_id), ("description", order.description),
        ("attempts", order.attempts), ("polls", order.polls), ("last_error", order.last_error),
        ("created_at", _when(order.created_at)), ("expires_at", _when(order.expires_at)),
        ("paid_at", _when(order.paid_at)), ("next_run_at", _when(order.next_run_at)),
        ("replaces", order.replaces),
        ("metadata", json.dumps(dict(order.metadata), ensure_ascii=False, sort_keys=True)),
    ]  # fmt: skip
    details = "".join(
        f"<dt>{name}</dt><dd id=field-{name}>{escape('' if value is None else str(value))}</dd>"
        for name, value in fields
    )
    event_rows = "".join(
        f"<tr><td>{_when(e.at)}</td><td>{escape(str(e.from_status or '-'))}</td>"
        f"<td>{escape(str(e.to_status))}</td><td>{escape(e.actor)}</td>"
        f"<td><pre>{escape(json.dumps(dict(e.detail), ensure_ascii=False, indent=1))}</pre>"
        "</td></tr>"
        for e in events
    )
    parts = [
        f"<p class=notice id=notice>{escape(notice)}</p>" if notice else "",
        f"<p class=error id=error>{escape(error)}</p>" if error else "",
        f'<p>Status: <strong id=status data-status="{order.status}">{order.status}</strong></p>',
        f"<dl>{details}</dl>",
        _resolve_form(order, csrf) if order.status is OrderStatus.NEEDS_REVIEW else "",
        "<h2>History</h2><table id=events><tr><th>at</th><th>from</th><th>to</th>"
        f"<th>actor</th><th>detail</th></tr>{event_rows}</table>",
        "<h2>Billing webhooks</h2>"
        + (_hook_rows(hooks, csrf, with_order=False) if hooks else "<p>None.</p>"),
        "<h2>Console actions</h2>" + (_action_rows(actions) if actions else "<p>None.</p>"),
    ]
    return page(f"Order {order.number}", "".join(parts), operator=operator, csrf=csrf)
