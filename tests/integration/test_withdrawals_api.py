"""Withdrawals through the HTTP API, the Python client and the CLI (issue #14): 201 then 200 for a
replay, 409 ``withdrawal_refused`` with the reason, 404 for another user's or site's, cancel
before sending and 409 after, never a 500. The payout itself is moved as the worker would."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from adapters.sandbox import Sandbox
from dispatcher.billing.wallet import EntryKind, SyncWallets
from dispatcher.config import WithdrawalSettings
from orders.client import Client, Conflict, KeyConflict, NotFound
from orders.db import Pool
from orders.model import TransferStatus
from orders.money import Money
from tests.conftest import cli
from tests.integration.test_api import Api, error, running_api
from tests.integration.test_withdrawals import move, wallet

SETTINGS = WithdrawalSettings(
    minimum=Decimal("1.00"),
    fee_fixed=Decimal("0.30"),
    fee_percent=Decimal("1.5"),
    daily_limit=Decimal("500"),
    adapter="sandbox",
)
DEST = {"account": "acc-1"}


@pytest.fixture(scope="module")
def api(pool: Pool, found_services: Any) -> Iterator[Api]:
    with running_api(pool, broker_url=found_services.broker_url) as running:
        running.ctx.withdrawals.settings = SETTINGS
        running.ctx.withdrawals.capabilities = {"sandbox": Sandbox.capabilities}
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


@pytest.fixture
def auth(api: Api, site: str) -> dict[str, str]:
    return api.site_key(site)


@pytest.fixture
def funded(pool: Pool, site: str) -> str:
    """A user of the site with 100.00 RUB."""
    with SyncWallets(pool) as wallets:
        wallets.credit(
            site, "u1", Money(10_000, "RUB"), kind=EntryKind.ADJUSTMENT, key=f"top-{uuid4()}",
            description="test top-up",
        )  # fmt: skip
    return "u1"


def withdraw(
    http: httpx.Client,
    auth: dict[str, str],
    user: str,
    amount: int,
    *,
    key: str | None = None,
    extra: dict[str, Any] | None = None,
) -> httpx.Response:
    body = {"amount": amount, "currency": "RUB", "destination": DEST} | (extra or {})
    headers = auth | {"Idempotency-Key": key or f"k-{uuid4()}"}
    return http.post(f"/v1/wallets/{user}/withdrawals", json=body, headers=headers)


def test_a_withdrawal_is_created_then_replayed_and_listed(
    pool: Pool, http: httpx.Client, auth: dict[str, str], funded: str, site: str
) -> None:
    first = withdraw(http, auth, funded, 1001, key="w-1")
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["amount"], body["fee"], body["status"]) == (1001, 46, "approved")
    assert body["transfer_id"] is not None
    assert wallet(pool, site, funded) == (10_000 - 1047, 1047)
    again = withdraw(http, auth, funded, 1001, key="w-1")
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    conflict = withdraw(http, auth, funded, 2000, key="w-1")
    assert conflict.status_code == 409
    assert error(conflict)["code"] == "idempotency_conflict"
    listed = http.get(f"/v1/wallets/{funded}/withdrawals", headers=auth).json()
    assert [w["id"] for w in listed["items"]] == [body["id"]]
    one = http.get(f"/v1/wallets/{funded}/withdrawals/{body['id']}", headers=auth)
    assert one.status_code == 200
    assert one.json()["destination"] == DEST


@pytest.mark.parametrize(
    ("amount", "reason"),
    [(50, "below the minimum"), (9_999, "insufficient funds"), (60_000, "over the daily limit")],
)
def test_refusals_are_409_withdrawal_refused_with_the_reason(
    http: httpx.Client, auth: dict[str, str], funded: str, amount: int, reason: str
) -> None:
    response = withdraw(http, auth, funded, amount)
    assert response.status_code == 409
    assert error(response)["code"] == "withdrawal_refused"
    assert reason in error(response)["message"]


def test_no_payout_adapter_is_refused_and_bad_bodies_are_422(
    api: Api, http: httpx.Client, auth: dict[str, str], funded: str
) -> None:
    api.ctx.withdrawals.settings = dataclasses.replace(SETTINGS, adapter=None)
    try:
        response = withdraw(http, auth, funded, 1000)
    finally:
        api.ctx.withdrawals.settings = SETTINGS
    assert response.status_code == 409
    assert "no payment system to pay out" in error(response)["message"]
    bodies: list[dict[str, Any]] = [
        {"destination": {}},
        {"destination": {"account": ""}},
        {"amount": 0},
        {"amount": 10.5},
        {"currency": "ZZZ"},
        {"surprise": 1},
    ]
    for extra in bodies:
        bad = withdraw(http, auth, funded, 1000, extra=extra)
        assert bad.status_code == 422, (extra, bad.text)
    missing_key = http.post(
        f"/v1/wallets/{funded}/withdrawals",
        json={"amount": 1000, "currency": "RUB", "destination": DEST},
        headers=auth,
    )
    assert missing_key.status_code == 422


def test_cancel_before_sending_releases_and_after_sending_is_409(
    pool: Pool, http: httpx.Client, auth: dict[str, str], funded: str, site: str
) -> None:
    first = withdraw(http, auth, funded, 1000).json()
    cancelled = http.post(f"/v1/wallets/{funded}/withdrawals/{first['id']}/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert wallet(pool, site, funded) == (10_000, 0)
    second = withdraw(http, auth, funded, 1000).json()
    move(pool, UUID(second["transfer_id"]), TransferStatus.SUBMITTING)
    late = http.post(f"/v1/wallets/{funded}/withdrawals/{second['id']}/cancel", headers=auth)
    assert late.status_code == 409
    assert error(late)["code"] == "withdrawal_conflict"
    assert wallet(pool, site, funded) == (10_000 - 1045, 1045)


def test_another_users_or_sites_withdrawal_is_404(
    api: Api, http: httpx.Client, auth: dict[str, str], funded: str
) -> None:
    made = withdraw(http, auth, funded, 1000).json()
    other_site = api.site_key(f"other-{uuid4().hex[:8]}")
    paths = [
        ("GET", f"/v1/wallets/{funded}/withdrawals/{made['id']}", other_site),
        ("POST", f"/v1/wallets/{funded}/withdrawals/{made['id']}/cancel", other_site),
        ("GET", f"/v1/wallets/someone-else/withdrawals/{made['id']}", auth),
        ("POST", f"/v1/wallets/someone-else/withdrawals/{made['id']}/cancel", auth),
        ("GET", f"/v1/wallets/{funded}/withdrawals/{uuid4()}", auth),
    ]
    for method, path, headers in paths:
        response = http.request(method, path, headers=headers)
        assert response.status_code == 404, (path, response.text)
        assert error(response)["code"] == "withdrawal_not_found"
    still = http.get(f"/v1/wallets/{funded}/withdrawals/{made['id']}", headers=auth).json()
    assert still["status"] == "approved"


def test_the_python_client_withdraws_lists_and_cancels(
    api: Api, auth: dict[str, str], funded: str
) -> None:
    key = auth["Authorization"].removeprefix("Bearer ")
    with Client(api.url, key) as client:
        made = client.create_withdrawal(funded, Money(1000, "RUB"), destination=DEST)
        assert made.created
        assert (made.withdrawal.money, made.withdrawal.fee) == (
            Money(1000, "RUB"),
            Money(45, "RUB"),
        )
        again = client.create_withdrawal(
            funded, Money(1000, "RUB"), destination=DEST, idempotency_key=made.idempotency_key
        )
        assert not again.created
        assert again.withdrawal.id == made.withdrawal.id
        with pytest.raises(KeyConflict):
            client.create_withdrawal(
                funded, Money(2000, "RUB"), destination=DEST, idempotency_key=made.idempotency_key
            )
        with pytest.raises(Conflict) as refused:
            client.create_withdrawal(funded, Money(50, "RUB"), destination=DEST)
        assert refused.value.code == "withdrawal_refused"
        page = client.list_withdrawals(funded)
        assert [w.id for w in page.items] == [made.withdrawal.id]
        assert client.get_withdrawal(funded, made.withdrawal.id).status == "approved"
        assert client.cancel_withdrawal(funded, made.withdrawal.id).status == "cancelled"
        with pytest.raises(NotFound):
            client.get_withdrawal(funded, uuid4())


def test_the_cli_lists_approves_and_cancels(pool: Pool, database_url: str, site: str) -> None:
    from dispatcher.billing.withdrawals import SyncWithdrawals

    with SyncWallets(pool) as wallets:
        wallets.credit(
            site, "u9", Money(10_000, "RUB"), kind=EntryKind.ADJUSTMENT, key=f"top-{uuid4()}",
            description="test top-up",
        )  # fmt: skip
    needs_approval = dataclasses.replace(SETTINGS, approval=True)
    caps = {"sandbox": Sandbox.capabilities}
    with SyncWithdrawals(pool, needs_approval, capabilities=caps) as withdrawals:
        first = withdrawals.request(
            site, "u9", Money(1000, "RUB"), destination=DEST, idempotency_key="a",
            requested_by="test",
        )  # fmt: skip
        second = withdrawals.request(
            site, "u9", Money(2000, "RUB"), destination=DEST, idempotency_key="b",
            requested_by="test",
        )  # fmt: skip
    listed = cli(
        database_url, "withdrawals", "list", "--site", site, "--status", "awaiting_approval"
    )
    assert listed.returncode == 0, listed.stderr
    assert str(first.id) in listed.stdout
    assert str(second.id) in listed.stdout
    approved = cli(database_url, "withdrawals", "approve", str(first.id), "--by", "alice")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "approved by alice" in approved.stdout
    cancelled = cli(database_url, "withdrawals", "cancel", str(second.id), "--by", "bob")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "cancelled" in cancelled.stdout
    assert wallet(pool, site, "u9") == (10_000 - 1045, 1045)
    again = cli(database_url, "withdrawals", "approve", str(second.id), "--by", "alice")
    assert again.returncode == 1
    assert "nothing to approve" in again.stdout
    unknown = cli(database_url, "withdrawals", "cancel", str(uuid4()), "--by", "x")
    assert unknown.returncode == 1
    assert cli(database_url, "withdrawals", "cancel", "nope", "--by", "x").returncode == 2
