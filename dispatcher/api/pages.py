"""The buyer's status page: server-rendered HTML, a meta refresh without JavaScript, and a few
lines of JavaScript that poll ``/pay/{id}/status`` and follow the invoice when it is ready."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from html import escape

from dispatcher.api.schemas import PayStatus

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;"
    "color:#222}.amount{font-size:2rem;font-weight:600;margin:.5rem 0}"
    "form{display:inline-block;margin:.25rem .5rem .25rem 0}"
    "button,.button{font-size:1rem;padding:.5rem 1.25rem;cursor:pointer}"
    ".button{display:inline-block;background:#1a5fd0;color:#fff;text-decoration:none;"
    "border-radius:4px}.muted{color:#666;font-size:.9rem}"
)

_MESSAGES = {
    "preparing": "Preparing your payment…",
    "ready": "Waiting for your payment…",
    "paid": "Payment received. Thank you!",
    "declined": "The payment was declined.",
    "expired": "The time to pay has run out.",
    "cancelled": "This payment was cancelled.",
    "review": "We are checking your payment; this can take a little while.",
    "failed": "This payment could not be started.",
}

# Polls the status JSON; reloads the page when the state changes, and goes to the pay page
# once (per tab) when the invoice is ready, so "Back" from the payment system does not loop.
_SCRIPT = """(function(){
var b=document.body,s=b.dataset.state,u=b.dataset.statusUrl,k="pd-sent-"+b.dataset.order;
function send(p){if(p&&!sessionStorage.getItem(k)){sessionStorage.setItem(k,"1");
location.replace(p);return true}return false}
function tick(){fetch(u,{cache:"no-store",headers:{Accept:"application/json"}})
.then(function(r){return r.json()}).then(function(d){
if(d.state!==s){if(!(d.state==="ready"&&send(d.pay_url)))location.reload();return}
if(!d.final)setTimeout(tick,d.retry_after_ms||1500)})
.catch(function(){setTimeout(tick,3000)})}
if(s==="ready"&&send(b.dataset.payUrl))return;
if(b.dataset.final!=="true")setTimeout(tick,1000);})();"""


def _source_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# The pages' one script and one style sheet are allowed by their hashes and nothing else runs:
# text a site or a payment system gave (description, links) can never become script. Forms
# post only back here, no other site may frame the page (clickjacking the Pay buttons), and
# the script may fetch only this origin's status JSON.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        f"script-src {_source_hash(_SCRIPT)}",
        f"style-src {_source_hash(_STYLE)}",
        "connect-src 'self'",
        "img-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)


def _page(title: str, body: str, *, head: str = "", attrs: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style>{head}</head>"
        f"<body{attrs}>{body}</body></html>"
    )


def status_page(
    order_id: str,
    status: PayStatus,
    *,
    alternatives: Sequence[str],
    can_cancel: bool,
    send_now: bool,
) -> str:
    """The page for one order. ``send_now``: without JavaScript, go to the pay page at once."""
    base = f"/pay/{escape(order_id)}"
    head = ""
    if not status.final:
        # Without JavaScript: look again every few seconds; once the invoice is ready after a
        # wait, go straight to it (a 0-second refresh replaces this page in the history).
        if send_now and status.pay_url:
            refresh = f"0;url={escape(status.pay_url, quote=True)}"
        else:
            wait = "?wait=1" if status.state == "preparing" else ""
            refresh = f"3;url={base}{wait}"
        head = f'<noscript><meta http-equiv=refresh content="{refresh}"></noscript>'
    parts = [
        f"<p class=amount id=amount>{escape(status.amount)}</p>",
        f"<p id=description>{escape(status.description)}</p>" if status.description else "",
        f'<p id=message data-state="{status.state}">{escape(_MESSAGES[status.state])}</p>',
    ]
    if status.state == "ready" and status.pay_url:
        parts.append(
            f'<p><a class=button id=pay-link href="{escape(status.pay_url, quote=True)}" '
            'rel="noreferrer">Continue to payment</a></p>'
        )
    if status.final and status.return_url:
        parts.append(
            f'<p><a id=return-link href="{escape(status.return_url, quote=True)}">'
            "Back to the shop</a></p>"
        )
    if can_cancel:
        for name in alternatives:
            parts.append(
                f'<form method=post action="{base}/switch" class=switch>'
                f'<input type=hidden name=adapter value="{escape(name, quote=True)}">'
                f'<button type=submit id="switch-{escape(name, quote=True)}">Pay with '
                f"{escape(name)} instead</button></form>"
            )
        parts.append(
            f'<form method=post action="{base}/cancel" id=cancel-form>'
            "<button type=submit id=cancel>Cancel payment</button></form>"
        )
    if not status.final:
        parts.append("<p class=muted>This page updates by itself.</p>")
    attrs = (
        f' data-order="{escape(order_id)}" data-state="{status.state}"'
        f' data-final="{"true" if status.final else "false"}"'
        f' data-status-url="{base}/status"'
        f' data-pay-url="{escape(status.pay_url or "", quote=True)}"'
    )
    script = "" if status.final else f"<script>{_SCRIPT}</script>"
    return _page("Payment", "<h1>Payment</h1>" + "".join(parts) + script, head=head, attrs=attrs)


def not_found_page() -> str:
    return _page("Payment", "<h1>Payment</h1><p id=message>No such payment.</p>")


def unavailable_page() -> str:
    return _page(
        "Payment",
        "<h1>Payment</h1><p id=message>We cannot show this payment right now. "
        "Please try again in a moment.</p>",
        head='<meta http-equiv=refresh content="5">',
    )
