"""An operator in headless Chromium: logs in to the console of a real ``paydispatch api``
process, finds an order by the site's reference, resolves it from needs_review to paid with a
reason and the evidence, and sees the resolution in the order's history."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from dispatcher.api.operators import Operators
from dispatcher.services import Services
from orders import Money, NewOrder, OrderStatus
from orders.db import open_pool
from orders.repository import OrderRepository
from tests.billing_support import balances
from tests.dispatch_support import wait_until
from tests.e2e.test_browser import browser, free_port, needs_browser
from tests.e2e.test_processes import daemon_env, spawn

S = OrderStatus
__all__ = ["browser"]  # the fixture, shared with the buyer's browser test


@pytest.fixture
def api_url(found_services: Services, database_url: str) -> Iterator[str]:
    """``paydispatch api`` over the test's database; the console is on by default."""
    url = f"http://127.0.0.1:{free_port()}"
    env = daemon_env(database_url, found_services.broker_url, "http://127.0.0.1:9")
    env |= {"PAYDISPATCH_API_PORT": url.rsplit(":", 1)[1], "PAYDISPATCH_PUBLIC_URL": url}
    process: subprocess.Popen[bytes] = spawn(env, "api")

    def serving() -> bool:
        try:
            return httpx.get(f"{url}/console/login", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(serving, timeout=60, what="the console of `paydispatch api`")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@needs_browser
def test_an_operator_finds_an_order_by_site_reference_and_resolves_it_in_the_browser(
    database_url: str, api_url: str, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    pool = open_pool(database_url, max_size=2, name="e2e-console")
    repo = OrderRepository(pool, {"sandbox": timedelta(hours=1)})
    try:
        # Given an operator account and an order of the site "shop" held in needs_review,
        password = Operators(pool).add("alice")
        new = NewOrder(
            site="shop", user_id="buyer-7", money=Money(4200, "USD"), adapter="sandbox",
            site_ref="INV-2026-0042",
        )  # fmt: skip
        order = repo.create(new).order
        repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
        repo.transition(order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id="ps-1")
        repo.transition(
            order.id, S.AWAITING_PAYMENT, S.NEEDS_REVIEW, actor="test",
            detail={"reason": "the payment system reported 41.00 USD"},
        )  # fmt: skip
        wait = WebDriverWait(browser, 30)
        browser.set_window_size(1280, 1000)

        # when she opens the console, she is asked to log in, and logs in;
        browser.get(f"{api_url}/console/")
        wait.until(ec.presence_of_element_located((By.ID, "login-form")))
        browser.find_element(By.ID, "name").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys(password)
        browser.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "needs-review")))
        assert browser.find_element(By.ID, "operator").text == "alice"
        assert browser.find_element(By.ID, "needs-review").text == "1"
        browser.save_screenshot(str(tmp_path / "dashboard.png"))

        # she finds the order by the site's reference,
        browser.find_element(By.ID, "q").send_keys("INV-2026-0042")
        browser.find_element(By.ID, "site").send_keys("shop")
        browser.find_element(By.ID, "search").click()
        wait.until(ec.presence_of_element_located((By.ID, "resolve-form")))
        assert browser.current_url == f"{api_url}/console/orders/{order.id}"
        assert browser.find_element(By.ID, "field-site_ref").text == "INV-2026-0042"
        assert "41.00 USD" in browser.find_element(By.ID, "events").text

        # and resolves it to paid with a reason and the evidence;
        browser.find_element(By.ID, "to-paid").click()
        browser.find_element(By.ID, "reason").send_keys("the bank statement shows 42.00 USD")
        browser.find_element(By.ID, "evidence").send_keys("statement 2026-12-01, line 17")
        browser.find_element(By.ID, "resolve").click()

        # then the page says so and the order's history holds her decision,
        wait.until(ec.presence_of_element_located((By.ID, "notice")))
        assert browser.find_element(By.ID, "status").text == "paid"
        last = browser.find_elements(By.CSS_SELECTOR, "#events tr")[-1].text
        assert "needs_review" in last
        assert "paid" in last
        assert "ops:alice" in last
        assert "the bank statement shows 42.00 USD" in last
        assert "statement 2026-12-01, line 17" in last
        browser.save_screenshot(str(tmp_path / "resolved.png"))

        # as the database does, and the buyer's wallet is credited once.
        event = repo.events(order.id)[-1]
        assert (event.to_status, event.actor) == (S.PAID, "ops:alice")
        assert [b.money for b in balances(pool, "shop", "buyer-7")] == [Money(4200, "USD")]
    finally:
        repo.close()
        pool.close()
