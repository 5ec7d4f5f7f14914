"""The operator CLI against a real database: status, orders list|show|stuck|poll|resolve,
and refunds (orders refund|refunds)."""

from __future__ import annotations

import json
import subprocess
from typing import Any
from uuid import UUID

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from dispatcher.billing.wallet import SyncWallets
from dispatcher.services import free_port
from orders import Money, NewOrder, OrderStatus
from orders.repository import OrderRepository
from tests.conftest import cli

S = OrderStatus


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def make(repo: OrderRepository, site: str, **kw: Any) -> UUID:
    new = NewOrder(site=site, user_id="u1", money=Money(1234, "USD"), adapter="sandbox", **kw)
    return repo.create(new).order.id


def to_review(repo: OrderRepository, order_id: UUID) -> None:
    repo.transition(order_id, S.NEW, S.SUBMITTING, actor="t")
    repo.transition(order_id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t", psp_id=f"p-{order_id}")
    repo.transition(
        order_id, S.AWAITING_PAYMENT, S.NEEDS_REVIEW, actor="t", detail={"reason": "mismatch"}
    )


def test_status_counts_orders_per_adapter_and_status(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    make(repo, site)
    data = as_json(cli(database_url, "status", "--json"))
    assert data["orders"]["sandbox"]["new"] >= 1
    assert data["due_now"] >= 1
    plain = cli(database_url, "status")
    assert "sandbox" in plain.stdout
    assert "oldest due" in plain.stdout


def test_orders_list_filters_and_show_prints_history(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    keep = make(repo, site, site_ref="ops-1")
    gone = make(repo, site, site_ref="ops-2")
    repo.cancel(gone)
    listed = as_json(
        cli(database_url, "orders", "list", "--site", site, "--status", "new", "--json")
    )
    assert [o["id"] for o in listed] == [str(keep)]
    shown = as_json(cli(database_url, "orders", "show", str(gone), "--json"))
    assert shown["status"] == "cancelled"
    assert [(e["from"], e["to"]) for e in shown["events"]] == [(None, "new"), ("new", "cancelled")]


def test_stuck_lists_needs_review_and_overdue_orders(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    review = make(repo, site)
    to_review(repo, review)
    overdue = make(repo, site)
    with repo.pool.connection() as conn:
        conn.execute(
            "UPDATE orders SET next_run_at = now() - interval '1 hour' WHERE id = %s", (overdue,)
        )
    fine = make(repo, site)
    stuck = {o["id"] for o in as_json(cli(database_url, "orders", "stuck", "--json"))}
    assert {str(review), str(overdue)} <= stuck
    assert str(fine) not in stuck


def test_poll_schedules_an_immediate_poll(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    order_id = make(repo, site)
    repo.transition(order_id, S.NEW, S.SUBMITTING, actor="t")
    later = repo.transition(
        order_id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t", psp_id=f"x-{order_id}",
        next_run_at=repo.get(order_id).expires_at,
    )  # fmt: skip
    assert later.next_run_at is not None
    result = cli(database_url, "orders", "poll", str(order_id))
    assert result.returncode == 0, result.stderr
    polled = repo.get(order_id)
    assert polled.next_run_at is not None
    assert polled.next_run_at < later.next_run_at


def resolve_to_paid(
    database_url: str, order_id: UUID, by: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """``paydispatch orders resolve ORDER --to paid --by BY`` with more ``options``."""
    return cli(
        database_url, "orders", "resolve", str(order_id), "--to", "paid", "--by", by, *options
    )


def test_resolve_records_who_why_and_evidence(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    order_id = make(repo, site)
    to_review(repo, order_id)
    result = resolve_to_paid(
        database_url, order_id, "alice",
        "--reason", "bank statement shows the full amount", "--evidence", "stmt-2026-11-21 line 4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    order = repo.get(order_id)
    assert order.status is S.PAID
    event = repo.events(order_id)[-1]
    assert event.actor == "ops:alice"
    assert event.detail["reason"] == "bank statement shows the full amount"
    assert event.detail["evidence"] == "stmt-2026-11-21 line 4"


def test_resolve_refuses_orders_not_in_review(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    order_id = make(repo, site)
    result = resolve_to_paid(database_url, order_id, "bob", "--reason", "x")
    assert result.returncode == 1
    assert repo.get(order_id).status is S.NEW


def test_resolve_refuses_what_the_database_cannot_hold_and_leaves_the_order_in_review(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    order_id = make(repo, site)
    to_review(repo, order_id)
    # A byte that is not UTF-8 on the command line reaches Python as a lone surrogate.
    result = resolve_to_paid(database_url, order_id, "alice", "--reason", "statement line \udcff")
    assert result.returncode == 1
    assert "reason" in result.stderr
    assert "Traceback" not in result.stderr
    result = resolve_to_paid(database_url, order_id, "a" * 197, "--reason", "bank statement")
    assert result.returncode == 1
    assert "paydispatch: by" in result.stderr
    assert "Traceback" not in result.stderr
    assert repo.get(order_id).status is S.NEEDS_REVIEW


def test_show_of_an_unknown_order_says_so(database_url: str) -> None:
    result = cli(database_url, "orders", "show", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 1
    assert "not found" in result.stderr


def test_status_shows_the_outbox_and_the_breakers_of_each_worker(database_url: str) -> None:
    # Given a worker whose metrics say the yookassa breaker is open,
    registry = CollectorRegistry()
    gauge = Gauge("paydispatch_breaker_state", "breaker", ["adapter"], registry=registry)
    gauge.labels("yookassa").set(2)
    gauge.labels("sandbox").set(0)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        # when an operator asks for the status,
        data = as_json(cli(database_url, "status", "--json", "--metrics", f"127.0.0.1:{port}"))
        text = cli(database_url, "status", "--metrics", f"127.0.0.1:{port}").stdout
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # then the breaker states and the outbox backlog are on the one screen.
    assert data["breakers"][f"127.0.0.1:{port}"] == {"yookassa": "open", "sandbox": "closed"}
    assert data["outbox"] == {"pending": 0, "parked": 0, "oldest_pending_seconds": 0.0}
    assert "yookassa open" in text
    assert "billing outbox: 0 pending" in text


def paid(repo: OrderRepository, site: str) -> UUID:
    """A paid order of 12.34 USD whose credit is in the user's wallet (as the paid hook does)."""
    order_id = make(repo, site)
    repo.transition(order_id, S.NEW, S.SUBMITTING, actor="t")
    repo.transition(order_id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t", psp_id=f"p-{order_id}")
    repo.transition(order_id, S.AWAITING_PAYMENT, S.PAID, actor="t")
    with SyncWallets(repo.pool) as wallets:
        wallets.credit(
            site, "u1", Money(1234, "USD"), kind="topup", key=None, description="top-up",
            order_id=order_id,
        )  # fmt: skip
    return order_id


def test_refund_records_who_asked_and_why_and_lists_the_refunds(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    order_id = paid(repo, site)
    made = as_json(
        cli(
            database_url, "orders", "refund", str(order_id), "--amount", "2.50", "--by", "carol",
            "--reason", "ticket 7: broken item", "--json",
        )
    )  # fmt: skip
    assert (made["amount"], made["currency"], made["status"]) == (250, "USD", "requested")
    assert (made["requested_by"], made["origin"]) == ("carol", "operator")
    assert made["reason"] == "ticket 7: broken item"
    assert made["created"] is True
    # Without --amount: all that is left
    rest = as_json(
        cli(database_url, "orders", "refund", str(order_id), "--by", "carol", "--reason", "all",
            "--json")
    )  # fmt: skip
    assert rest["amount"] == 1234 - 250
    listed = as_json(cli(database_url, "orders", "refunds", str(order_id), "--json"))
    assert [(r["id"], r["amount"]) for r in listed] == [(made["id"], 250), (rest["id"], 984)]
    plain = cli(database_url, "orders", "refunds", str(order_id))
    assert plain.returncode == 0, plain.stderr
    assert "carol" in plain.stdout
    assert "2.50 USD" in plain.stdout
    # The order's history names who asked
    shown = as_json(cli(database_url, "orders", "show", str(order_id), "--json"))
    assert any("carol" in e["actor"] for e in shown["events"]), shown["events"]
    # Requested, not given back yet: the order shows nothing refunded
    refunded = (shown["status"], shown["refunded_amount"], shown["refund_status"])
    assert refunded == ("paid", 0, "none")
    assert repo.get(order_id).status is S.PAID


def test_refund_with_a_key_is_made_once(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    order_id = paid(repo, site)
    args = ("orders", "refund", str(order_id), "--amount", "1", "--by", "dave", "--reason", "r",
            "--key", "ticket-8", "--json")  # fmt: skip
    first = as_json(cli(database_url, *args))
    again = as_json(cli(database_url, *args))
    assert again["id"] == first["id"]
    assert (first["created"], again["created"]) == (True, False)
    assert len(as_json(cli(database_url, "orders", "refunds", str(order_id), "--json"))) == 1


def test_refund_refuses_an_unpaid_order_too_much_and_a_bad_amount(
    database_url: str, repo: OrderRepository, site: str
) -> None:
    unpaid = make(repo, site)
    refused = cli(database_url, "orders", "refund", str(unpaid), "--by", "erin", "--reason", "r")
    assert refused.returncode == 1
    assert "paid" in refused.stderr
    order_id = paid(repo, site)
    for amount in ("12.35", "1.005", "abc", "0"):
        result = cli(
            database_url, "orders", "refund", str(order_id), "--amount", amount, "--by", "erin",
            "--reason", "r",
        )  # fmt: skip
        assert result.returncode != 0, (amount, result.stdout)
        assert "Traceback" not in result.stderr
    assert as_json(cli(database_url, "orders", "refunds", str(order_id), "--json")) == []


def test_refund_needs_by_and_reason(database_url: str, repo: OrderRepository, site: str) -> None:
    order_id = paid(repo, site)
    for missing in (("--reason", "r"), ("--by", "frank")):
        result = cli(database_url, "orders", "refund", str(order_id), *missing)
        assert result.returncode == 2  # argparse: a required option is missing
    assert as_json(cli(database_url, "orders", "refunds", str(order_id), "--json")) == []
