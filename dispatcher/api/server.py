"""``paydispatch api``: the app over the configured services, served by uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from dispatcher import config
from dispatcher.api.app import create_app
from dispatcher.api.context import ApiContext
from dispatcher.config import Settings


def context_from(settings: Settings, *, pool_size: int = 20) -> ApiContext:
    """Resolve services and adapters once (a bad setting stops the process here)."""
    from dispatcher.process import bootstrap, paid_hook

    boot = bootstrap(settings, pool_size=pool_size, name="api")
    ctx = ApiContext(
        repo=boot.repo,
        runtimes=boot.runtimes,
        public_url=settings.public_url,
        broker_url=boot.services.broker_url,
        paid_hook=paid_hook(settings, boot.pool),
        body_limit=settings.api_body_limit,
        docs=settings.api_docs,
        console=settings.console,
        webhook_max_age=settings.billing.webhook_max_age,
    )
    ctx.on_close.append(boot.close)
    return ctx


def app_from_environment() -> FastAPI:
    """The uvicorn factory each worker process calls (``--workers``)."""
    return create_app(context_from(config.load()), close_on_shutdown=True)


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> int:
    """Serve until SIGTERM or SIGINT; uvicorn finishes the requests in flight first."""
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
        uvicorn.run(
            "dispatcher.api.server:app_from_environment", factory=True, workers=workers, **common
        )
    else:
        uvicorn.run(create_app(context_from(settings), close_on_shutdown=True), **common)
    return 0
