"""The sandbox's HTML: the pay page a person (or a test's browser) clicks, and result pages."""

from __future__ import annotations

from html import escape

from adapters.sandbox.money_out import TransferRecord
from adapters.sandbox.protocol import InvoiceStatus, TransferStatus
from adapters.sandbox.store import InvoiceRecord
from orders.errors import InvalidInput
from orders.money import Money

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}"
    ".amount{font-size:2rem;font-weight:600}form{display:inline-block;margin-right:.5rem}"
    "button{font-size:1rem;padding:.5rem 1.5rem}"
)


def _amount(record: InvoiceRecord) -> str:
    try:
        return str(Money(record.request.amount, record.request.currency))
    except InvalidInput:
        return f"{record.request.amount} {record.request.currency} (minor units)"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def pay_page(record: InvoiceRecord, status: InvoiceStatus) -> str:
    """The invoice with Pay and Decline buttons while it can be paid, its status otherwise."""
    details = (
        f"<p class=amount id=amount>{escape(_amount(record))}</p>"
        f"<p id=description>{escape(record.request.description)}</p>"
        f"<p>Invoice <code>{escape(record.id)}</code>, order {record.request.number}, "
        f"status <strong id=status>{escape(status.value)}</strong></p>"
    )
    if status is InvoiceStatus.PENDING:
        base = f"/pay/{escape(record.id)}"
        details += (
            f'<form method=post action="{base}/pay" id=pay-form>'
            "<button type=submit id=pay>Pay</button></form>"
            f'<form method=post action="{base}/decline" id=decline-form>'
            "<button type=submit id=decline>Decline</button></form>"
            f"<p>Pay before {escape(record.request.expires_at.isoformat())}.</p>"
        )
    return _page("Sandbox payment", details)


def result_page(record: InvoiceRecord, status: InvoiceStatus) -> str:
    """What the buyer sees after clicking, when the invoice has no return_url."""
    words = {
        InvoiceStatus.PAID: "Payment received. Thank you.",
        InvoiceStatus.DECLINED: "Payment declined.",
    }
    message = words.get(status, f"This invoice is {status.value}.")
    return _page(
        "Sandbox payment",
        f"<p id=result data-status={escape(status.value)}>{escape(message)}</p>"
        f"<p class=amount>{escape(_amount(record))}</p>",
    )


def refusal_page(record: InvoiceRecord, status: InvoiceStatus) -> str:
    """Why a click could not be honoured (the invoice expired, was cancelled, ...)."""
    return _page(
        "Sandbox payment",
        f"<p id=refused data-status={escape(status.value)}>This invoice is {escape(status.value)} "
        "and can no longer be paid or declined.</p>",
    )


def not_found_page(invoice_id: str) -> str:
    return _page("Sandbox payment", f"<p>No invoice {escape(invoice_id)}.</p>")


def payout_page(record: TransferRecord) -> str:
    """A payout with Complete and Fail buttons while it is pending, its status otherwise."""
    r = record.request
    try:
        amount = str(Money(r.amount, r.currency))
    except InvalidInput:
        amount = f"{r.amount} {r.currency} (minor units)"
    details = (
        f"<p class=amount id=amount>{escape(amount)}</p>"
        f"<p>To account <code id=account>{escape(r.account or '')}</code>: "
        f"{escape(r.description)}</p>"
        f"<p>Payout <code>{escape(record.id)}</code>, "
        f"status <strong id=status>{escape(record.status.value)}</strong></p>"
    )
    if record.status is TransferStatus.PENDING:
        base = f"/payouts/{escape(record.id)}"
        details += (
            f'<form method=post action="{base}/complete" id=complete-form>'
            "<button type=submit id=complete>Complete</button></form>"
            f'<form method=post action="{base}/fail" id=fail-form>'
            "<button type=submit id=fail>Fail</button></form>"
        )
    return _page("Sandbox payout", details)
