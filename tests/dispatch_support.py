"""An in-process paydispatch daemon (sweeper thread, dramatiq worker, engine) for tests.

Everything is real: PostgreSQL, Redis, the sandbox over HTTP. Only the process boundary is
missing; tests/e2e/ covers that with real processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dramatiq
import httpx

from adapters import registry
from adapters.base import PollPolicy
from adapters.sandbox import adapter as sandbox_adapter
from dispatcher.policy import DispatchPolicy
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import Steps, make_broker, queue_name
from dispatcher.sweeper import Sweeper
from dispatcher.worker import actors
from dispatcher.worker.engine import Engine
from dispatcher.worker.host import EngineHost
from orders.db import open_pool
from orders.repository import OrderRepository
from tests.namespaces import flush_namespace, own_namespace

FAST = DispatchPolicy(
    poll=PollPolicy(first=timedelta(seconds=0.2), factor=1.5, cap=timedelta(seconds=0.5)),
    late_window=timedelta(minutes=5),
    late_interval=timedelta(seconds=0.3),
    timeout=1.0,
    retries=1,
    concurrency=50,
    rate=1000.0,
    submit_attempts=30,
    breaker_failures=10_000,
    breaker_reset=1.0,
)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll a condition until it holds; fail the test with ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


def sandbox_runtime(sandbox_url: str, policy: DispatchPolicy = FAST) -> AdapterRuntime:
    settings = registry.resolve_settings(sandbox_adapter, {"API_URL": sandbox_url}, environ={})
    return AdapterRuntime(sandbox_adapter, settings, policy)


@dataclass
class Daemon:
    repo: OrderRepository
    sweeper: Sweeper
    broker: dramatiq.Broker
    broker_url: str
    namespace: str
    host: EngineHost

    def flush_broker(self) -> int:
        """Lose every queued message of this daemon, as a flushed Redis would."""
        return flush_namespace(self.broker_url, self.namespace)


@contextmanager
def running_daemon(
    database_url: str,
    broker_url: str,
    sandbox_url: str,
    *,
    lease: timedelta = timedelta(seconds=10),
    policy: DispatchPolicy = FAST,
) -> Iterator[Daemon]:
    pool = open_pool(database_url, max_size=12, name="daemon")
    runtime = sandbox_runtime(sandbox_url, policy)
    lifetimes = {"sandbox": timedelta(minutes=15)}
    repo = OrderRepository(pool, lifetimes)
    namespace = own_namespace()
    broker = make_broker(broker_url, namespace=namespace)
    actors.Actors(broker, ["sandbox"])
    dispatch = Steps(broker, ["sandbox"])
    host = EngineHost.open(
        database_url,
        lifetimes,
        lambda orders: Engine(orders, {"sandbox": runtime}),
        pool_size=6,
        max_in_flight=200,
        name="daemon-engine",
    )
    host.start()
    actors.set_host(host)
    queues = {queue_name(runtime.name)}
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=4, worker_timeout=100)
    worker.start()
    sweeper = Sweeper(repo, dispatch, ["sandbox"], batch=100, lease=lease, interval=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop, database_url), daemon=True)
    thread.start()
    try:
        yield Daemon(repo, sweeper, broker, broker_url, namespace, host)
    finally:
        stop.set()
        thread.join(timeout=10)
        worker.stop(timeout=5000)
        host.drain(timeout=10)
        host.stop()
        actors.set_host(None)
        broker.close()
        repo.close()
        pool.close()


class SandboxControl:
    """The sandbox's control API, as tests use it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=10)

    def reset(self) -> None:
        self.client.post("/_control/reset").raise_for_status()

    def faults(self, operation: str, **spec: Any) -> None:
        self.client.post(f"/_control/faults/{operation}", json=spec).raise_for_status()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get("/_control/stats").json()
        return data

    def invoice(self, psp_id: str) -> dict[str, Any]:
        response = self.client.get(
            f"/api/v1/invoices/{psp_id}", headers={"Authorization": "Bearer sandbox-key"}
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def close(self) -> None:
        self.client.close()
