"""The ASGI app: routers, the one error shape, the body limit, the middleware stack."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi._body_limit import AppBodyLimitMiddleware
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
from starlette._utils import get_route_path, is_async_callable
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send

from dispatcher.api import callbacks, console, errors, health, orders, pay, refunds, wallets
from dispatcher.api import withdrawals as withdrawal_routes
from dispatcher.api.body import RequestRoute
from dispatcher.api.context import ApiContext
from dispatcher.api.middleware import BodyLimit
from dispatcher.api.openapi import publish_adapters, publish_bodies

DESCRIPTION = """Payment orders for sites, status pages for buyers, callbacks for payment
systems. Site endpoints take `Authorization: Bearer <key>` (`paydispatch keys create SITE`).
Every error is `{"error": {"code", "message", "field"}}` with a stable `code`."""


class App(FastAPI):
    """FastAPI with the layers it would wrap every request in for nothing left out.

    Each layer is a coroutine frame every suspension of a request resumes through, and the
    create suspends a few times (issue #13: some 15 % of its API CPU went to them). Kept:
    Starlette's ServerErrorMiddleware, every user middleware (``add_middleware``) and
    ExceptionMiddleware with the app's handlers, in FastAPI's order. Left out: the telemetry
    layer when telemetry is off (it only records into the request's telemetry, which is then
    never set up) and FastAPI's body-limit layer when ``max_body_size`` is None (it passes the
    request straight on; ``BodyLimit`` is the limit here). A :class:`RequestRoute` on the app's
    own router is served right inside ExceptionMiddleware, before routing and without the exit
    stack it does not use; every other route goes through FastAPI's AsyncExitStackMiddleware
    and the router as before.
    """

    def build_middleware_stack(self) -> ASGIApp:
        error_handler = None
        handlers: dict[Any, ExceptionHandler] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = value
        outer = [Middleware(ServerErrorMiddleware, handler=error_handler, debug=self.debug)]
        if any(self._telemetry[signal] for signal in ("tracing", "metrics", "logs")):
            outer.append(Middleware(ExceptionTelemetryMiddleware))
        if self.max_body_size is not None:
            outer.append(Middleware(AppBodyLimitMiddleware, max_body_size=self.max_body_size))
        middleware = [
            *outer,
            *self.user_middleware,
            Middleware(ExceptionMiddleware, handlers=handlers, debug=self.debug),
        ]
        app: ASGIApp = _RequestRoutesFirst(self, AsyncExitStackMiddleware(self.router))
        for cls, args, kwargs in reversed(middleware):
            app = cls(app, *args, **kwargs)
        return app


class _RequestRoutesFirst:
    """Serves the app's own :class:`RequestRoute` routes as the router would have (the same
    scope: ``router``, ``route``, ``endpoint``, ``path_params``), the rest through ``rest``.

    Only a route that matches FULL is served here; a method it does not take (405) or a path
    it does not have goes to the router. Its endpoint's errors propagate to
    ExceptionMiddleware, the app's handlers, as Starlette's ``request_response`` would hand
    them on from the route. A RequestRoute is matched before the routes added ahead of it:
    none of those may take the same path and method (checked when the stack is built). The
    method is looked at first, and a path without parameters (``/v1/orders``) is compared as
    a string, not through the route's regex: the router's own match cost some 4 % of a
    create's CPU in the app.
    """

    def __init__(self, fastapi: FastAPI, rest: ASGIApp) -> None:
        self.router = fastapi.router
        self.rest = rest
        self.routes = [
            r
            for r in self.router.routes
            if isinstance(r, RequestRoute) and is_async_callable(r.endpoint)
        ]
        for route in self.routes:
            for earlier in self.router.routes[: self.router.routes.index(route)]:
                if getattr(earlier, "path", None) == route.path and (
                    getattr(earlier, "methods", None) or set()
                ) & (route.methods or set()):
                    raise TypeError(f"{route.path}: taken by a route added before it")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            for route in self.routes:
                if route.methods and method not in route.methods:
                    continue
                if route.param_convertors:
                    match, child_scope = route.matches(scope)
                    if match is not Match.FULL:
                        continue
                    scope.update(child_scope)
                elif get_route_path(scope) == route.path:
                    # what Route.matches gives a path without parameters
                    scope["endpoint"] = route.endpoint
                    scope["path_params"] = dict(scope.get("path_params", {}))
                else:
                    continue
                scope.setdefault("router", self.router)
                scope["route"] = route
                response = await route.endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.rest(scope, receive, send)


def create_app(ctx: ApiContext, *, close_on_shutdown: bool = False) -> FastAPI:
    """The API over ``ctx``; with ``close_on_shutdown`` the app closes it when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.open()
        ctx.keys.listen(ctx.listen_url or ctx.repo.conninfo)  # revoked keys leave the cache at once
        try:
            yield
        finally:
            ctx.keys.stop_listening()
            await ctx.aclose()
            if close_on_shutdown:
                ctx.close()

    app = App(
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
