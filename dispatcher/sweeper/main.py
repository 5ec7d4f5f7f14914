"""``paydispatch sweeper``: claim due orders (and billing events) and send their steps.

The process's pieces come from :class:`dispatcher.compose.Root`: the repository, the step
sender, the webhook outbox; nothing of the worker or the API is imported. It stops cleanly on
SIGTERM or SIGINT, after the tick in progress.
"""

from __future__ import annotations

import os
from datetime import timedelta

import psycopg
import structlog

from dispatcher.compose import Root
from dispatcher.config import Settings
from dispatcher.steps import queue_name
from dispatcher.supervisor import stop_event
from dispatcher.sweeper.dbstats import DbStats
from dispatcher.sweeper.loop import Sweeper
from orders.db import schema

log = structlog.get_logger(__name__)


def warn_about_upkeep(root: Root) -> None:
    """Log what in the server's settings will slow the queue down (:func:`schema.server_warnings`).

    Run once at start, after the pool opened; should the settings not be readable (the database
    gone meanwhile), nothing is said and the sweeper goes on."""
    try:
        with root.pool().connection(timeout=5) as conn:
            warnings = schema.server_warnings(conn)
    except psycopg.Error:
        return
    for warning in warnings:
        log.warning("database upkeep", problem=warning)


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
    root = Root(settings, name="sweeper")
    repo = root.repository(pool_size=4)
    metrics_url = root.metrics(metrics_port)
    names = list(root.runtimes)
    sweeper = Sweeper(
        repo,
        root.steps(names),  # the sending half: no actor, engine or worker is loaded
        names,
        batch=batch,
        lease=timedelta(seconds=lease),
        interval=interval,
        outbox=root.outbox(),
        stats=DbStats(repo, interval=stats_interval or settings.stats_interval),
    )
    log.info(
        "sweeper started",
        adapters=names,
        queues=sorted(queue_name(n) for n in names),
        metrics=metrics_url,
        batch=batch,
        interval=interval,
        pid=os.getpid(),
    )
    warn_about_upkeep(root)
    sweeper.run(stop, root.listen_url)
    log.info("sweeper stopped")
    root.close()
    return 0
