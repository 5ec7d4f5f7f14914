"""A buyer in headless Chromium: the site creates an order through the API of a real
``paydispatch run`` (sweeper, worker, API processes), the buyer opens the status page, is sent to
the sandbox's pay page, clicks Pay, comes back to see "paid", and the wallet holds the money."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters.sandbox.runner import SandboxHandle, running_sandbox
from dispatcher.api.keys import ApiKeys
from dispatcher.services import Services
from orders import Money, OrderStatus
from orders.client import Client
from orders.db import open_pool
from tests.dispatch_support import wait_until
from tests.e2e.test_processes import daemon_env, spawn

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip

needs_browser = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="no headless browser: install Debian's `apt-get install chromium chromium-driver` "
    "(.ci/run does this in CI)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@needs_browser
def test_a_buyer_pays_in_the_browser_and_the_wallet_is_credited(
    found_services: Services,
    database_url: str,
    sandbox: SandboxHandle,
    browser: object,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    api_url = f"http://127.0.0.1:{free_port()}"
    env = daemon_env(database_url, found_services.broker_url, sandbox.url)
    env |= {
        "PAYDISPATCH_API_PORT": api_url.rsplit(":", 1)[1],
        "PAYDISPATCH_PUBLIC_URL": api_url,
        # The sandbox's signed webhooks come back through the API's callback endpoint.
        "PAYDISPATCH_SANDBOX_NOTIFY_URL": f"{api_url}/v1/callbacks/sandbox",
        "PAYDISPATCH_SANDBOX_POLL_FIRST": "5",
        "PAYDISPATCH_SANDBOX_POLL_CAP": "30",
    }
    pool = open_pool(database_url, max_size=2, name="e2e-browser")
    supervisor: subprocess.Popen[bytes] = spawn(env, "run")
    try:

        def api_ready() -> bool:
            try:
                return httpx.get(f"{api_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(api_ready, timeout=60, what="the API of `paydispatch run`")
        _, key = ApiKeys(pool).create("shop", "browser test")
        with Client(api_url, key) as site:
            # Given an order the site made through the API, with no return_url of its own,
            order = site.create_order(
                user_id="buyer-1", money=Money(1250, "USD"), adapter="sandbox",
                description="Browser top-up",
            ).order  # fmt: skip
            assert order.status_url == f"{api_url}/pay/{order.id}"

            # when the buyer opens the status page, it waits and then sends them to pay;
            browser.get(order.status_url)
            wait = WebDriverWait(browser, 30)
            pay = wait.until(ec.element_to_be_clickable((By.ID, "pay")))
            assert browser.current_url.startswith(sandbox.url)
            assert "12.50 USD" in browser.find_element(By.ID, "amount").text
            pay.click()

            # then the sandbox sends them back, and the page shows the payment received,
            wait.until(
                ec.presence_of_element_located((By.CSS_SELECTOR, '#message[data-state="paid"]'))
            )
            assert browser.current_url.startswith(order.status_url)
            assert "Payment received" in browser.find_element(By.ID, "message").text
            browser.save_screenshot(str(tmp_path / "paid.png"))

            # and the user's wallet holds the money, credited once.
            assert site.get_order(order.id).status is OrderStatus.PAID
            balances = {b.currency: b.amount for b in site.wallet("buyer-1")}
            assert balances.get("USD") == 1250
            topups = [e for e in site.wallet_entries("buyer-1").items if e.kind == "topup"]
            assert [(e.amount, e.order_id) for e in topups] == [(1250, order.id)]
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            supervisor.kill()
        pool.close()
