"""The ASGI app: routers, the one error shape, the body limit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from dispatcher.api import callbacks, console, errors, health, orders, pay, refunds, wallets
from dispatcher.api import withdrawals as withdrawal_routes
from dispatcher.api.context import ApiContext
from dispatcher.api.middleware import BodyLimit
from dispatcher.api.openapi import publish_adapters, publish_bodies

DESCRIPTION = """Payment orders for sites, status pages for buyers, callbacks for payment
systems. Site endpoints take `Authorization: Bearer <key>` (`paydispatch keys create SITE`).
Every error is `{"error": {"code", "message", "field"}}` with a stable `code`."""


def create_app(ctx: ApiContext, *, close_on_shutdown: bool = False) -> FastAPI:
    """The API over ``ctx``; with ``close_on_shutdown`` the app closes it when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.open()
        ctx.keys.listen(ctx.repo.conninfo)  # revoked keys leave the cache at once
        try:
            yield
        finally:
            ctx.keys.stop_listening()
            await ctx.aclose()
            if close_on_shutdown:
                ctx.close()

    app = FastAPI(
        title="paydispatch",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # The browsable views load their script from a CDN: an operator may turn them off
        # (PAYDISPATCH_API_DOCS=0); /openapi.json is the contract and always served.
        docs_url="/docs" if ctx.docs else None,
        redoc_url=None,
        # paydispatch reports through /metrics and its logs. FastAPI's OpenTelemetry hooks,
        # which nothing here configures, would still look up three providers per request
        # (some 5-10 % of a create's CPU in the app, driven in-process).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            publish_bodies(document)
            publish_adapters(document, ctx.runtimes)
        return app.openapi_schema  # type: ignore[return-value]  # set by FastAPI.openapi

    app.openapi = openapi  # type: ignore[method-assign]
    errors.install(app)
    orders.add_create(app.router)
    for module in (orders, refunds, pay, callbacks, wallets, withdrawal_routes, health):
        app.include_router(module.router)
    if ctx.console:  # the operators' console (issue #16); PAYDISPATCH_CONSOLE=off
        app.include_router(console.router)
    app.add_middleware(BodyLimit, limit=ctx.body_limit)
    return app
