"""The ASGI app: routers, the one error shape, the body limit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from dispatcher.api import callbacks, errors, health, orders, pay, wallets
from dispatcher.api.context import ApiContext
from dispatcher.api.lane import CreateLane
from dispatcher.api.middleware import BodyLimit

DESCRIPTION = """Payment orders for sites, status pages for buyers, callbacks for payment
systems. Site endpoints take `Authorization: Bearer <key>` (`paydispatch keys create SITE`).
Every error is `{"error": {"code", "message", "field"}}` with a stable `code`."""


def create_app(ctx: ApiContext, *, close_on_shutdown: bool = False) -> FastAPI:
    """The API over ``ctx``; with ``close_on_shutdown`` the app closes it when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.creator.open()
        try:
            yield
        finally:
            await ctx.creator.close()
            if close_on_shutdown:
                ctx.close()

    app = FastAPI(
        title="paydispatch",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    for module in (orders, pay, callbacks, wallets, health):
        app.include_router(module.router)
    app.add_middleware(CreateLane, ctx=ctx)  # inside the body limit: added first
    app.add_middleware(BodyLimit, limit=ctx.body_limit)
    return app
