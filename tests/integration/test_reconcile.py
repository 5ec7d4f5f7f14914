"""``paydispatch reconcile`` as an operator runs it: the real command over a database and the
sandbox payment system, with one planted difference of each kind (issue #16)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from typing import Any, ClassVar

import httpx
import pytest

from adapters import registry
from adapters.base import Capabilities
from adapters.registry import resolve_settings
from adapters.sandbox import Sandbox
from adapters.sandbox import adapter as sandbox_adapter
from adapters.sandbox.runner import SandboxHandle
from dispatcher import config
from dispatcher.billing.wallet import EntryKind, SyncWallets
from dispatcher.cli import build_parser
from dispatcher.ops import reconcile
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool
from orders.model import Order
from orders.repository import OrderRepository
from tests.conftest import cli
from tests.dispatch_support import SandboxControl

S = OrderStatus
TEN_DOLLARS = Money(1000, "USD")


def reconcile_cli(
    database_url: str, sandbox: SandboxHandle, *args: str
) -> subprocess.CompletedProcess[str]:
    """``paydispatch reconcile ARGS``, the sandbox enabled at its URL."""
    return cli(
        database_url,
        "reconcile",
        *args,
        ADAPTERS="sandbox",
        SANDBOX_API_URL=sandbox.url,
        SANDBOX_RETRIES="0",
    )


class Plant:
    """Orders in the database and invoices at the sandbox, each side set up on its own."""

    def __init__(self, repo: OrderRepository, sandbox: SandboxHandle, site: str) -> None:
        self.repo = repo
        self.site = site
        self.settings = resolve_settings(sandbox_adapter, {"API_URL": sandbox.url}, {})
        self.client = httpx.Client(base_url=sandbox.url, timeout=10)

    def order(self) -> Order:
        new = NewOrder(
            site=self.site, user_id="u1", money=TEN_DOLLARS, adapter="sandbox", description="t"
        )
        return self.repo.create(new).order

    def invoice(self, order: Order, money: Money | None = None, *moves: str) -> str:
        """An invoice at the sandbox for ``order`` (of ``money``), then each control move."""
        asked = replace(order, money=money or order.money)
        request = sandbox_adapter.build_create(asked, self.settings)
        response = self.client.request(
            request.method, request.url, headers=dict(request.headers), json=request.json
        )
        response.raise_for_status()
        psp_id: str = response.json()["id"]
        for move in moves:
            self.client.post(f"/_control/invoices/{psp_id}/{move}").raise_for_status()
        return psp_id

    def record(self, order: Order, psp_id: str, *path: S) -> Order:
        """The order submitted with ``psp_id``, then moved along ``path``."""
        self.repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
        moved = self.repo.transition(
            order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=psp_id
        )
        for status in path:
            moved = self.repo.transition(order.id, moved.status, status, actor="test")
        return moved

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def plant(
    repo: OrderRepository, sandbox: SandboxHandle, control: SandboxControl, site: str
) -> Iterator[Plant]:
    planted = Plant(repo, sandbox, site)
    yield planted
    planted.close()


def plant_one_of_each(plant: Plant, pool: Pool) -> dict[str, Any]:
    """A matching payment, a refund recorded, and one difference of each kind."""
    ids: dict[str, Any] = {}
    matched = plant.order()
    plant.record(matched, plant.invoice(matched, None, "pay"), S.PAID)

    refunded_recorded = plant.order()
    plant.record(refunded_recorded, plant.invoice(refunded_recorded, None, "pay", "refund"), S.PAID)
    with SyncWallets(pool) as wallets:
        wallets.credit(
            plant.site, "u1", TEN_DOLLARS, kind=EntryKind.TOPUP, key=f"t-{refunded_recorded.id}",
            description="top-up", order_id=refunded_recorded.id,
        )  # fmt: skip
        wallets.refund(
            plant.site, "u1", TEN_DOLLARS, order_id=refunded_recorded.id,
            key=f"r-{refunded_recorded.id}", description="refunded at the sandbox",
        )  # fmt: skip

    unpaid_there = plant.order()  # paid here, the invoice still pending
    ids["paid_here_not_there"] = plant.record(unpaid_there, plant.invoice(unpaid_there), S.PAID)

    expired_here = plant.order()  # expired here, paid at the sandbox
    plant.record(expired_here, plant.invoice(expired_here, None, "pay"), S.EXPIRED)
    ids["paid_there_not_here"] = expired_here.id

    stranger = replace(matched, id=uuid.uuid4(), number=matched.number + 100_000)
    ids["stranger"] = plant.invoice(stranger, None, "pay")  # no order of ours at all

    other_amount = plant.order()  # 10.00 here, 15.00 there
    psp_id = plant.invoice(other_amount, Money(1500, "USD"), "pay")
    ids["amount_mismatch"] = plant.record(other_amount, psp_id, S.PAID).id

    refunded = plant.order()  # refunded at the sandbox, nothing recorded here
    ids["refund_not_recorded"] = plant.record(
        refunded, plant.invoice(refunded, None, "pay", "refund"), S.PAID
    ).id

    review = plant.order()
    ids["needs_review"] = plant.record(review, plant.invoice(review), S.NEEDS_REVIEW).id
    ids["day"] = plant.repo.get(matched.id).paid_at.date()  # type: ignore[union-attr]
    return ids


def test_reconcile_lists_one_difference_of_each_kind_and_exits_1(
    database_url: str, sandbox: SandboxHandle, plant: Plant, pool: Pool
) -> None:
    # Given a day with one payment matching, one refund recorded, and one difference of each kind
    ids = plant_one_of_each(plant, pool)
    day: date = ids["day"]

    # When the operator asks for the day's report as JSON
    result = reconcile_cli(
        database_url, sandbox, "--date", day.isoformat(), "--site", plant.site, "--format", "json"
    )

    # Then each planted difference is listed once, and nothing else
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    found = {(d["kind"], d["order_id"] or d["psp_id"]) for d in report["differences"]}
    assert found == {
        ("paid_here_not_there", str(ids["paid_here_not_there"].id)),
        ("paid_there_not_here", str(ids["paid_there_not_here"])),
        ("paid_there_not_here", ids["stranger"]),
        ("amount_mismatch", str(ids["amount_mismatch"])),
        ("refund_not_recorded", str(ids["refund_not_recorded"])),
        ("needs_review", str(ids["needs_review"])),
    }
    assert len(report["differences"]) == 6
    mismatch = next(d for d in report["differences"] if d["kind"] == "amount_mismatch")
    assert (mismatch["money_here"]["amount"], mismatch["money_there"]["amount"]) == (1000, 1500)
    # And the site's summary counts what was paid and refunded here and paid there
    summaries = {s["site"]: s for s in report["summaries"]}
    mine = summaries[plant.site]
    assert (mine["method"], mine["paid_orders"], mine["paid"]) == ("list", 5, {"USD": 5000})
    assert (mine["refunds"], mine["refunded"]) == (1, {"USD": 1000})
    # matched 10.00, the mismatch's 15.00 and the expired order's 10.00 show paid there
    assert (mine["paid_there"], mine["paid_there_amounts"]) == (3, {"USD": 3500})
    assert mine["differences"] == 5
    assert summaries[None]["differences"] == 1  # the payment that names no order of ours
    assert "sandbox: listed 8 payments" in result.stderr


def test_reconcile_writes_the_same_report_as_csv_to_a_file(
    database_url: str, sandbox: SandboxHandle, plant: Plant, pool: Pool, tmp_path: Any
) -> None:
    ids = plant_one_of_each(plant, pool)
    out = tmp_path / "recon.csv"

    result = reconcile_cli(
        database_url,
        sandbox,
        "--date",
        ids["day"].isoformat(),
        "--site",
        plant.site,
        "--format",
        "csv",
        "--output",
        str(out),
    )

    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    differences = sorted(r["kind"] for r in rows if r["record"] == "difference")
    assert differences == [
        "amount_mismatch",
        "needs_review",
        "paid_here_not_there",
        "paid_there_not_here",
        "paid_there_not_here",
        "refund_not_recorded",
    ]
    summary = next(r for r in rows if r["record"] == "summary" and r["site"] == plant.site)
    assert (summary["currency"], summary["paid_orders"], summary["paid_amount"]) == (
        "USD",
        "5",
        "5000",
    )


def test_reconcile_of_a_day_that_matches_exits_0(
    database_url: str, sandbox: SandboxHandle, plant: Plant
) -> None:
    matched = plant.order()
    paid = plant.record(matched, plant.invoice(matched, None, "pay"), S.PAID)
    assert paid.paid_at is not None

    result = reconcile_cli(
        database_url, sandbox, "--date", paid.paid_at.date().isoformat(), "--site", plant.site
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "differences: none" in result.stdout
    assert "paid here:   1 orders, 10.00 USD" in result.stdout


def test_reconcile_exits_2_when_the_payment_system_cannot_list(
    database_url: str, sandbox: SandboxHandle, plant: Plant, control: SandboxControl
) -> None:
    # Given a paid order, and a sandbox whose list answers 500 every time
    matched = plant.order()
    paid = plant.record(matched, plant.invoice(matched, None, "pay"), S.PAID)
    assert paid.paid_at is not None
    control.faults("list", rate=1.0, choices=[{"kind": "http_500"}])

    result = reconcile_cli(
        database_url,
        sandbox,
        "--date",
        paid.paid_at.date().isoformat(),
        "--site",
        plant.site,
        "--format",
        "json",
    )

    # Then the report says it is incomplete, and calls no paid order missing for it
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["differences"] == []
    assert [e["adapter"] for e in report["errors"]] == ["sandbox"]
    assert "payments not listed" in report["errors"][0]["message"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--date", "2026-13-01"], "is not a date YYYY-MM-DD"),
        (["--concurrency", "0"], "is not a whole number of 1 or more"),
    ],
)
def test_reconcile_refuses_options_it_cannot_use(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["reconcile", *args])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_sandbox_lists_invoices_of_a_window_page_by_page(
    sandbox: SandboxHandle, plant: Plant
) -> None:
    created = [plant.invoice(plant.order()) for _ in range(3)]
    auth = {"Authorization": "Bearer sandbox-key"}
    window = {"created_gte": "2000-01-01T00:00:00+00:00", "created_lt": "2100-01-01T00:00:00+00:00"}

    first = plant.client.get("/api/v1/invoices", params=window | {"limit": "2"}, headers=auth)
    after = first.json()["next_cursor"]
    rest = plant.client.get(
        "/api/v1/invoices", params=window | {"limit": "2", "starting_after": after}, headers=auth
    )
    empty = plant.client.get(
        "/api/v1/invoices", params={"created_lt": "2000-01-01T00:00:00+00:00"}, headers=auth
    )
    unknown = plant.client.get(
        "/api/v1/invoices", params={"starting_after": "inv_nobody"}, headers=auth
    )

    assert [i["id"] for i in first.json()["items"]] == created[:2]
    assert after == created[1]
    assert ([i["id"] for i in rest.json()["items"]], rest.json()["next_cursor"]) == (
        created[2:],
        None,
    )
    assert empty.json() == {"items": [], "next_cursor": None}
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "invalid_cursor")


class PolledSandbox(Sandbox):
    """The sandbox as a payment system without a list: reconciled through status calls."""

    name: ClassVar[str] = "polledsandbox"
    capabilities: ClassVar[Capabilities] = replace(Sandbox.capabilities, list_payments=False)


@pytest.fixture
def polled(sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[PolledSandbox]:
    """The adapter registered in this process and pointed at the sandbox."""
    monkeypatch.setenv("PAYDISPATCH_POLLEDSANDBOX_API_URL", sandbox.url)
    adapter = PolledSandbox()
    registry.register(adapter)
    yield adapter
    registry.unregister(adapter.name)


def test_a_payment_system_without_a_list_is_reconciled_by_status_calls(
    database_url: str,
    plant: Plant,
    pool: Pool,
    polled: PolledSandbox,
    request: pytest.FixtureRequest,
) -> None:
    # Given orders of a payment system without a list: one paid on both sides, one paid here
    # only, one expired here but paid there, one expired on both sides
    repo = OrderRepository(pool, {polled.name: timedelta(hours=1)})
    request.addfinalizer(repo.close)

    def order() -> Order:
        new = NewOrder(site=plant.site, user_id="u1", money=TEN_DOLLARS, adapter=polled.name)
        return repo.create(new).order

    matched, unpaid_there, paid_there, expired = order(), order(), order(), order()
    day = plant.record(matched, plant.invoice(matched, None, "pay"), S.PAID).paid_at
    assert day is not None
    plant.record(unpaid_there, plant.invoice(unpaid_there), S.PAID)
    plant.record(paid_there, plant.invoice(paid_there, None, "pay"), S.EXPIRED)
    plant.record(expired, plant.invoice(expired, None, "decline"), S.EXPIRED)
    calls_before = plant.client.get("/_control/stats").json()["calls"]["status"]
    environ = {"PAYDISPATCH_DATABASE_URL": database_url, "PAYDISPATCH_BROKER_URL": "redis://x:1"}
    lines: list[str] = []

    # When the day is reconciled in-process (the adapter is registered only here)
    report = reconcile.run(
        config.load(environ),
        day.date(),
        site=plant.site,
        adapter=polled.name,
        concurrency=2,
        progress=lines.append,
    )

    # Then every order was read once, and the two differences are found
    assert plant.client.get("/_control/stats").json()["calls"]["status"] - calls_before == 4
    assert sorted((str(d.kind), d.order_id) for d in report.differences) == sorted(
        [("paid_here_not_there", unpaid_there.id), ("paid_there_not_here", paid_there.id)]
    )
    assert report.exit_code == 1
    (summary,) = report.summaries
    assert (summary.method, summary.paid_orders, summary.paid_there) == ("status", 2, 2)
    assert lines[-1] == "polledsandbox: re-read 4/4 orders"
