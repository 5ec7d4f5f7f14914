"""A full run with real processes: metrics move as orders flow (scraped from every process's own
port) and no configured secret appears anywhere in the logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.runner import SandboxHandle, running_sandbox
from dispatcher.services import Services, free_port
from orders.db import schema
from tests.conftest import cli
from tests.dispatch_support import SandboxControl, own_namespace, wait_until
from tests.ports_support import free_ports_in_a_row

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_KEY = "sbx-live-key-9f8e7d6c5b4a"
SANDBOX_WEBHOOK_SECRET = "whsec-sandbox-0a1b2c3d4e5f"
CARD = "4111 1111 1111 1111"
FINAL = {"paid", "rejected", "expired", "failed", "needs_review", "cancelled"}


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    config = SandboxConfig(api_key=SANDBOX_KEY, webhook_secret=SANDBOX_WEBHOOK_SECRET)
    with running_sandbox(config) as handle:
        yield handle


def scrape(
    port: int, path: str = "/metrics"
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_metrics_flow_and_logs_keep_secrets(
    found_services: Services, own_database_url: str, sandbox: SandboxHandle, tmp_path: Path
) -> None:
    api_port, metrics_base = free_port(), free_ports_in_a_row(3)
    public = f"http://127.0.0.1:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env.update(
        PAYDISPATCH_DATABASE_URL=own_database_url,
        PAYDISPATCH_BROKER_URL=found_services.broker_url,
        PAYDISPATCH_BROKER_NAMESPACE=own_namespace(),
        PAYDISPATCH_ADAPTERS="sandbox",
        PAYDISPATCH_LOG_FORMAT="json",
        PAYDISPATCH_API_PORT=str(api_port),
        PAYDISPATCH_PUBLIC_URL=public,
        PAYDISPATCH_STATS_INTERVAL="0.5",
        PAYDISPATCH_SANDBOX_API_URL=sandbox.url,
        PAYDISPATCH_SANDBOX_API_KEY=SANDBOX_KEY,
        PAYDISPATCH_SANDBOX_WEBHOOK_SECRET=SANDBOX_WEBHOOK_SECRET,
        PAYDISPATCH_SANDBOX_NOTIFY_URL=f"{public}/v1/callbacks/sandbox",
        PAYDISPATCH_SANDBOX_POLL_FIRST="0.3",
        PAYDISPATCH_SANDBOX_POLL_CAP="1",
        # The site's webhook is unreachable: its failed deliveries are logged, never its secret.
        PAYDISPATCH_BILLING_HOOKS="wallet,webhook",
    )

    def command(*args: str) -> str:
        done = cli(own_database_url, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    key = command("keys", "create", "shop").split()[0]
    billing_secret = command("sites", "set-webhook", "shop", "http://127.0.0.1:9/hook").split()[0]
    log_path = tmp_path / "daemon.log"
    control = SandboxControl(sandbox.url)
    # Some status calls fail, so error paths log too.
    control.faults("status", queue=["malformed", "http_500"])
    with log_path.open("wb") as log_file:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "run", "--workers", "2",
             "--metrics-base", str(metrics_base)],
            env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = httpx.Client(base_url=public, headers={"Authorization": f"Bearer {key}"})
        try:
            wait_until(lambda: _up(api_port), timeout=60, what="the API")
            ids = []
            for i in range(6):
                # Paid after 3 s: the sweeper (1 s ticks) polls before the webhooks settle them.
                scenario = "decline_after:3" if i == 0 else "pay_after:3"
                response = client.post(
                    "/v1/orders",
                    json={
                        "user_id": f"u{i % 2}",
                        "amount": 1000 + i,
                        "currency": "USD",
                        "adapter": "sandbox",
                        "description": f"top-up paid with card {CARD}",
                        "metadata": {SCENARIO_METADATA_KEY: scenario},
                    },
                    timeout=10,
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])

            def statuses() -> list[str]:
                return [client.get(f"/v1/orders/{i}", timeout=10).json()["status"] for i in ids]

            wait_until(lambda: all(s in FINAL for s in statuses()), timeout=60, what="settled")
            assert sorted(statuses()) == ["paid"] * 5 + ["rejected"]

            # Every worker process serves its own metrics; together with the API (which applies
            # the signed notifications) they account for every payment.
            workers = [scrape(metrics_base + 1), scrape(metrics_base + 2)]
            api = scrape(api_port)
            paid_moves = sum(
                total(s, "paydispatch_transitions_total", to_status="paid") for s in [*workers, api]
            )
            assert paid_moves == 5
            assert (
                sum(total(s, "paydispatch_psp_requests_total", outcome="ok") for s in workers) >= 6
            )
            # One broker message carries a batch of steps: at least a submit and a poll batch.
            assert sum(total(s, "paydispatch_dramatiq_messages_total") for s in workers) >= 2
            assert (
                sum(total(s, "paydispatch_psp_request_duration_seconds_count") for s in workers)
                >= 6
            )
            # The database gauges come from the sweeper alone.
            wait_until(
                lambda: total(scrape(metrics_base), "paydispatch_orders", status="paid") == 5,
                timeout=30,
                what="the sweeper's gauges",
            )
            sweeper = scrape(metrics_base)
            assert total(sweeper, "paydispatch_orders", status="rejected") == 1
            assert total(sweeper, "paydispatch_sweeper_last_tick_timestamp_seconds") > 0
            assert total(sweeper, "paydispatch_sweeper_claimed_total") >= 12  # submits + polls
            assert total(workers[0], "paydispatch_orders") == 0  # not double-counted
            # The site's events were tried (with its secret loaded) and failed, in the log.
            wait_until(
                lambda: "webhook delivery failed" in log_path.read_text(errors="replace"),
                timeout=30,
                what="a failed webhook delivery in the log",
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
            control.close()
            client.close()
    logs = log_path.read_text(errors="replace")
    assert '"order_id"' in logs  # the order work was logged, bound to its order
    assert '"adapter configured"' in logs  # settings were logged, with the secrets masked
    for secret in (
        SANDBOX_KEY,
        SANDBOX_WEBHOOK_SECRET,
        billing_secret,
        key,
        CARD,
        CARD.replace(" ", ""),
    ):
        assert secret not in logs, f"a secret reached the logs: {secret[:6]}..."


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_schema_is_current_for_the_run() -> None:
    assert schema.latest_version() >= 3
