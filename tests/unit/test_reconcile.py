"""Reconciliation (issue #16): the pure comparison, the report's output, and the adapters' list
requests and answers (YooKassa's against fixtures reconstructed from its documentation)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from adapters import stripe, yookassa
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    MalformedResponse,
    NotSupported,
    PspResponse,
    StatusReport,
)
from adapters.registry import resolve_settings
from adapters.sandbox import adapter as sandbox_adapter
from adapters.testing import load_response, sample_order
from dispatcher.ops import reconcile, reconciliation
from dispatcher.ops.reconciliation import Books, Kind, Report, Seen, compare, summarise
from dispatcher.policy import load_policy
from dispatcher.runtime import AdapterRuntime
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

S = OrderStatus
C = CanonicalState
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yookassa"
DAY = date(2025, 2, 10)
SINCE, UNTIL = reconciliation.day_window(DAY)
USD = "USD"


def order(status: S = S.PAID, amount: int = 1000, site: str = "shop", **kw: Any) -> Order:
    order_id = kw.pop("id", uuid4())
    return replace(
        sample_order(),
        id=order_id,
        number=kw.pop("number", 7),
        site=site,
        adapter="sandbox",
        money=Money(amount, USD),
        status=status,
        psp_id=kw.pop("psp_id", f"inv_{order_id.hex[:8]}"),
        paid_at=SINCE + timedelta(hours=3) if status is S.PAID else None,
        **kw,
    )


def seen(state: C, psp_id: str | None, amount: int = 1000, order_id: UUID | None = None) -> Seen:
    report = StatusReport(state, psp_id=psp_id, money=Money(amount, USD), raw_status=str(state))
    return Seen(report, order_id)


def kinds(found: list[reconciliation.Difference]) -> list[tuple[Kind, UUID | None]]:
    return [(d.kind, d.order_id) for d in found]


# -- the comparison --------------------------------------------------------------------------


def test_a_payment_paid_on_both_sides_with_the_same_money_is_no_difference() -> None:
    paid = order()
    assert compare("sandbox", Books([paid]), [seen(C.PAID, paid.psp_id)]) == []


def test_an_order_paid_here_that_the_payment_system_shows_pending_is_paid_here_not_there() -> None:
    paid = order()
    found = compare("sandbox", Books([paid]), [seen(C.PENDING, paid.psp_id)])
    assert kinds(found) == [(Kind.PAID_HERE_NOT_THERE, paid.id)]
    assert (found[0].status_here, found[0].state_there) == ("paid", "pending")


def test_an_order_paid_here_whose_payment_is_nowhere_is_paid_here_not_there() -> None:
    paid = order()
    found = compare("sandbox", Books([paid]), [])
    assert kinds(found) == [(Kind.PAID_HERE_NOT_THERE, paid.id)]
    assert "shows no such payment" in found[0].detail


def test_an_unread_payment_is_a_problem_elsewhere_not_a_missing_payment() -> None:
    paid = order()
    assert compare("sandbox", Books([paid], unread={paid.id}), []) == []


def test_a_paid_payment_of_an_expired_order_is_paid_there_not_here() -> None:
    expired = order(S.EXPIRED)
    found = compare("sandbox", Books(known=[expired]), [seen(C.PAID, expired.psp_id)])
    assert kinds(found) == [(Kind.PAID_THERE_NOT_HERE, expired.id)]
    assert found[0].status_here == "expired"


def test_a_paid_payment_that_no_order_records_is_paid_there_not_here_under_no_site() -> None:
    found = compare("sandbox", Books(), [seen(C.PAID, "inv_stranger")])
    assert kinds(found) == [(Kind.PAID_THERE_NOT_HERE, None)]
    assert (found[0].site, found[0].psp_id) == (None, "inv_stranger")


def test_a_second_paid_payment_naming_a_paid_order_is_paid_there_not_here() -> None:
    paid = order()
    readings = [seen(C.PAID, paid.psp_id), seen(C.PAID, "inv_second", order_id=paid.id)]
    found = compare("sandbox", Books([paid]), readings)
    assert kinds(found) == [(Kind.PAID_THERE_NOT_HERE, paid.id)]
    assert found[0].psp_id == "inv_second"
    assert "second payment" in found[0].detail


def test_an_unpaid_second_payment_naming_an_order_is_no_difference() -> None:
    paid = order()
    readings = [seen(C.PAID, paid.psp_id), seen(C.EXPIRED, "inv_second", order_id=paid.id)]
    assert compare("sandbox", Books([paid]), readings) == []


@pytest.mark.parametrize(
    ("there", "currency"), [(1500, USD), (1000, "EUR")], ids=["amount", "currency"]
)
def test_paid_on_both_sides_with_other_money_is_an_amount_mismatch(
    there: int, currency: str
) -> None:
    paid = order()
    report = StatusReport(C.PAID, psp_id=paid.psp_id, money=Money(there, currency))
    found = compare("sandbox", Books([paid]), [Seen(report)])
    assert kinds(found) == [(Kind.AMOUNT_MISMATCH, paid.id)]
    assert (found[0].money_here, found[0].money_there) == (paid.money, Money(there, currency))


def test_a_refund_at_the_payment_system_without_one_recorded_is_refund_not_recorded() -> None:
    paid = order()
    found = compare(
        "sandbox", Books([paid], refunded={paid.id: 400}), [seen(C.REFUNDED, paid.psp_id)]
    )
    assert kinds(found) == [(Kind.REFUND_NOT_RECORDED, paid.id)]
    assert "4.00 USD of 10.00 USD" in found[0].detail


def test_a_refund_recorded_in_full_matches_a_refunded_payment() -> None:
    paid = order()
    books = Books([paid], refunded={paid.id: 1000})
    assert compare("sandbox", books, [seen(C.REFUNDED, paid.psp_id)]) == []


def test_an_order_in_review_is_listed_once_whatever_the_payment_system_says() -> None:
    review = order(S.NEEDS_REVIEW, last_error="amount differs")
    found = compare(
        "sandbox", Books(known=[review], review=[review]), [seen(C.PAID, review.psp_id)]
    )
    assert kinds(found) == [(Kind.NEEDS_REVIEW, review.id)]
    assert "amount differs" in found[0].detail


def test_unpaid_payments_of_unpaid_orders_are_no_difference() -> None:
    expired = order(S.EXPIRED)
    assert compare("sandbox", Books(known=[expired]), [seen(C.EXPIRED, expired.psp_id)]) == []


def test_summaries_count_paid_orders_refunds_and_payments_per_site() -> None:
    mine, theirs = order(amount=1000), order(amount=250, site="other")
    readings = [seen(C.PAID, mine.psp_id), seen(C.PAID, theirs.psp_id, 250), seen(C.PAID, "x")]
    books = Books([mine, theirs])
    differences = compare("sandbox", books, readings)
    summaries = summarise(
        "sandbox",
        books,
        readings,
        method="list",
        refunds=[("shop", Money(300, USD), 2)],
        differences=differences,
    )
    by_site = {s.site: s for s in summaries}
    assert list(by_site) == ["other", "shop", None]
    shop = by_site["shop"]
    assert (shop.paid_orders, shop.paid, shop.refunds, shop.refunded) == (
        1,
        {USD: 1000},
        2,
        {USD: 300},
    )
    assert (shop.paid_there, shop.paid_there_amounts, shop.differences) == (1, {USD: 1000}, 0)
    assert (by_site[None].paid_there, by_site[None].differences) == (1, 1)


# -- output -----------------------------------------------------------------------------------


def sample_report() -> Report:
    paid, expired = order(number=11), order(S.EXPIRED, number=12)
    books = Books([paid], known=[expired])
    readings = [seen(C.PENDING, paid.psp_id), seen(C.PAID, expired.psp_id)]
    differences = compare("sandbox", books, readings)
    summaries = summarise(
        "sandbox", books, readings, method="list", refunds=[], differences=differences
    )
    return Report(DAY, SINCE, UNTIL, summaries, differences)


def test_json_output_lists_summaries_and_differences_in_minor_units() -> None:
    data = reconciliation.to_json(sample_report())
    assert (data["date"], data["ok"]) == ("2025-02-10", False)
    assert data["summaries"][0]["paid"] == {USD: 1000}
    assert [d["kind"] for d in data["differences"]] == [
        "paid_here_not_there",
        "paid_there_not_here",
    ]
    assert data["differences"][1]["money_there"] == {"amount": 1000, "currency": USD}
    json.dumps(data)  # serialisable as it is


def test_csv_output_has_summary_rows_then_one_row_per_difference() -> None:
    out = io.StringIO()
    reconciliation.write_csv(sample_report(), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["record"] for r in rows] == ["summary", "difference", "difference"]
    assert (rows[0]["currency"], rows[0]["paid_amount"], rows[0]["differences"]) == (
        USD,
        "1000",
        "2",
    )
    assert [r["number"] for r in rows[1:]] == ["11", "12"]


def test_exit_code_is_2_for_problems_1_for_differences_0_otherwise() -> None:
    report = sample_report()
    assert report.exit_code == 1
    report.problems.append(reconciliation.Problem("sandbox", "list failed"))
    assert report.exit_code == 2
    assert Report(DAY, SINCE, UNTIL).exit_code == 0


# -- the status path: bounded re-reads through the transport --------------------------------


def runtime_for(adapter: Any, settings: dict[str, str]) -> AdapterRuntime:
    env = {"PAYDISPATCH_SANDBOX_RETRIES": "0", "PAYDISPATCH_YOOKASSA_RETRIES": "0"}
    return AdapterRuntime(
        adapter, resolve_settings(adapter, settings, env), load_policy(adapter, {}, env)
    )


def test_status_reads_keep_within_the_concurrency_and_report_unreadable_orders() -> None:
    from dispatcher.worker.transport import Transport

    runtime = runtime_for(sandbox_adapter, {})
    orders = [order(number=n, psp_id=f"inv_{n}") for n in range(1, 8)]
    in_flight, most = 0, 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)  # let the other reads start, if they may
        in_flight -= 1
        psp_id = request.url.path.rsplit("/", 1)[1]
        if psp_id == "inv_3":
            return httpx.Response(200, text="<html>bad gateway</html>")
        body = {"id": psp_id, "status": "paid", "amount": 1000, "currency": USD}
        return httpx.Response(200, json=body)

    async def read() -> tuple[list[Seen], list[reconciliation.Problem]]:
        transport = Transport(
            runtime.adapter,
            runtime.settings,
            runtime.policy,
            http_transport=httpx.MockTransport(answer),
        )
        try:
            return await reconcile._read_statuses(runtime, transport, orders, 2, lambda _: None)
        finally:
            await transport.aclose()

    readings, problems = asyncio.run(read())
    assert most <= 2
    assert sorted(r.report.psp_id or "" for r in readings) == [
        f"inv_{n}" for n in (1, 2, 4, 5, 6, 7)
    ]
    assert [p.order_id for p in problems] == [orders[2].id]
    assert all(r.via == "status" and r.order_id is not None for r in readings)


# -- the sandbox's list ------------------------------------------------------------------------


def sandbox_settings() -> AdapterSettings:
    return resolve_settings(sandbox_adapter, {"API_URL": "http://127.0.0.1:8765"}, {})


def test_sandbox_list_request_asks_for_the_window_and_follows_the_cursor() -> None:
    request = sandbox_adapter.build_list(sandbox_settings(), SINCE, UNTIL, "inv_41")
    assert (request.method, request.url, request.operation) == (
        "GET",
        "http://127.0.0.1:8765/api/v1/invoices",
        "list",
    )
    assert dict(request.params) == {
        "created_gte": "2025-02-10T00:00:00+00:00",
        "created_lt": "2025-02-11T00:00:00+00:00",
        "limit": "100",
        "starting_after": "inv_41",
    }
    assert request.headers["Authorization"] == "Bearer sandbox-key"


def test_sandbox_list_answer_gives_reports_with_the_order_they_name() -> None:
    body = {
        "items": [
            {"id": "inv_1", "status": "paid", "amount": 1999, "currency": USD, "order_id": "o-1"},
            {"id": "inv_2", "status": "refunded", "amount": 500, "currency": "EUR"},
        ],
        "next_cursor": "inv_2",
    }
    page = sandbox_adapter.parse_list(
        PspResponse(200, json.dumps(body).encode()), sandbox_settings()
    )
    assert page.next_cursor == "inv_2"
    assert [
        (p.report.psp_id, p.report.state, p.report.money, p.ref.order_id) for p in page.payments
    ] == [
        ("inv_1", C.PAID, Money(1999, USD), "o-1"),
        ("inv_2", C.REFUNDED, Money(500, "EUR"), None),
    ]


def test_sandbox_list_answer_with_an_unreadable_item_is_malformed_not_shortened() -> None:
    body = {"items": [{"id": "inv_1", "status": "sold", "amount": 1, "currency": USD}]}
    with pytest.raises(MalformedResponse):
        sandbox_adapter.parse_list(PspResponse(200, json.dumps(body).encode()), sandbox_settings())


# -- YooKassa's list (fixtures reconstructed from its documentation) ------------------------


def yookassa_settings() -> AdapterSettings:
    return resolve_settings(yookassa.adapter, {"shop_id": "100500", "secret_key": "test_key"}, {})


def test_yookassa_list_request_filters_by_creation_time_as_the_reference_writes_it() -> None:
    first = yookassa.adapter.build_list(yookassa_settings(), SINCE, UNTIL, None)
    assert (first.method, first.url, first.operation) == (
        "GET",
        "https://api.yookassa.ru/v3/payments",
        "list",
    )
    assert dict(first.params) == {
        "created_at.gte": "2025-02-10T00:00:00.000Z",
        "created_at.lt": "2025-02-11T00:00:00.000Z",
        "limit": "100",
    }
    assert first.headers["Authorization"].startswith("Basic ")
    assert "Idempotence-Key" not in first.headers
    cursor = "37a5c87d-3984-51e8-a7f3-8de646d39ec15"
    later = yookassa.adapter.build_list(yookassa_settings(), SINCE, UNTIL, cursor)
    assert dict(later.params)["cursor"] == cursor


def test_yookassa_list_time_is_utc_with_milliseconds() -> None:
    moscow = timezone(timedelta(hours=3))
    moment = datetime(2025, 2, 10, 16, 14, 5, 555_000, tzinfo=moscow)
    assert yookassa.list_time(moment) == "2025-02-10T13:14:05.555Z"


def test_yookassa_first_page_reads_each_payment_and_the_next_cursor() -> None:
    page = yookassa.adapter.parse_list(
        load_response(FIXTURES / "list_payments_first_page.json"), yookassa_settings()
    )
    assert page.next_cursor == "37a5c87d-3984-51e8-a7f3-8de646d39ec15"
    assert [
        (p.report.psp_id, p.report.state, p.report.money, p.ref.order_id) for p in page.payments
    ] == [
        (
            "2f3b588d-000f-5000-8000-1d6e87c7fbde",
            C.PAID,
            Money(10000, "RUB"),
            "0b7e9f4c-3d2a-4c1b-9a8e-5f6d7c8b9a01",
        ),
        (
            "2f3b5a10-000f-5000-9000-1b2c3d4e5f60",
            C.EXPIRED,
            Money(10000, "RUB"),
            "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e40",
        ),
    ]


def test_yookassa_last_page_has_no_cursor_and_payments_without_our_metadata() -> None:
    page = yookassa.adapter.parse_list(
        load_response(FIXTURES / "list_payments_last_page.json"), yookassa_settings()
    )
    assert page.next_cursor is None
    assert [(p.report.state, p.report.money, p.ref.order_id) for p in page.payments] == [
        (C.REFUNDED, Money(10000, "RUB"), "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a01"),
        (C.PAID, Money(250000, "RUB"), None),
    ]


def test_yookassa_list_with_an_unreadable_payment_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="without a status"):
        yookassa.adapter.parse_list(
            load_response(FIXTURES / "list_payments_item_without_status.json"),
            yookassa_settings(),
        )


def test_yookassa_list_refused_for_our_credentials_raises_credentials_rejected() -> None:
    with pytest.raises(CredentialsRejected):
        yookassa.adapter.parse_list(
            load_response(FIXTURES / "error_invalid_credentials.json", 401), yookassa_settings()
        )


def test_adapters_without_a_list_say_so() -> None:
    from adapters import robokassa

    assert not robokassa.adapter.capabilities.list_payments
    with pytest.raises(NotSupported):
        robokassa.adapter.build_list(yookassa_settings(), SINCE, UNTIL, None)


# -- Stripe's session list (fixtures reconstructed from its documentation) -------------------

STRIPE_FIXTURES = FIXTURES.parent / "stripe"


def stripe_settings() -> AdapterSettings:
    values = {"secret_key": "sk_test_123", "webhook_secrets": "whsec_test"}
    return resolve_settings(stripe.adapter, values, {})


def test_stripe_list_request_filters_by_creation_and_expands_the_charge() -> None:
    request = stripe.adapter.build_list(stripe_settings(), SINCE, UNTIL, "cs_test_last")
    assert (request.method, request.url, request.operation) == (
        "GET",
        "https://api.stripe.com/v1/checkout/sessions",
        "list",
    )
    assert list(request.params) == [
        ("created[gte]", "1739145600"),
        ("created[lt]", "1739232000"),
        ("limit", "100"),
        ("expand[]", "data.payment_intent.latest_charge"),
        ("starting_after", "cs_test_last"),
    ]
    assert request.headers["Authorization"] == "Bearer sk_test_123"
    assert "Idempotency-Key" not in request.headers


def test_stripe_first_page_continues_after_its_last_session() -> None:
    page = stripe.adapter.parse_list(
        load_response(STRIPE_FIXTURES / "list_sessions_first_page.json"), stripe_settings()
    )
    assert page.next_cursor == "cs_test_b2Rn5lZqO9sUa3XcWd7YfMe1IgHk4Tv6Jp8Qb0Lo2Nr3St5Uv7Wx9Yz1Ac"
    assert [(p.report.state, p.report.money, p.ref.order_id) for p in page.payments] == [
        (C.PAID, Money(2000, USD), "0b7e9f4c-3d2a-4c1b-9a8e-5f6d7c8b9a01"),
        (C.EXPIRED, Money(2000, USD), "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e40"),
    ]


def test_stripe_last_page_reads_refunds_and_leaves_out_setup_sessions() -> None:
    page = stripe.adapter.parse_list(
        load_response(STRIPE_FIXTURES / "list_sessions_last_page.json"), stripe_settings()
    )
    assert page.next_cursor is None
    assert [(p.report.psp_id, p.report.state) for p in page.payments] == [
        ("cs_test_c3So6mArP0tVb4YdXe8ZgNf2JhIl5Uw7Kq9Rc1Mp3Os4Tu6Vw8Xy0Za2Bd", C.REFUNDED)
    ]


def test_stripe_list_refused_for_our_key_raises_credentials_rejected() -> None:
    with pytest.raises(CredentialsRejected):
        stripe.adapter.parse_list(
            load_response(STRIPE_FIXTURES / "error_authentication.json", 401), stripe_settings()
        )


def test_stripe_list_that_is_not_a_list_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        stripe.adapter.parse_list(
            load_response(STRIPE_FIXTURES / "status_complete_paid.json"), stripe_settings()
        )
