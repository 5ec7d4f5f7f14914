"""``paydispatch run``: the API, one sweeper and workers, each a process of its own, supervised.

Also :func:`stop_event`, how every process learns it should stop (SIGTERM or SIGINT). The
children are ``paydispatch`` commands (``sweeper``, ``api``, ``worker``), so each imports only
what it runs; the supervisor checks the configuration once before it starts any.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import structlog

from dispatcher.config import Settings

log = structlog.get_logger(__name__)


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


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
    from dispatcher.api import base_url  # the package alone: no FastAPI
    from dispatcher.compose import Root

    stop = stop_event()
    root = Root(settings, name="supervisor")
    found = root.services
    runtimes = root.runtimes  # fail here, once, on a bad setting
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
    root.close()
    log.info("supervisor stopped", exit_code=worst)
    return worst
