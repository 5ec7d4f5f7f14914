"""Refunds made at the payment system outside paydispatch (issue #14), against a real database:
recorded by hand through ``transfers`` (``paydispatch orders refund --record``), matched when the
payment system reports them by its payment id (Stripe's charge and dispute events name only the
PaymentIntent), and taken from the wallet once whoever records them first."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from prometheus_client import REGISTRY

import orders.transfers
from adapters import paypal, registry, stripe
from adapters.base import PspRequest, PspResponse, RefundReport, RefundState, StatusReport
from adapters.fakes import stripe as fake_stripe
from adapters.fakes.common import FakeControl, PaymentRef, running_fake
from adapters.sandbox.runner import serve_in_thread
from dispatcher.api.app import create_app
from dispatcher.api.context import ApiContext
from dispatcher.billing import hooks
from dispatcher.billing.audit import audit
from dispatcher.billing.face import Face
from dispatcher.billing.wallet import EntryKind, SyncWallets
from dispatcher.config import BillingSettings
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import Action
from dispatcher.worker.engine import Engine
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool, open_async_pool
from orders.model import Order, Transfer, TransferStatus
from orders.repository import OrderRepository, Orders
from orders.transfers import SyncTransfers, unaccounted_refund
from tests.billing_support import pay
from tests.conftest import cli
from tests.dispatch_support import FAST, wait_until
from tests.integration.test_api import api_runtimes
from tests.integration.test_api_callbacks import signed
from tests.integration.test_transfers_callbacks import refund_webhook

S = OrderStatus
FIXTURES = Path(__file__).parent.parent / "fixtures" / "stripe"
PAID = 1234  # 12.34 USD


@dataclass
class Api:
    url: str
    ctx: ApiContext
    stripe_url: str
    stripe: fake_stripe.StripeFake

    @property
    def repo(self) -> OrderRepository:
        return self.ctx.repo


@contextmanager
def running_api(pool: Pool) -> Iterator[Api]:
    """The real app with the wallet's paid and refund hooks, the sandbox and a fake Stripe whose
    signed events go to the app's callback endpoint."""
    app_of_fake = fake_stripe.create_app()
    with running_fake(app_of_fake) as stripe_url:
        settings = registry.resolve_settings(
            stripe.adapter, fake_stripe.adapter_settings(stripe_url), environ={}
        )
        paypal_settings = registry.resolve_settings(
            paypal.adapter, {"CLIENT_ID": "app", "CLIENT_SECRET": "secret"}, environ={}
        )
        runtimes = api_runtimes() | {
            "stripe": AdapterRuntime(stripe.adapter, settings, FAST),
            "paypal": AdapterRuntime(paypal.adapter, paypal_settings, FAST),
        }
        expiry = {n: rt.adapter.capabilities.default_expiry for n, rt in runtimes.items()}
        with OrderRepository(pool, expiry) as repo:
            ctx = ApiContext(
                repo=repo,
                runtimes=runtimes,
                paid_hook=hooks.build(BillingSettings()),
                transfer_hook=hooks.build_transfer_hook(BillingSettings()),
            )
            with serve_in_thread(create_app(ctx)) as url:
                ctx.public_url = url
                fake: fake_stripe.StripeFake = app_of_fake.state.stripe
                fake.notify_url = f"{url}/v1/callbacks/stripe"
                yield Api(url, ctx, stripe_url, fake)


@pytest.fixture(scope="module")
def api(pool: Pool) -> Iterator[Api]:
    with running_api(pool) as running:
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


def paid_sandbox_order(api: Api, site: str) -> Order:
    """A sandbox order of 12.34 USD, paid with the wallet's hook: the user's wallet credited."""
    new = NewOrder(site=site, user_id="buyer", money=Money(PAID, "USD"), adapter="sandbox")
    order = api.repo.create(new).order
    api.repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
    api.repo.transition(
        order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"inv_{order.id.hex}"
    )
    return pay(api.repo, order.id, S.AWAITING_PAYMENT, hooks.build(BillingSettings()))


def balance(pool: Pool, order: Order) -> int:
    with SyncWallets(pool) as wallets:
        return wallets.balance(order.site, order.user_id, order.money.currency).amount


def refund_entries(pool: Pool, order: Order) -> list[int]:
    with SyncWallets(pool) as wallets:
        items = wallets.history(order.site, order.user_id, limit=100).items
    return [e.money.amount + e.held.amount for e in items if e.kind is EntryKind.REFUND]


def refunds(api: Api, order: Order) -> list[Transfer]:
    return api.repo.run(api.ctx.transfers.list(order_id=order.id)).items


def refund_being_sent(api: Api, order: Order, cents: int) -> Transfer:
    """A refund of ours of ``cents`` USD, sent to the payment system, its outcome and id unknown."""
    mine, _ = api.repo.run(
        api.ctx.transfers.request_refund(
            order.id, Money(cents, "USD"), site=None, idempotency_key=None, reason="r",
            requested_by="site",
        )
    )  # fmt: skip
    return api.repo.run(api.ctx.transfers.write(mine, TransferStatus.SUBMITTING, use_lease=False))


def record(
    database_url: str, order: Order, psp_refund_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return cli(
        database_url, "orders", "refund", str(order.id), "--record", "--psp-refund-id",
        psp_refund_id, "--by", "carol", "--reason", "refunded by support", *extra,
    )  # fmt: skip


def audit_clean(pool: Pool, site: str) -> None:
    with Face(pool) as database:
        report = database.run(lambda async_pool: audit(async_pool, site=site))
    assert report.ok, report.discrepancies
    assert report.unlinked == []  # every refund entry is one of the order's refunds


# -- item 1: a refund recorded by hand is one of the order's refunds -------------------------------


def test_a_refund_recorded_by_hand_then_notified_with_its_id_is_taken_once(
    api: Api, http: httpx.Client, database_url: str, site: str
) -> None:
    # Given a paid order whose user's wallet holds its 12.34 USD,
    order = paid_sandbox_order(api, site)
    # when support's refund of 4.00 is recorded by hand with the payment system's id,
    made = record(database_url, order, "re_support_1", "--amount", "4.00", "--json")
    assert made.returncode == 0, made.stderr
    recorded = json.loads(made.stdout)
    assert (recorded["status"], recorded["origin"], recorded["amount"]) == (
        "succeeded",
        "operator",
        400,
    )
    assert (recorded["psp_refund_id"], recorded["created"]) == ("re_support_1", True)
    # and the payment system then reports that refund, signed, with the payment's total,
    body = refund_webhook(order, refund_id="re_support_1", amount=400)
    answer = http.post("/v1/callbacks/sandbox", content=body, headers=signed(body))
    assert answer.status_code == 200
    # and the same refund is recorded by hand again,
    again = record(database_url, order, "re_support_1", "--amount", "4.00")
    assert again.returncode == 0, again.stderr
    assert "was recorded already" in again.stdout
    # then it is one refund of the order, taken from the wallet once.
    (refund,) = refunds(api, order)
    assert (refund.origin, refund.psp_transfer_id, refund.money) == (
        "operator",
        "re_support_1",
        Money(400, "USD"),
    )
    current = api.repo.get(order.id)
    assert (current.refunded_amount, current.refund_reserved) == (400, 400)
    assert refund_entries(api.ctx.pool, order) == [-400]
    assert balance(api.ctx.pool, order) == PAID - 400
    audit_clean(api.ctx.pool, site)


def test_a_refund_the_payment_system_reported_first_is_not_recorded_again_by_hand(
    api: Api, http: httpx.Client, database_url: str, site: str
) -> None:
    order = paid_sandbox_order(api, site)
    body = refund_webhook(order, refund_id="re_psp_first", amount=500)
    assert http.post("/v1/callbacks/sandbox", content=body, headers=signed(body)).is_success
    result = record(database_url, order, "re_psp_first", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["created"], shown["origin"], shown["amount"]) == (False, "psp", 500)
    assert refund_entries(api.ctx.pool, order) == [-500]
    assert balance(api.ctx.pool, order) == PAID - 500


def test_a_refunded_total_reported_after_a_refund_recorded_by_hand_takes_nothing_more(
    api: Api, http: httpx.Client, database_url: str, site: str
) -> None:
    # The payment system (or our own status read: the refund check decides the same way)
    # reports the payment's refunded total, which the refund recorded by hand accounts for.
    order = paid_sandbox_order(api, site)
    assert record(database_url, order, "re_support_2", "--amount", "3.00").returncode == 0
    invoice = {
        "id": order.psp_id,
        "order_id": str(order.id),
        "number": order.number,
        "status": "paid",
        "amount": order.money.amount,
        "currency": order.money.currency,
        "refunded": 300,
    }
    body = json.dumps({"event_id": "evt_t", "type": "invoice.updated", "invoice": invoice}).encode()
    assert http.post("/v1/callbacks/sandbox", content=body, headers=signed(body)).is_success
    assert [r.psp_transfer_id for r in refunds(api, order)] == ["re_support_2"]
    assert refund_entries(api.ctx.pool, order) == [-300]
    assert balance(api.ctx.pool, order) == PAID - 300


def test_a_refund_recorded_from_a_total_makes_a_later_record_by_id_a_refund_check(
    api: Api, http: httpx.Client, database_url: str, site: str
) -> None:
    # Given a refunded total the payment system reported (no refund id: it may be any refund),
    order = paid_sandbox_order(api, site)
    invoice = {
        "id": order.psp_id,
        "order_id": str(order.id),
        "number": order.number,
        "status": "paid",
        "amount": order.money.amount,
        "currency": order.money.currency,
        "refunded": 300,
    }
    body = json.dumps({"event_id": "evt_u", "type": "invoice.updated", "invoice": invoice}).encode()
    assert http.post("/v1/callbacks/sandbox", content=body, headers=signed(body)).is_success
    # when the refund is then reported by its own id, and recorded by hand,
    named = refund_webhook(order, refund_id="re_in_total", amount=300)
    assert http.post("/v1/callbacks/sandbox", content=named, headers=signed(named)).is_success
    by_hand = record(database_url, order, "re_in_total")
    # then neither takes it again: only the payment's total can tell, so its check is due.
    assert by_hand.returncode == 1
    assert "refund check is due" in by_hand.stderr
    assert [r.money.amount for r in refunds(api, order)] == [300]
    assert refund_entries(api.ctx.pool, order) == [-300]
    assert api.repo.get(order.id).refunded_amount == 300
    with api.ctx.pool.connection() as conn:
        row = conn.execute("SELECT refund_check_at FROM orders WHERE id = %s", (order.id,))
        due = row.fetchone()
    assert due is not None
    assert due["refund_check_at"] is not None


def test_a_refunded_total_read_before_a_refund_was_recorded_takes_nothing_more(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given the payment's total read (a notification, a status read) while the order's refunds
    # accounted for nothing yet,
    order = paid_sandbox_order(api, site)
    stale = unaccounted_refund(order, Money(300, "USD"), chargeback=False)
    assert stale is not None
    assert stale.money == Money(300, "USD")
    # when the refund it shows is recorded by its id meanwhile (a notification in parallel),
    named = refund_webhook(order, refund_id="re_parallel", amount=300)
    assert http.post("/v1/callbacks/sandbox", content=named, headers=signed(named)).is_success
    # then the total, recorded afterwards, finds it accounted for under the order's lock.
    recorded = api.repo.run(
        api.ctx.transfers.record_reported_refund(order, stale, actor="test", reason="total")
    )
    assert recorded is None
    assert [r.psp_transfer_id for r in refunds(api, order)] == ["re_parallel"]
    assert refund_entries(api.ctx.pool, order) == [-300]


def test_a_refund_recorded_by_hand_beyond_what_is_left_is_refused_and_writes_nothing(
    api: Api, database_url: str, site: str
) -> None:
    order = paid_sandbox_order(api, site)
    assert record(database_url, order, "re_a", "--amount", "10.00").returncode == 0
    refused = record(database_url, order, "re_b", "--amount", "2.35")
    assert refused.returncode == 1
    assert "more than is left to refund" in refused.stderr
    assert "re_b" in refused.stderr
    assert [r.psp_transfer_id for r in refunds(api, order)] == ["re_a"]
    assert balance(api.ctx.pool, order) == PAID - 1000
    # The same payment-system id cannot name a refund of another order either.
    other = paid_sandbox_order(api, site)
    conflict = record(database_url, other, "re_a")
    assert conflict.returncode == 1
    assert "recorded already" in conflict.stderr
    assert refunds(api, other) == []


def test_a_refund_of_ours_still_being_sent_blocks_a_record_by_hand(
    api: Api, database_url: str, site: str
) -> None:
    order = paid_sandbox_order(api, site)
    mine = refund_being_sent(api, order, 200)
    refused = record(database_url, order, "re_maybe_ours", "--amount", "2.00")
    assert refused.returncode == 1
    assert str(mine.id) in refused.stderr
    assert len(refunds(api, order)) == 1


def test_a_notification_of_our_refund_s_id_stored_meanwhile_is_a_refund_known(
    api: Api, pool: Pool, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a refund of ours being sent, its payment system id not known yet,
    order = paid_sandbox_order(api, site)
    mine = refund_being_sent(api, order, 200)
    psp_refund_id = f"re_{order.id.hex}"
    named = orders.transfers.query

    def worker_stores_the_id_meanwhile(name: str) -> Any:
        # The worker stores our refund's id (a write that takes no lock of the order) after the
        # notification looked the id up and before it looks for refunds still being sent.
        if name == "transfer_open_refunds":
            with pool.connection() as conn:
                conn.execute(
                    "UPDATE transfers SET psp_transfer_id = %s WHERE id = %s",
                    (psp_refund_id, mine.id),
                )
        return named(name)

    monkeypatch.setattr(orders.transfers, "query", worker_stores_the_id_meanwhile)
    # when the notification of that id is recorded,
    report = RefundReport(RefundState.SUCCEEDED, psp_refund_id, Money(200, "USD"))
    recorded = api.repo.run(
        api.ctx.transfers.record_reported_refund(order, report, actor="callback:sandbox")
    )
    # then it is a refund known (not an error): ours, once, and nothing taken by it.
    assert recorded is None
    (only,) = refunds(api, order)
    assert (only.id, only.psp_transfer_id) == (mine.id, psp_refund_id)
    assert refund_entries(api.ctx.pool, order) == []
    assert api.repo.get(order.id).refunded_amount == 0


def test_wallet_refund_is_retired_and_writes_nothing(
    api: Api, database_url: str, site: str
) -> None:
    order = paid_sandbox_order(api, site)
    result = cli(
        database_url, "wallet", "refund", str(order.id), "--amount", "1.00", "--reason", "r",
        "--key", "k-1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "orders refund ORDER_ID --record --psp-refund-id" in result.stderr
    assert refund_entries(api.ctx.pool, order) == []
    assert balance(api.ctx.pool, order) == PAID


def test_record_needs_the_payment_system_s_refund_id(
    api: Api, database_url: str, site: str
) -> None:
    order = paid_sandbox_order(api, site)
    for args in (
        ("--record",),
        ("--psp-refund-id", "re_1"),
        ("--record", "--psp-refund-id", "re_1", "--key", "k"),
    ):
        result = cli(
            database_url, "orders", "refund", str(order.id), *args, "--by", "c", "--reason", "r"
        )
        assert result.returncode == 2, args
    assert refunds(api, order) == []


# -- item 2: Stripe's charge and dispute events name the order by its PaymentIntent ---------------


def _send(api: Api, request: PspRequest) -> PspResponse:
    """What the transport does for Stripe: the form url-encoded, the query from pairs."""
    headers = dict(request.headers)
    content = None
    if request.form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        content = urlencode(list(dict(request.form).items())).encode()
    answer = httpx.request(
        request.method, request.url, params=dict(request.params), content=content,
        headers=headers, timeout=10,
    )  # fmt: skip
    return PspResponse(answer.status_code, answer.content, dict(answer.headers))


def paid_stripe_order(api: Api, site: str) -> Order:
    """An order paid at the fake Stripe, made paid by Stripe's signed checkout.session.completed
    through the API (as a live installation would be)."""
    runtime = api.ctx.runtimes["stripe"]
    new = NewOrder(
        site=site, user_id="buyer", money=Money(PAID, "USD"), adapter="stripe",
        return_url="https://shop.example/back",
    )  # fmt: skip
    order = api.repo.create(new).order
    invoice = stripe.adapter.parse_create(
        order, _send(api, stripe.adapter.build_create(order, runtime.settings))
    )
    api.repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
    api.repo.transition(
        order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=invoice.psp_id,
        pay_url=invoice.pay_url,
    )  # fmt: skip
    control = FakeControl(api.stripe_url)
    try:
        control.pay(PaymentRef(psp_id=invoice.psp_id))
    finally:
        control.close()
    wait_until(lambda: api.repo.get(order.id).status is S.PAID, timeout=20, what="paid")
    return api.repo.get(order.id)


def delivered(api: Api) -> None:
    """Every event the fake sent has been answered by the API."""
    wait_until(lambda: not api.stripe.sending, timeout=20, what="the fake's events answered")


def test_a_paid_stripe_order_keeps_its_payment_intent(api: Api, site: str) -> None:
    order = paid_stripe_order(api, site)
    session = api.stripe.sessions[order.psp_id or ""]
    assert session.intent is not None
    assert order.psp_payment_id == session.intent["id"]
    assert str(order.psp_payment_id).startswith("pi_")
    assert api.repo.find_by_ref("stripe", psp_payment_id=order.psp_payment_id) == order


def test_a_refund_made_in_the_stripe_dashboard_is_recorded_once_from_its_events(
    api: Api, site: str
) -> None:
    # Given a paid Stripe order whose credit is in the wallet,
    order = paid_stripe_order(api, site)
    assert balance(api.ctx.pool, order) == PAID
    delivered(api)
    # when 5.00 is refunded in Stripe's Dashboard (no metadata of ours: refund.created,
    # refund.updated and charge.refunded name only the PaymentIntent),
    runtime = api.ctx.runtimes["stripe"]
    key = runtime.settings.get("SECRET_KEY")
    made = httpx.post(
        f"{api.stripe_url}/v1/refunds",
        data={"payment_intent": order.psp_payment_id or "", "amount": "500"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ).json()
    httpx.get(
        f"{api.stripe_url}/v1/refunds/{made['id']}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ).raise_for_status()
    # then the order's refunds account for it once, and the wallet gave it back once.
    wait_until(lambda: api.repo.get(order.id).refunded_amount == 500, timeout=20, what="refund")
    delivered(api)
    (refund,) = refunds(api, order)
    assert (refund.origin, refund.status, refund.money) == (
        "psp",
        TransferStatus.SUCCEEDED,
        Money(500, "USD"),
    )
    assert refund_entries(api.ctx.pool, order) == [-500]
    assert balance(api.ctx.pool, order) == PAID - 500
    audit_clean(api.ctx.pool, site)


def _dispute_event(
    order: Order,
    fixture: str,
    *,
    amount: int | None = None,
    intent: str | None = None,
    currency: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A reconstructed dispute event (tests/fixtures/stripe) about ``order``'s PaymentIntent (or
    ``intent``), of the order's own dispute (one id per order), of ``amount`` if given, signed as
    the fake Stripe signs its events."""
    event = json.loads((FIXTURES / fixture).read_text())
    dispute = event["data"]["object"]
    dispute["payment_intent"] = intent or order.psp_payment_id
    dispute["id"] = f"du_{order.id.hex}"
    if amount is not None:
        dispute["amount"] = amount
    if currency is not None:
        dispute["currency"] = currency
    body = json.dumps(event).encode()
    return body, fake_stripe.signed_headers(body, fake_stripe.WEBHOOK_SECRET)


def _deliver(http: httpx.Client, order: Order, fixture: str, **changes: Any) -> None:
    body, headers = _dispute_event(order, fixture, **changes)
    assert http.post("/v1/callbacks/stripe", content=body, headers=headers).is_success


def entries(pool: Pool, order: Order, kind: EntryKind) -> list[int]:
    with SyncWallets(pool) as wallets:
        items = wallets.history(order.site, order.user_id, limit=100).items
    return [e.money.amount + e.held.amount for e in items if e.kind is kind]


def chargebacks() -> float:
    return REGISTRY.get_sample_value("paydispatch_chargebacks_total", {"adapter": "stripe"}) or 0.0


def refused() -> float:
    sample = REGISTRY.get_sample_value(
        "paydispatch_reported_refunds_refused_total", {"adapter": "stripe"}
    )
    return sample or 0.0


def reversals() -> float:
    sample = REGISTRY.get_sample_value(
        "paydispatch_chargeback_reversals_total", {"adapter": "stripe"}
    )
    return sample or 0.0


def test_a_stripe_dispute_takes_the_payment_back_once_and_an_inquiry_nothing(
    api: Api, http: httpx.Client, site: str
) -> None:
    order = paid_stripe_order(api, site)
    delivered(api)
    before = chargebacks()
    # An inquiry withdraws no funds: nothing is taken back.
    body, headers = _dispute_event(order, "event_charge_dispute_inquiry.json")
    assert http.post("/v1/callbacks/stripe", content=body, headers=headers).is_success
    assert refunds(api, order) == []
    # A dispute (and its funds withdrawn) is one chargeback of the payment.
    for name in ("event_charge_dispute_created.json", "event_charge_dispute_funds_withdrawn.json"):
        body, headers = _dispute_event(order, name)
        assert http.post("/v1/callbacks/stripe", content=body, headers=headers).is_success
    (refund,) = refunds(api, order)
    assert (refund.origin, refund.money) == ("psp", Money(PAID, "USD"))
    assert chargebacks() == before + 1
    assert refund_entries(api.ctx.pool, order) == [-PAID]
    assert balance(api.ctx.pool, order) == 0


def test_a_partial_dispute_takes_back_only_the_amount_it_names(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given a paid order of 12.34 USD, credited,
    order = paid_stripe_order(api, site)
    delivered(api)
    # when a dispute of 5.00 of it is opened and its funds withdrawn,
    for name in ("event_charge_dispute_created.json", "event_charge_dispute_funds_withdrawn.json"):
        _deliver(http, order, name, amount=500)
    # then 5.00 is taken back, once, as the order's chargeback, and the rest may still be
    # refunded.
    (refund,) = refunds(api, order)
    assert (refund.origin, refund.money, refund.chargeback) == ("psp", Money(500, "USD"), True)
    assert refund.psp_transfer_id == f"du_{order.id.hex}"
    current = api.repo.get(order.id)
    assert (current.refunded_amount, current.refund_reserved) == (500, 500)
    assert refund_entries(api.ctx.pool, order) == [-500]
    assert balance(api.ctx.pool, order) == PAID - 500
    audit_clean(api.ctx.pool, site)


def test_a_dispute_of_more_than_is_left_takes_what_is_left(
    api: Api, http: httpx.Client, site: str, database_url: str
) -> None:
    # Given a paid order of 12.34 USD of which support refunded 10.00 at Stripe,
    order = paid_stripe_order(api, site)
    delivered(api)
    assert record(database_url, order, f"re_{order.id.hex}", "--amount", "10.00").returncode == 0
    # when the buyer's bank disputes the whole payment (Stripe's amount: 20.00 in the fixture),
    _deliver(http, order, "event_charge_dispute_created.json")
    # then the chargeback takes what the refund left, 2.34, never more than was paid.
    chargeback = next(t for t in refunds(api, order) if t.chargeback)
    assert chargeback.money == Money(PAID - 1000, "USD")
    assert api.repo.get(order.id).refunded_amount == PAID
    assert balance(api.ctx.pool, order) == 0
    audit_clean(api.ctx.pool, site)


def test_a_dispute_of_more_than_is_left_while_our_refund_is_sent_goes_to_a_person(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given a paid order of 12.34 USD with a refund of ours of 10.00 still being sent,
    order = paid_stripe_order(api, site)
    delivered(api)
    mine = refund_being_sent(api, order, 1000)
    taken = chargebacks()
    # when the buyer's bank disputes the whole payment (more than the 2.34 our refund leaves:
    # Stripe may yet refuse our refund of a disputed charge, and its hold be released),
    for name in ("event_charge_dispute_created.json", "event_charge_dispute_funds_withdrawn.json"):
        _deliver(http, order, name)
    # then nothing is guessed: no chargeback is taken, the refusal is left to a person.
    (only,) = refunds(api, order)
    assert only.id == mine.id
    assert chargebacks() == taken
    assert refund_entries(api.ctx.pool, order) == []
    assert api.repo.get(order.id).refunded_amount == 0
    # A dispute within what is left is taken as usual, our refund in flight or not.
    other = paid_stripe_order(api, site)
    delivered(api)
    refund_being_sent(api, other, 1000)
    _deliver(http, other, "event_charge_dispute_created.json", amount=200)
    chargeback = next(t for t in refunds(api, other) if t.chargeback)
    assert chargeback.money == Money(200, "USD")


def test_a_dispute_in_another_currency_goes_to_a_person(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given a paid order of 12.34 USD, credited,
    order = paid_stripe_order(api, site)
    delivered(api)
    taken, counted = chargebacks(), refused()
    # when a dispute names an amount in euros (never to be read as cents of a dollar),
    for name in ("event_charge_dispute_created.json", "event_charge_dispute_funds_withdrawn.json"):
        _deliver(http, order, name, amount=500, currency="eur")
    # then nothing is taken: a person decides, told by the counter the alert watches.
    assert refunds(api, order) == []
    assert chargebacks() == taken
    assert refused() == counted + 2
    assert balance(api.ctx.pool, order) == PAID
    assert api.repo.get(order.id).refunded_amount == 0


def test_a_dispute_lost_then_won_leaves_the_wallet_as_before_once(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given a paid order, credited,
    order = paid_stripe_order(api, site)
    delivered(api)
    assert balance(api.ctx.pool, order) == PAID
    taken, given = chargebacks(), reversals()
    # when its dispute takes the money (each event delivered twice),
    for name in ("event_charge_dispute_created.json", "event_charge_dispute_funds_withdrawn.json"):
        _deliver(http, order, name)
        _deliver(http, order, name)
    assert balance(api.ctx.pool, order) == 0
    assert api.repo.get(order.id).refund_reserved == PAID
    # and is then won (closed as won, its funds reinstated: each delivered twice),
    for name in (
        "event_charge_dispute_closed_won.json",
        "event_charge_dispute_funds_reinstated.json",
    ):
        _deliver(http, order, name)
        _deliver(http, order, name)
    # then the wallet is as before the dispute, given back once, and the order's refund
    # accounting released: all of it may be refunded again.
    assert balance(api.ctx.pool, order) == PAID
    (chargeback,) = refunds(api, order)
    assert (chargeback.status, chargeback.money) == (TransferStatus.REVERSED, Money(PAID, "USD"))
    assert refund_entries(api.ctx.pool, order) == [-PAID]
    assert entries(api.ctx.pool, order, EntryKind.REFUND_REVERSAL) == [PAID]
    current = api.repo.get(order.id)
    assert (current.refunded_amount, current.refund_reserved) == (0, 0)
    assert (chargebacks(), reversals()) == (taken + 1, given + 1)
    # A status read still shows the charge disputed (Stripe's session, parsed by the adapter, as
    # the refund check does): that is the same chargeback, not another.
    read = disputed_status_read(api, current)
    assert (read.chargeback, read.refunded) == (True, Money(0, "USD"))
    disputed = unaccounted_refund(current, read.refunded, chargeback=read.chargeback)
    assert disputed is None
    # A payment system whose read says "disputed" with no refunded total: the order's chargeback
    # is found, and nothing more taken.
    a_disputed_read_takes_nothing(api, current, site)


def a_disputed_read_takes_nothing(api: Api, current: Order, site: str) -> None:
    """A status read saying the payment is disputed, with no refunded total, records nothing:
    the order's chargeback is found; the wallet keeps what was paid, and the audit is clean."""
    disputed = unaccounted_refund(current, None, chargeback=True)
    assert disputed is not None
    recorded = api.repo.run(
        api.ctx.transfers.record_reported_refund(current, disputed, actor="refund_check:stripe")
    )
    assert recorded is None
    assert balance(api.ctx.pool, current) == PAID
    audit_clean(api.ctx.pool, site)


def disputed_status_read(api: Api, order: Order) -> StatusReport:
    """What the Stripe adapter reports of ``order``'s paid session whose charge is disputed (the
    reconstructed fixture ``status_complete_paid_disputed.json``, made about this order)."""
    session = json.loads((FIXTURES / "status_complete_paid_disputed.json").read_text())
    session.update(id=order.psp_id, amount_total=order.money.amount)
    session["amount_subtotal"] = order.money.amount
    session["client_reference_id"] = str(order.id)
    session["metadata"]["order_id"] = str(order.id)
    intent = session["payment_intent"]
    intent.update(id=order.psp_payment_id, amount=order.money.amount)
    intent["amount_received"] = order.money.amount
    intent["latest_charge"].update(
        amount=order.money.amount, amount_captured=order.money.amount, payment_intent=intent["id"]
    )
    response = PspResponse(200, json.dumps(session).encode())
    runtime = api.ctx.runtimes["stripe"]
    return stripe.adapter.parse_status(order, response, runtime.settings, "status")


def test_a_dispute_won_that_took_nothing_gives_nothing_back(
    api: Api, http: httpx.Client, site: str
) -> None:
    # An inquiry (no funds withdrawn) later closed as won: nothing was taken, nothing is given.
    order = paid_stripe_order(api, site)
    delivered(api)
    _deliver(http, order, "event_charge_dispute_inquiry.json")
    _deliver(http, order, "event_charge_dispute_closed_won.json")
    assert [t.status for t in refunds(api, order)] == [TransferStatus.CANCELLED]
    assert entries(api.ctx.pool, order, EntryKind.REFUND_REVERSAL) == []
    assert balance(api.ctx.pool, order) == PAID


def test_a_dispute_won_before_it_was_created_takes_nothing(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given a paid order, credited,
    order = paid_stripe_order(api, site)
    delivered(api)
    taken, given = chargebacks(), reversals()
    # when its dispute's win arrives before the dispute itself (Stripe does not promise the
    # order of events; each delivered twice),
    for name in (
        "event_charge_dispute_closed_won.json",
        "event_charge_dispute_funds_reinstated.json",
        "event_charge_dispute_created.json",
        "event_charge_dispute_funds_withdrawn.json",
    ):
        _deliver(http, order, name)
        _deliver(http, order, name)
    # then nothing was taken and nothing given back: the win is remembered as the order's
    # chargeback, cancelled.
    (chargeback,) = refunds(api, order)
    assert (chargeback.status, chargeback.chargeback) == (TransferStatus.CANCELLED, True)
    assert chargeback.psp_transfer_id == f"du_{order.id.hex}"
    assert balance(api.ctx.pool, order) == PAID
    assert refund_entries(api.ctx.pool, order) == []
    assert entries(api.ctx.pool, order, EntryKind.REFUND_REVERSAL) == []
    current = api.repo.get(order.id)
    assert (current.refunded_amount, current.refund_reserved) == (0, 0)
    assert (chargebacks(), reversals()) == (taken, given)
    # A status read showing the charge disputed takes nothing either.
    a_disputed_read_takes_nothing(api, current, site)


def test_an_order_without_its_payment_id_gets_it_from_a_refund_check(
    api: Api, http: httpx.Client, site: str, pool: Pool
) -> None:
    # Given a paid order whose payment id was never stored (paid before migration 0013, or by a
    # person's resolution), which a dispute event therefore does not name,
    order = paid_stripe_order(api, site)
    delivered(api)
    intent = order.psp_payment_id
    assert intent is not None
    with pool.connection() as conn:
        conn.execute("UPDATE orders SET psp_payment_id = NULL WHERE id = %s", (order.id,))
    order = api.repo.get(order.id)
    _deliver(http, order, "event_charge_dispute_created.json", intent=intent)
    assert refunds(api, order) == []
    # when its refund check reads the payment (the worker's own step),
    transfers = SyncTransfers(api.repo)
    assert transfers.mark_refund_check(order.id, quiet=timedelta(0))
    claimed = transfers.claim_refund_checks(1000, timedelta(seconds=30))
    assert (order.id, "stripe") in claimed
    run_step(api, order.id, Action.REFUND_CHECK)
    # then the order holds its PaymentIntent again, and the dispute's events name it.
    assert api.repo.get(order.id).psp_payment_id == intent
    order = api.repo.get(order.id)
    _deliver(http, order, "event_charge_dispute_funds_withdrawn.json")
    (refund,) = refunds(api, order)
    assert (refund.chargeback, refund.money) == (True, Money(PAID, "USD"))
    assert balance(api.ctx.pool, order) == 0


def run_step(api: Api, order_id: uuid.UUID, action: Action) -> None:
    """One worker step of ``order_id`` on an engine with the API's runtimes and billing hooks."""

    async def run() -> None:
        engine_pool = await open_async_pool(api.repo.conninfo, max_size=2, name="tests-records")
        engine = Engine(
            Orders(engine_pool, api.repo.adapters),
            {"stripe": api.ctx.runtimes["stripe"]},
            paid_hook=hooks.build(BillingSettings()),
            transfer_hook=hooks.build_transfer_hook(BillingSettings()),
        )
        try:
            await engine.run(order_id, uuid.uuid4(), action)
        finally:
            await engine.aclose()
            await engine_pool.close()

    asyncio.run(run())


def test_a_charge_event_about_another_payment_than_the_order_s_records_nothing(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Signed, naming our order in its metadata, but about a PaymentIntent that did not pay it.
    order = paid_stripe_order(api, site)
    delivered(api)
    event = json.loads((FIXTURES / "event_charge_refunded.json").read_text())
    event["data"]["object"]["metadata"] = {"order_id": str(order.id)}
    event["data"]["object"]["payment_intent"] = f"pi_other{uuid.uuid4().hex}"
    event["created"] = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp())
    body = json.dumps(event).encode()
    headers = fake_stripe.signed_headers(body, fake_stripe.WEBHOOK_SECRET)
    assert http.post("/v1/callbacks/stripe", content=body, headers=headers).is_success
    assert refunds(api, order) == []
    assert balance(api.ctx.pool, order) == PAID


def test_a_paypal_refund_naming_only_its_capture_makes_the_order_s_refund_check_due(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given an order paid through PayPal, whose capture was stored when it was paid,
    new = NewOrder(site=site, user_id="buyer", money=Money(4000, "USD"), adapter="paypal")
    order = api.repo.create(new).order
    api.repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
    api.repo.transition(
        order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id="5O190127TN364715T"
    )
    api.repo.transition(
        order.id, S.AWAITING_PAYMENT, S.PAID, actor="test", psp_payment_id="3C679366HH908993F"
    )
    # when PayPal's webhook of a refund made in its dashboard comes (no custom_id of ours:
    # only the refund's "up" link names the capture; PayPal's webhooks are hints),
    event = json.loads(
        (FIXTURES.parent / "paypal" / "notification_payment_capture_refunded.json").read_text()
    )
    del event["resource"]["custom_id"], event["resource"]["invoice_id"]
    answer = http.post("/v1/callbacks/paypal", content=json.dumps(event).encode())
    assert answer.status_code == 200
    # then nothing is recorded on its word, and the order's refund check (our own read of the
    # payment) is due.
    assert refunds(api, order) == []
    with api.ctx.pool.connection() as conn:
        row = conn.execute("SELECT refund_check_at FROM orders WHERE id = %s", (order.id,))
        due = row.fetchone()
    assert due is not None
    assert due["refund_check_at"] is not None


def test_a_refunded_total_of_a_disputed_charge_is_a_refund_not_the_chargeback(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given a paid order whose charge Stripe reports refunded by 3.00 and disputed (charge.refunded
    # names a refunded total; "disputed" says nothing of how much the dispute takes),
    order = paid_stripe_order(api, site)
    delivered(api)
    event = json.loads((FIXTURES / "event_charge_refunded.json").read_text())
    charge = event["data"]["object"]
    charge.update(payment_intent=order.psp_payment_id, amount=PAID, amount_refunded=300)
    charge.update(disputed=True)
    event["created"] = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp())
    body = json.dumps(event).encode()
    headers = fake_stripe.signed_headers(body, fake_stripe.WEBHOOK_SECRET)
    assert http.post("/v1/callbacks/stripe", content=body, headers=headers).is_success
    # then the 3.00 is a refund, not a chargeback (a dispute won would give it back again),
    (refund,) = refunds(api, order)
    assert (refund.money, refund.chargeback) == (Money(300, "USD"), False)
    # and the dispute of 5.00 is taken when its own event comes.
    _deliver(http, order, "event_charge_dispute_created.json", amount=500)
    chargeback = next(t for t in refunds(api, order) if t.chargeback)
    assert chargeback.money == Money(500, "USD")
    assert balance(api.ctx.pool, order) == PAID - 800
    audit_clean(api.ctx.pool, site)


def test_a_refund_check_of_a_disputed_charge_s_refunded_total_counts_a_refund_not_a_chargeback(
    api: Api, site: str
) -> None:
    # Given a paid Stripe order whose charge Stripe shows refunded by 3.00 and disputed,
    order = paid_stripe_order(api, site)
    delivered(api)
    with api.stripe.lock:
        charge = api.stripe.sessions[order.psp_id or ""].intent["latest_charge"]  # type: ignore[index]
        charge.update(amount_refunded=300, disputed=True, refunded=False)
    taken = chargebacks()
    # when its refund check reads the payment (the worker's own step),
    transfers = SyncTransfers(api.repo)
    assert transfers.mark_refund_check(order.id, quiet=timedelta(0))
    assert (order.id, "stripe") in transfers.claim_refund_checks(1000, timedelta(seconds=30))
    run_step(api, order.id, Action.REFUND_CHECK)
    # then the 3.00 is recorded as a refund, and neither counted nor labelled a chargeback.
    (refund,) = refunds(api, order)
    assert (refund.money, refund.chargeback) == (Money(300, "USD"), False)
    assert refund.reason == "refunded at the payment system"
    assert chargebacks() == taken
