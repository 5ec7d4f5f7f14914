"""The app's middleware stack: FastAPI's layers that do nothing left out, every user middleware
and the exception handlers kept, a RequestRoute served right inside ExceptionMiddleware."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import Request
from fastapi._body_limit import AppBodyLimitMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from dispatcher.api.app import App
from dispatcher.api.body import RequestRoute

OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


class Refused(Exception):
    pass


class Seen:
    """A user middleware: records what it saw, stamps the answer."""

    paths: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        Seen.paths.append((scope["method"], scope["path"]))

        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-seen", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


def layers(app: App) -> list[type[Any]]:
    found = []
    layer: Any = app.build_middleware_stack()
    while hasattr(layer, "app"):
        found.append(type(layer))
        layer = layer.app
    return found


def an_app(**kwargs: Any) -> App:
    app = App(**kwargs)

    async def create(request: Request) -> Response:
        body = await request.json()
        if body.get("refuse"):
            raise Refused
        scope = request.scope
        return JSONResponse(
            {
                "route": scope["route"].path,
                "endpoint": scope["endpoint"] is create,
                "router": scope["router"] is app.router,
                "path_params": scope["path_params"],
                "stack": "fastapi_middleware_astack" in scope,
                "body": body,
            },
            201,
        )

    app.router.add_api_route("/things", create, methods=["POST"], route_class_override=RequestRoute)

    @app.get("/things")
    async def listed(request: Request) -> dict[str, bool]:
        return {"stack": "fastapi_middleware_astack" in request.scope}

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": "refused"}, 409)

    app.add_middleware(Seen)
    return app


def test_telemetry_off_and_no_max_body_size_leave_only_the_layers_that_act() -> None:
    # Given an app with telemetry off and no max_body_size, and one with both,
    # when their stacks are built, then the first has neither of FastAPI's two layers.
    assert layers(App(telemetry=OFF))[:2] == [ServerErrorMiddleware, ExceptionMiddleware]
    full = layers(App(telemetry={**OFF, "tracing": True}, max_body_size=10))
    assert full[:3] == [ServerErrorMiddleware, ExceptionTelemetryMiddleware, AppBodyLimitMiddleware]
    assert ExceptionMiddleware in full


def test_a_request_route_is_served_behind_the_user_middleware_with_the_router_scope() -> None:
    # Given an app with a RequestRoute, a plain route on its path and a user middleware,
    Seen.paths.clear()
    app = an_app(telemetry=OFF)

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [
                await client.post("/things", json={"a": 1}),
                await client.post("/things", json={"refuse": True}),
                await client.get("/things"),
                await client.put("/things", json={}),
            ]

    # when the RequestRoute is called, it fails, and the other route is called,
    made, refused, listed, missing = asyncio.run(calls())
    # then the middleware saw them all, the route had the scope the router gives,
    assert Seen.paths == [("POST", "/things")] * 2 + [("GET", "/things"), ("PUT", "/things")]
    assert all(r.headers["x-seen"] == "1" for r in (made, refused, listed, missing))
    assert made.status_code == 201
    assert made.json() == {
        "route": "/things",
        "endpoint": True,
        "router": True,
        "path_params": {},
        "stack": False,  # served before the router's exit stack: it has no use for one
        "body": {"a": 1},
    }
    # its error went to the app's handler, the other route still has the exit stack,
    assert (refused.status_code, refused.json()) == (409, {"error": "refused"})
    assert listed.json() == {"stack": True}
    # and a method no route takes is still the router's 405.
    assert missing.status_code == 405


def test_a_request_route_behind_a_route_for_the_same_request_is_refused() -> None:
    # Given a RequestRoute added after a route that takes the same path and method,
    app = App(telemetry=OFF)

    @app.post("/things")
    async def first() -> dict[str, str]:
        return {}

    async def second(request: Request) -> Response:
        return Response()

    app.router.add_api_route("/things", second, methods=["POST"], route_class_override=RequestRoute)
    # when the stack is built, then it is refused: served first, it would shadow the other.
    with pytest.raises(TypeError, match="/things"):
        app.build_middleware_stack()


def test_a_request_route_matches_as_the_router_would_with_parameters_and_a_root_path() -> None:
    # Given RequestRoutes with and without a path parameter, in an app served under a root path,
    app = App(telemetry=OFF)

    async def echo(request: Request) -> Response:
        scope = request.scope
        return JSONResponse(
            {
                "route": scope["route"].path,
                "params": scope["path_params"],
                "app": scope["app"] is app,
            }
        )

    for path in ("/things", "/things/{number:int}"):
        app.router.add_api_route(path, echo, methods=["POST"], route_class_override=RequestRoute)

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [
                await client.post("/api/things"),
                await client.post("/api/things/7"),
                await client.post("/api/things/x"),
                await client.post("/api/things/"),
                await client.get("/api/things"),
            ]

    plain, numbered, unconverted, slashed, other_method = asyncio.run(calls())
    # when each is called, then the path without parameters is matched below the root path,
    assert plain.json() == {"route": "/things", "params": {}, "app": True}
    # the one with a parameter gets it converted,
    assert numbered.json() == {
        "route": "/things/{number:int}",
        "params": {"number": 7},
        "app": True,
    }
    # and what neither matches is the router's answer, as before.
    assert unconverted.status_code == 404
    assert slashed.status_code == 307  # the router's redirect to /api/things
    assert other_method.status_code == 405
