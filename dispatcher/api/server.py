"""``paydispatch api``: the app over the configured services, served by uvicorn."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from socket import socket
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

from dispatcher import config
from dispatcher.api import base_url
from dispatcher.api.app import create_app
from dispatcher.api.context import ApiContext
from dispatcher.compose import Root
from dispatcher.config import Settings

log = structlog.get_logger(__name__)
STARTUP_FAILURE = 3  # uvicorn's exit code when the server could not start (port taken)


def context_from(settings: Settings, *, pool_size: int = 10) -> ApiContext:
    """Resolve services and adapters once (a bad setting stops the process here).

    ``pool_size``: the async pool the routes run on; the synchronous one serves only the
    operators' pages and ``/readyz`` (FastAPI's thread pool), so it stays small."""
    root = Root(settings, name="api")
    ctx = ApiContext(
        repo=root.repository(pool_size=4),
        runtimes=root.runtimes,
        public_url=settings.public_url,
        broker_url=root.services.broker_url,
        paid_hook=root.paid_hook(),
        transfer_hook=root.transfer_hook(),
        refund_hold=root.refund_hold(),
        body_limit=settings.api_body_limit,
        docs=settings.api_docs,
        console=settings.console,
        webhook_max_age=settings.billing.webhook_max_age,
        withdrawal_settings=settings.withdrawals,
        pool_size=pool_size,
        listen_url=root.listen_url,
    )
    ctx.on_close.append(root.close)
    return ctx


def app_from_environment() -> FastAPI:
    """The uvicorn factory each worker process calls (``--workers``)."""
    return create_app(context_from(config.load()), close_on_shutdown=True)


def log_listening(settings: Settings, url: str, *, workers: int = 1) -> None:
    """The one line that says where the API listens and what it serves there (issue #16)."""
    log.info(
        "api listening",
        url=url,
        docs=f"{url}/docs" if settings.api_docs else "off",
        openapi=f"{url}/openapi.json",
        metrics=f"{url}/metrics",
        console=f"{url}/console/" if settings.console else "off",
        public_url=settings.public_url,
        workers=workers,
    )


class _Server(uvicorn.Server):
    """A uvicorn server that reports its address once its socket is bound."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[int], None]) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers and self.servers[0].sockets:
            port: int = self.servers[0].sockets[0].getsockname()[1]  # the real one, for port 0
            self._on_listening(port)


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> int:
    """Serve until SIGTERM or SIGINT; uvicorn finishes the requests in flight first.

    Says where it listens once it does (with one worker, after the socket is bound, so the
    line names the real port; uvicorn's own start-up lines are silenced by the log set-up).
    """
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "lifespan": "on",
        "ws": "none",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": 10,
        "server_header": False,
    }
    if workers > 1:
        # uvicorn's supervisor binds the socket and forks the workers; each worker builds
        # its app from the environment.
        log_listening(settings, base_url(host, port), workers=workers)
        uvicorn.run(
            "dispatcher.api.server:app_from_environment", factory=True, workers=workers, **common
        )
        return 0
    config = uvicorn.Config(create_app(context_from(settings), close_on_shutdown=True), **common)
    server = _Server(config, lambda bound: log_listening(settings, base_url(host, bound)))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises a drained SIGINT
        server.run()
    return 0 if server.started else STARTUP_FAILURE
