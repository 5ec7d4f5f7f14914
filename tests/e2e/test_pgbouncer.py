"""The daemon through PgBouncer in transaction mode: a short lifecycle (issue #15, item 5).

The API, a sweeper and a worker connect their pools through PgBouncer with prepared statements
off (``PAYDISPATCH_DATABASE_PREPARE=off``); their ``LISTEN`` sessions go straight to PostgreSQL
(``PAYDISPATCH_LISTEN_DATABASE_URL``). Skipped without the ``pgbouncer`` binary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.runner import SandboxHandle, running_sandbox
from dispatcher.api.keys import ApiKeys
from dispatcher.services import Services, free_port
from orders.db import open_pool
from tests import pgbouncer_support
from tests.dispatch_support import SandboxControl, wait_until
from tests.namespaces import own_namespace

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    pgbouncer_support.binary() is None, reason="pgbouncer is not installed (.ci/run installs it)"
)


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(SandboxConfig()) as handle:
        yield handle


def test_orders_are_created_paid_and_credited_through_pgbouncer_in_transaction_mode(
    found_services: Services, own_database_url: str, sandbox: SandboxHandle, tmp_path: Path
) -> None:
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    pool = open_pool(own_database_url, max_size=1, name="e2e-pgbouncer")
    _, key = ApiKeys(pool).create("shop")
    procs: list[subprocess.Popen[bytes]] = []
    # Two server connections used in turn: a prepared statement would miss on the other one.
    with pgbouncer_support.running_pgbouncer(
        own_database_url, pool_size=2, round_robin=True
    ) as bouncer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
        env |= {
            "PAYDISPATCH_DATABASE_URL": bouncer,
            "PAYDISPATCH_DATABASE_PREPARE": "off",
            "PAYDISPATCH_LISTEN_DATABASE_URL": own_database_url,
            "PAYDISPATCH_BROKER_URL": found_services.broker_url,
            "PAYDISPATCH_BROKER_NAMESPACE": own_namespace(),
            "PAYDISPATCH_DEV": "1",
            "PAYDISPATCH_ADAPTERS": "sandbox",
            "PAYDISPATCH_SANDBOX_API_URL": sandbox.url,
            "PAYDISPATCH_SANDBOX_POLL_FIRST": "0.2",
            "PAYDISPATCH_SANDBOX_POLL_CAP": "0.5",
            "PAYDISPATCH_BILLING_HOOKS": "wallet",
            "PAYDISPATCH_LOG_FORMAT": "json",
            "PAYDISPATCH_PUBLIC_URL": api_url,
        }
        logs = [tmp_path / f"{name}.log" for name in ("api", "sweeper", "worker")]
        procs.append(_spawn(env, logs[0], "api", "--port", str(api_port)))
        procs.append(_spawn(env, logs[1], "sweeper", "--interval", "0.5"))
        procs.append(_spawn(env, logs[2], "worker", "--threads", "2"))
        try:
            wait_until(lambda: _answers(f"{api_url}/healthz"), timeout=90, what="the API")
            # Given orders created through the API (its pool behind PgBouncer),
            ids = []
            with httpx.Client(base_url=api_url, timeout=10) as client:
                for n in range(5):
                    answer = client.post(
                        "/v1/orders",
                        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"pgb-{n}"},
                        json={
                            "user_id": f"u{n}",
                            "amount": 500 + n,
                            "currency": "USD",
                            "adapter": "sandbox",
                            "metadata": {SCENARIO_METADATA_KEY: "pay_after:0"},
                        },
                    )
                    assert answer.status_code == 201, answer.text
                    ids.append(answer.json()["id"])
            # when the sweeper and the worker take them through PgBouncer too,
            with psycopg.connect(own_database_url, autocommit=True) as conn:

                def paid() -> int:
                    row = conn.execute(
                        "SELECT count(*) FROM orders WHERE status = 'paid' AND id = ANY(%s)",
                        (ids,),
                    ).fetchone()
                    return int(row[0]) if row else 0

                wait_until(lambda: paid() == len(ids), timeout=60, what="every order paid")
                credits = conn.execute(
                    """SELECT count(*) FROM wallet_entries
                       WHERE kind = 'topup' AND order_id = ANY(%s)""",
                    (ids,),
                ).fetchone()
            # then each is paid and credited once, through the pooler, with no statement lost.
            assert credits is not None
            assert credits[0] == len(ids)
            assert pgbouncer_support.admin_stats(bouncer).get("total_xact_count", 0) > 0
            control = SandboxControl(sandbox.url)
            stats = control.stats()
            control.close()
            assert all(stats["invoices_per_order"].get(i) == 1 for i in ids)
            text = "".join(log.read_text(errors="replace") for log in logs)
            assert "prepared statement" not in text
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            pool.close()


def _spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
