"""What a wallet's balance shows (issue #14): what can be spent, what holds keep out of it, and
the debt a refund left, the same through the HTTP API, the Python client and the CLI."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dispatcher.billing.wallet import EntryKind, SyncWallets
from orders import Money, NewOrder
from orders.client import Client
from orders.db import Pool
from tests.conftest import cli
from tests.integration.test_api import Api, make_paid, running_api

USD = "USD"


@pytest.fixture(scope="module")
def api(pool: Pool) -> Iterator[Api]:
    with running_api(pool) as running:
        yield running


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    with SyncWallets(pool) as face:
        yield face


def holding(wallets: SyncWallets, site: str) -> None:
    """``saver`` had 10.00 USD, of which a withdrawal of 6.00 and its fee of 0.06 are held."""
    wallets.credit(
        site, "saver", Money(1000, USD), kind=EntryKind.ADJUSTMENT, key="seed", description="s"
    )
    wallets.hold(site, "saver", Money(606, USD), key="withdrawal:1", description="withdrawal")


def overdrawn(api: Api, wallets: SyncWallets, site: str) -> None:
    """``spender`` was credited 3.00 USD by a paid order and spent it; then the payment system
    refunded the order on its own, which took the balance to -3.00 USD."""
    new = NewOrder(site=site, user_id="spender", money=Money(300, USD), adapter="sandbox")
    order = api.repo.create(new).order
    make_paid(api.repo, order.id)
    wallets.credit(
        site, "spender", Money(300, USD), kind=EntryKind.TOPUP, key=None, description="top-up",
        order_id=order.id,
    )  # fmt: skip
    wallets.debit(site, "spender", Money(300, USD), key="spent", description="spent")
    wallets.refund(
        site, "spender", Money(300, USD), order_id=order.id, key="refund:x", description="r",
        overdraft=True,
    )  # fmt: skip


def test_the_api_shows_available_held_and_overdrawn(
    api: Api, wallets: SyncWallets, site: str
) -> None:
    holding(wallets, site)
    overdrawn(api, wallets, site)
    headers = api.site_key(site)
    with httpx.Client(base_url=api.url, timeout=10, headers=headers) as http:
        (saver,) = http.get("/v1/wallets/saver").json()["balances"]
        (spender,) = http.get("/v1/wallets/spender").json()["balances"]
    shown = ("amount", "available", "held", "overdrawn", "formatted")
    assert {k: saver[k] for k in shown} == {
        "amount": 394,
        "available": 394,
        "held": 606,
        "overdrawn": False,
        "formatted": "3.94 USD",
    }
    assert {k: spender[k] for k in shown} == {
        "amount": -300,
        "available": 0,
        "held": 0,
        "overdrawn": True,
        "formatted": "-3.00 USD",
    }


def test_the_python_client_exposes_them(api: Api, wallets: SyncWallets, site: str) -> None:
    holding(wallets, site)
    overdrawn(api, wallets, site)
    _, key = api.ctx.keys.create(site)
    with Client(api.url, key, retries=1) as pd:
        (saver,) = pd.wallet("saver")
        (spender,) = pd.wallet("spender")
    assert (saver.amount, saver.available, saver.held, saver.overdrawn) == (394, 394, 606, False)
    assert (spender.amount, spender.available, spender.held, spender.overdrawn) == (
        -300,
        0,
        0,
        True,
    )


def test_the_cli_shows_them(api: Api, wallets: SyncWallets, database_url: str, site: str) -> None:
    holding(wallets, site)
    overdrawn(api, wallets, site)
    saver = cli(database_url, "wallet", "balance", "saver", site=site)
    assert saver.returncode == 0, saver.stderr
    assert saver.stdout.strip() == "3.94 USD  (available 3.94 USD, held 6.06 USD)"
    spender = cli(database_url, "wallet", "balance", "spender", site=site)
    assert spender.returncode == 0, spender.stderr
    assert spender.stdout.strip() == (
        "-3.00 USD  (available 0.00 USD, held 0.00 USD, overdrawn by 3.00 USD: a refund took "
        "more than the balance)"
    )
