"""``paydispatch worker``: consume the adapters' queues (and billing's) and run each step.

The process's pieces come from :class:`dispatcher.compose.Root`; this module adds the worker's
own: the actors on the broker, the engine on its host's loop, dramatiq's worker threads. It
stops cleanly on SIGTERM or SIGINT: it stops taking messages and drains the steps in flight.
"""

from __future__ import annotations

import asyncio
import os

import dramatiq
import structlog

from dispatcher.compose import Root
from dispatcher.config import Settings
from dispatcher.runtime import expiries
from dispatcher.steps import BILLING_QUEUE, queue_name
from dispatcher.supervisor import stop_event
from dispatcher.worker import actors
from dispatcher.worker.engine import Engine
from dispatcher.worker.host import EngineHost
from dispatcher.worker.middleware import MessageMetrics

log = structlog.get_logger(__name__)


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
    root = Root(settings, name="worker")
    runtimes = root.runtimes
    database_url = root.services.database_url
    metrics_url = root.metrics(metrics_port)
    names = queues or list(runtimes)
    unknown = set(names) - set(runtimes)
    if unknown:
        raise SystemExit(f"paydispatch worker: --queues names adapters not enabled: {unknown}")
    broker = root.broker()
    broker.add_middleware(MessageMetrics())
    declared = actors.Actors(broker, names)  # the receiving half: this process sends nothing
    hook = root.paid_hook()
    transfer_hook = root.transfer_hook()  # refunds and payouts (issue #14)
    # The engine's pool, on the host's loop: the coalesced batches hold at most three
    # connections (one read, two writes); the rest serve paid moves with a hook, each a
    # transaction of its own. 8 by default: the 8 database threads the engine had before.
    host = EngineHost.open(
        database_url,
        expiries(runtimes),
        lambda orders: Engine(orders, runtimes, paid_hook=hook, transfer_hook=transfer_hook),
        pool_size=db_connections,
        max_in_flight=in_flight,
        name="worker-engine",
    )
    host.start()
    actors.set_host(host)
    delivery = root.delivery(host.loop)
    actors.set_delivery(delivery)
    worker_queues = {queue_name(n) for n in names}
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
    root.close()
    del declared
    return 0 if drained else 1
