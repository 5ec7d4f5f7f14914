"""Real processes: a worker killed with SIGKILL mid-submit, clean shutdown, bad configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path

import httpx
import pytest

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.runner import SandboxHandle, running_sandbox
from dispatcher.services import Services, free_port
from dispatcher.steps import Steps, make_broker
from dispatcher.sweeper import Sweeper
from orders import Money, NewOrder, OrderStatus
from orders.db import open_pool
from orders.repository import OrderRepository
from tests.conftest import cli
from tests.dispatch_support import SandboxControl, own_namespace, wait_until

S = OrderStatus
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(SandboxConfig(hang_seconds=60.0)) as handle:
        yield handle


def daemon_env(database_url: str, broker_url: str, sandbox_url: str) -> dict[str, str]:
    """The daemon's environment: the test's database, its own namespace in the configured Redis
    database, the sandbox with its published credentials (a development setup)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env.update(
        {
            "PAYDISPATCH_DATABASE_URL": database_url,
            "PAYDISPATCH_BROKER_URL": broker_url,
            "PAYDISPATCH_BROKER_NAMESPACE": own_namespace(),
            "PAYDISPATCH_DEV": "1",
            "PAYDISPATCH_ADAPTERS": "sandbox",
            "PAYDISPATCH_SANDBOX_API_URL": sandbox_url,
            "PAYDISPATCH_SANDBOX_POLL_FIRST": "0.2",
            "PAYDISPATCH_SANDBOX_POLL_CAP": "0.5",
            # Longer than the sandbox holds nothing: the killed worker is stuck in its create.
            "PAYDISPATCH_SANDBOX_TIMEOUT": "30",
            "PAYDISPATCH_LOG_FORMAT": "json",
            "PAYDISPATCH_API_PORT": str(free_port()),
        }
    )
    return env


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_worker_killed_mid_submit_leaves_one_invoice_and_the_order_paid(
    found_services: Services, own_database_url: str, sandbox: SandboxHandle
) -> None:
    control = SandboxControl(sandbox.url)
    broker_url = found_services.broker_url
    env = daemon_env(own_database_url, broker_url, sandbox.url)
    pool = open_pool(own_database_url, max_size=4, name="e2e")
    repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
    broker = make_broker(broker_url, namespace=env["PAYDISPATCH_BROKER_NAMESPACE"])
    sweeper = Sweeper(
        repo, Steps(broker, ["sandbox"]), ["sandbox"], lease=timedelta(seconds=3),
        interval=0.1,
    )  # fmt: skip
    stop = threading.Event()
    sweeping = threading.Thread(target=sweeper.run, args=(stop, own_database_url), daemon=True)
    first = spawn(env, "worker", "--threads", "2")
    second: subprocess.Popen[bytes] | None = None
    try:
        # Given a sandbox that will accept the first create and then never answer,
        control.faults("create", queue=["accept_then_timeout"])
        new = NewOrder(
            site="shop", user_id="u1", money=Money(2500, "EUR"), adapter="sandbox",
            metadata={SCENARIO_METADATA_KEY: "pay_after:1"},
        )  # fmt: skip
        order_id = repo.create(new).order.id
        sweeping.start()
        # when the worker is killed while it waits for that create,
        wait_until(lambda: control.stats()["create_calls"] == 1, what="the create call")
        assert repo.get(order_id).status is S.SUBMITTING
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        # and another worker takes over once the lease runs out,
        second = spawn(env, "worker", "--threads", "2")
        wait_until(lambda: repo.get(order_id).status is S.PAID, timeout=60, what="paid")
        # then the order is paid through the one invoice the sandbox made.
        stats = control.stats()
        assert stats["invoices_per_order"][str(order_id)] == 1
        assert stats["create_calls"] == 2
    finally:
        stop.set()
        sweeping.join(timeout=10)
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        broker.close()
        repo.close()
        pool.close()
        control.close()


def test_run_stops_cleanly_on_sigterm(
    found_services: Services, own_database_url: str, sandbox: SandboxHandle
) -> None:
    env = daemon_env(own_database_url, found_services.broker_url, sandbox.url)
    pool = open_pool(own_database_url, max_size=2, name="e2e-run")
    repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
    supervisor = spawn(env, "run")
    try:
        new = NewOrder(
            site="shop", user_id="u1", money=Money(700, "USD"), adapter="sandbox",
            metadata={SCENARIO_METADATA_KEY: "pay_after:1"},
        )  # fmt: skip
        order_id = repo.create(new).order.id
        wait_until(lambda: repo.get(order_id).status is S.PAID, timeout=60, what="paid")
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        repo.close()
        pool.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"PAYDISPATCH_ADAPTERS": "nowhere"}, "PAYDISPATCH_ADAPTERS"),
        ({"PAYDISPATCH_ADAPTERS": "yookassa"}, "PAYDISPATCH_YOOKASSA_SHOP_ID"),
        ({"PAYDISPATCH_SANDBOX_POLL_CAP": "soon"}, "PAYDISPATCH_SANDBOX_POLL_CAP"),
    ],
)
def test_bad_configuration_stops_the_worker_at_start_naming_the_setting(
    found_services: Services, extra: dict[str, str], message: str
) -> None:
    env = daemon_env(found_services.database_url, found_services.broker_url, "http://127.0.0.1:9")
    env.update(extra)
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _start(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", command],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["worker", "api"])
def test_issue12_item2_published_sandbox_credentials_stop_a_production_start(
    found_services: Services, command: str
) -> None:
    # Given the sandbox enabled with its published API key and webhook secret,
    env = daemon_env(found_services.database_url, found_services.broker_url, "http://127.0.0.1:9")
    # when the process is not told it is a development setup,
    del env["PAYDISPATCH_DEV"]
    result = _start(env, command)
    # then it refuses to start, naming the setting to change.
    assert result.returncode != 0
    assert "PAYDISPATCH_SANDBOX_API_KEY" in result.stderr
    assert "PAYDISPATCH_DEV" in result.stderr
    assert "Traceback" not in result.stderr


def test_issue12_item2_sandbox_is_not_enabled_by_default(found_services: Services) -> None:
    # Given no PAYDISPATCH_ADAPTERS and no development setup,
    env = daemon_env(found_services.database_url, found_services.broker_url, "http://127.0.0.1:9")
    del env["PAYDISPATCH_DEV"], env["PAYDISPATCH_ADAPTERS"]
    # then a worker does not start with the sandbox: it asks for a payment system.
    result = _start(env, "worker")
    assert result.returncode != 0
    assert "PAYDISPATCH_ADAPTERS" in result.stderr
    assert "Traceback" not in result.stderr


def _answers_with(url: str, path: str, headers: dict[str, str] | None, status: int) -> bool:
    try:
        return httpx.get(url + path, headers=headers, timeout=5).status_code == status
    except httpx.HTTPError:
        return False


def test_issue12_item5_revoked_key_stops_working_on_every_api_process_at_once(
    found_services: Services, own_database_url: str
) -> None:
    env = daemon_env(own_database_url, found_services.broker_url, "http://127.0.0.1:9")
    urls, apis = [], []
    for _ in range(2):
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}")
        apis.append(spawn({**env, "PAYDISPATCH_API_PORT": str(port)}, "api"))
    try:
        for url in urls:
            wait_until(partial(_answers_with, url, "/readyz", None, 200), timeout=60, what=url)
        created = cli(own_database_url, "keys", "create", "shop")
        assert created.returncode == 0, created.stderr
        key = created.stdout.split()[0]
        headers = {"Authorization": f"Bearer {key}"}
        # Given a key that two API processes have verified (and cache),
        for url in urls:
            for _ in range(2):
                assert httpx.get(f"{url}/v1/orders", headers=headers).status_code == 200
        # when it is revoked from the command line (a third process),
        revoked = cli(own_database_url, "keys", "revoke", key.split("_")[1])
        assert revoked.returncode == 0, revoked.stderr
        # then both refuse it right away (they used to trust their cache for 30 s).
        for url in urls:
            wait_until(
                partial(_answers_with, url, "/v1/orders", headers, 401),
                timeout=10,
                what=f"{url} to refuse the revoked key",
            )
    finally:
        for api in apis:
            api.terminate()
        for api in apis:
            try:
                api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                api.kill()
