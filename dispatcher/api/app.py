"""The ASGI app: routers, the one error shape, the body limit, the create lane in front."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from dispatcher.api import callbacks, console, errors, health, orders, pay, wallets
from dispatcher.api.context import ApiContext
from dispatcher.api.lane import CreateLane
from dispatcher.api.middleware import BodyLimit
from dispatcher.api.openapi import publish_adapters
from orders.repository import Orders

DESCRIPTION = """Payment orders for sites, status pages for buyers, callbacks for payment
systems. Site endpoints take `Authorization: Bearer <key>` (`paydispatch keys create SITE`).
Every error is `{"error": {"code", "message", "field"}}` with a stable `code`."""


class Api(FastAPI):
    """FastAPI with :class:`CreateLane` in front of its whole middleware stack.

    The lane answers the common ``POST /v1/orders`` itself and passes every other request to
    FastAPI unchanged, so creates skip the layers (error middleware, telemetry, two body
    limits, routing) that a request it passes on goes through.
    """

    def __init__(self, *, ctx: ApiContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lane = CreateLane(functools.partial(FastAPI.__call__, self), ctx=ctx)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.lane(scope, receive, send)


def create_app(ctx: ApiContext, *, close_on_shutdown: bool = False) -> FastAPI:
    """The API over ``ctx``; with ``close_on_shutdown`` the app closes it when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.batched.open()
        ctx.orders = Orders(ctx.batched._check_open(), ctx.repo.adapters)  # the server's loop
        ctx.keys.listen(ctx.batched.conninfo)  # revoked keys leave the cache at once
        try:
            yield
        finally:
            ctx.keys.stop_listening()
            await ctx.batched.close()
            if close_on_shutdown:
                ctx.close()

    app = Api(
        ctx=ctx,
        title="paydispatch",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # The browsable views load their script from a CDN: an operator may turn them off
        # (PAYDISPATCH_API_DOCS=0); /openapi.json is the contract and always served.
        docs_url="/docs" if ctx.docs else None,
        redoc_url=None,
    )
    app.state.ctx = ctx

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            publish_adapters(FastAPI.openapi(app), ctx.runtimes)
        return app.openapi_schema  # type: ignore[return-value]  # set by FastAPI.openapi

    app.openapi = openapi  # type: ignore[method-assign]
    errors.install(app)
    for module in (orders, pay, callbacks, wallets, health):
        app.include_router(module.router)
    if ctx.console:  # the operators' console (issue #16); PAYDISPATCH_CONSOLE=off
        app.include_router(console.router)
    app.add_middleware(BodyLimit, limit=ctx.body_limit)
    return app
