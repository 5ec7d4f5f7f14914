"""The daemon's processes: ``worker``, ``sweeper`` and ``run`` (both, supervised).

Each entry point resolves the configuration and the services once, checks every enabled
adapter's settings (a bad one stops the process at start, naming the setting), and stops
cleanly on SIGTERM or SIGINT: the sweeper finishes its tick, the worker stops taking messages
and drains the steps in flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

import dramatiq
import prometheus_client
import structlog

from adapters.base import Secret
from dispatcher import logs, services
from dispatcher.billing.webhook import Delivery, SyncOutbox
from dispatcher.config import ConfigError, Settings
from dispatcher.runtime import AdapterRuntime, build_adapters, expiries
from dispatcher.steps import BILLING_QUEUE, Steps, make_broker
from dispatcher.sweeper import Sweeper
from dispatcher.sweeper.dbstats import DbStats
from dispatcher.worker import actors
from dispatcher.worker.engine import Engine
from dispatcher.worker.host import EngineHost
from dispatcher.worker.middleware import MessageMetrics
from orders.db import Pool, open_async_pool, open_pool
from orders.model import PaidHook
from orders.repository import OrderRepository

log = structlog.get_logger(__name__)


@dataclass
class Context:
    services: services.Services
    runtimes: dict[str, AdapterRuntime]
    pool: Pool
    repo: OrderRepository

    def close(self) -> None:
        self.repo.close()
        self.pool.close()


def bootstrap(settings: Settings, *, pool_size: int = 10, name: str = "paydispatch") -> Context:
    found = services.ensure(settings)
    runtimes = build_adapters(settings)
    check_adapters(settings, runtimes)
    register_secrets(found, runtimes)
    pool = open_pool(found.database_url, max_size=pool_size, name=name)
    return Context(found, runtimes, pool, OrderRepository(pool, expiries(runtimes)))


def check_adapters(settings: Settings, runtimes: Mapping[str, AdapterRuntime]) -> None:
    """Refuse to start without a payment system, or with a credential anyone can read.

    A secret setting with a default (the sandbox's API key and webhook secret) is published in
    the source: with it, anyone can sign the adapter's callbacks and credit a wallet without
    paying (issue #12, item 2). Only a development setup (``PAYDISPATCH_DEV=1``: the demo, the
    tests) may run with one.
    """
    if not runtimes:
        raise ConfigError(
            "PAYDISPATCH_ADAPTERS: no payment system is enabled: list them in "
            "PAYDISPATCH_ADAPTERS (or adapters.enabled); the sandbox is the default only with "
            "PAYDISPATCH_DEV=1"
        )
    for rt in runtimes.values():
        for spec in rt.adapter.settings_spec:
            if not spec.secret or spec.default is None or rt.settings.get(spec.key) != spec.default:
                continue
            if not settings.dev:
                var = f"PAYDISPATCH_{rt.name.upper()}_{spec.key}"
                raise ConfigError(
                    f"{var}: still the default published in paydispatch's source, so anyone "
                    f"can use it; set your own (or {var}_FILE), or PAYDISPATCH_DEV=1 for a "
                    "development setup"
                )
    if "sandbox" in runtimes and not settings.dev:
        log.warning(
            "the sandbox payment system is enabled outside a development setup: "
            "its payments are not real money"
        )


def register_secrets(found: services.Services, runtimes: dict[str, AdapterRuntime]) -> None:
    """Tell the log redactor every secret this process holds, so none is ever printed."""
    for url in (found.database_url, found.broker_url):
        logs.REDACTOR.add_url_password(url)
    for rt in runtimes.values():
        logs.register_secrets(
            v.reveal() for v in rt.settings.values.values() if isinstance(v, Secret)
        )
        log.info("adapter configured", adapter=rt.name, settings=repr(rt.settings))


def start_metrics(port: int | None, addr: str = "127.0.0.1") -> str:
    """Serve this process's metrics on its own port (one port per process; see README).

    Returns where, for the process's start line: the URL, or ``off`` without a port.
    """
    if port is None:
        return "off"
    server, _thread = prometheus_client.start_http_server(port, addr=addr)
    return f"http://{addr}:{server.server_port}/metrics"  # the bound port, also for port 0


def paid_hook(settings: Settings) -> PaidHook | None:
    """The billing hook run inside every paid transaction, from the configuration."""
    from dispatcher.billing import hooks

    return hooks.build(settings.billing)


def webhook_delivery(
    settings: Settings, url: str, loop: asyncio.AbstractEventLoop
) -> Delivery | None:
    """The worker's webhook sender (to each site's own webhook), when the hook is configured,
    with an async pool opened on ``loop``, where the deliveries run (the engine host's): close
    ``delivery.pool`` there after ``delivery.aclose()``."""
    billing = settings.billing
    if "webhook" not in billing.hooks:
        return None
    opening = open_async_pool(url, max_size=4, name="worker-billing")
    pool = asyncio.run_coroutine_threadsafe(opening, loop).result()
    return Delivery(pool, timeout=billing.webhook_timeout)


def webhook_outbox(settings: Settings, pool: Pool) -> SyncOutbox | None:
    """The sweeper's view of the webhook outbox, when the webhook hook is configured."""
    if "webhook" not in settings.billing.hooks:
        return None
    max_age = timedelta(seconds=settings.billing.webhook_max_age)
    return SyncOutbox(pool, max_age=max_age, name="sweeper-outbox")


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def run_worker(
    settings: Settings,
    *,
    queues: list[str] | None = None,
    threads: int = 2,
    in_flight: int = 500,
    drain_timeout: float = 30.0,
    metrics_port: int | None = None,
    db_connections: int = 8,
) -> int:
    stop = stop_event()
    ctx = bootstrap(settings, pool_size=16, name="worker")
    metrics_url = start_metrics(metrics_port)
    names = queues or list(ctx.runtimes)
    unknown = set(names) - set(ctx.runtimes)
    if unknown:
        raise SystemExit(f"paydispatch worker: --queues names adapters not enabled: {unknown}")
    broker = make_broker(ctx.services.broker_url, namespace=settings.broker_namespace)
    broker.add_middleware(MessageMetrics())
    declared = actors.Actors(broker, names)  # the receiving half: this process sends nothing
    hook = paid_hook(settings)
    # The engine's pool, on the host's loop: the coalesced batches hold at most three
    # connections (one read, two writes); the rest serve paid moves with a hook, each a
    # transaction of its own. 8 by default: the 8 database threads the engine had before.
    host = EngineHost.open(
        ctx.services.database_url,
        expiries(ctx.runtimes),
        lambda orders: Engine(orders, ctx.runtimes, paid_hook=hook),
        pool_size=db_connections,
        max_in_flight=in_flight,
        name="worker-engine",
    )
    host.start()
    actors.set_host(host)
    delivery = webhook_delivery(settings, ctx.services.database_url, host.loop)
    actors.set_delivery(delivery)
    worker_queues = {rt.queue for n, rt in ctx.runtimes.items() if n in names}
    if delivery is not None and queues is None:  # a worker for all queues also delivers
        worker_queues.add(BILLING_QUEUE)
    worker = dramatiq.Worker(
        broker, queues=worker_queues, worker_threads=threads, worker_timeout=100,
    )  # fmt: skip
    worker.start()
    log.info(
        "worker started",
        adapters=names,
        queues=sorted(worker_queues),
        metrics=metrics_url,
        threads=threads,
        in_flight=in_flight,
        pid=os.getpid(),
    )
    stop.wait()
    worker.stop(timeout=10_000)
    drained = host.drain(timeout=drain_timeout)
    log.info("worker stopped", drained=drained, left=host.in_flight)
    if delivery is not None:
        future = asyncio.run_coroutine_threadsafe(delivery.aclose(), host.loop)
        future.result(timeout=10)
        asyncio.run_coroutine_threadsafe(delivery.pool.close(), host.loop).result(timeout=10)
        actors.set_delivery(None)
    host.stop()
    actors.set_host(None)
    broker.close()
    ctx.close()
    del declared
    return 0 if drained else 1


def run_sweeper(
    settings: Settings,
    *,
    batch: int = 500,
    interval: float = 1.0,
    lease: float = 120.0,
    metrics_port: int | None = None,
    stats_interval: float | None = None,
) -> int:
    stop = stop_event()
    ctx = bootstrap(settings, pool_size=4, name="sweeper")
    metrics_url = start_metrics(metrics_port)
    broker = make_broker(ctx.services.broker_url, namespace=settings.broker_namespace)
    names = list(ctx.runtimes)
    outbox = webhook_outbox(settings, ctx.pool)
    sweeper = Sweeper(
        ctx.repo,
        Steps(broker, names),  # the sending half: no actor, engine or worker is loaded
        names,
        batch=batch,
        lease=timedelta(seconds=lease),
        interval=interval,
        outbox=outbox,
        stats=DbStats(ctx.repo, interval=stats_interval or settings.stats_interval),
    )
    log.info(
        "sweeper started",
        adapters=names,
        queues=sorted(ctx.runtimes[n].queue for n in names),
        metrics=metrics_url,
        batch=batch,
        interval=interval,
        pid=os.getpid(),
    )
    sweeper.run(stop, ctx.services.database_url)
    log.info("sweeper stopped")
    if outbox is not None:
        outbox.close()
    broker.close()
    ctx.close()
    return 0


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dispatcher.cli", *argv], env=env)


def run_all(
    settings: Settings,
    *,
    workers: int = 1,
    metrics_base: int | None = None,
    api_host: str | None = None,
    api_port: int | None = None,
    extra: list[list[str]] | None = None,
) -> int:
    """Supervise the API, one sweeper and ``workers`` worker processes; restart any that dies.

    With ``metrics_base``, the sweeper serves metrics on that port and worker n on base + n.
    The API listens on ``api_host:api_port`` (default: the configured ``PAYDISPATCH_API_*``).
    """
    from dispatcher.api.server import base_url

    stop = stop_event()
    found = services.ensure(settings)
    runtimes = build_adapters(settings)
    check_adapters(settings, runtimes)  # fail here, once, on a bad setting
    host = api_host or settings.api_host
    port = settings.api_port if api_port is None else api_port
    env = dict(os.environ)
    env["PAYDISPATCH_DATABASE_URL"] = found.database_url
    env["PAYDISPATCH_BROKER_URL"] = found.broker_url
    sweeper, worker_args = ["sweeper"], [["worker"] for _ in range(workers)]
    metrics: list[str] | str = "off"
    if metrics_base is not None:
        sweeper += ["--metrics-port", str(metrics_base)]
        for n, args in enumerate(worker_args, start=1):
            args += ["--metrics-port", str(metrics_base + n)]
        metrics = [f"http://127.0.0.1:{metrics_base + n}/metrics" for n in range(workers + 1)]
    api = ["api", "--host", host, "--port", str(port)]
    commands = [sweeper, api, *worker_args, *(extra or [])]
    children = {i: _spawn(argv, env) for i, argv in enumerate(commands)}
    log.info(
        "supervisor started",
        api=base_url(host, port),
        metrics=metrics,  # the sweeper's, then each worker's
        adapters=list(runtimes),
        services=found.describe(),
        processes=[" ".join(c) for c in commands],
        pid=os.getpid(),
    )
    while not stop.wait(0.5):
        for i, child in list(children.items()):
            code = child.poll()
            if code is not None:
                log.warning("process exited; restarting", command=commands[i], code=code)
                time.sleep(1)
                children[i] = _spawn(commands[i], env)
    for child in children.values():
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40
    worst = 0
    for child in children.values():
        try:
            worst = max(worst, child.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            child.kill()
            worst = 1
    log.info("supervisor stopped", exit_code=worst)
    return worst
