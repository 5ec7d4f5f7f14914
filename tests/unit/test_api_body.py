"""The create reads its own body (dispatcher.api.body): every body must be answered exactly as a
FastAPI body parameter of the same model answers it, the common one read once."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response

from dispatcher.api import errors
from dispatcher.api.body import JsonBody, RequestRoute, first_headers
from dispatcher.api.schemas import OrderCreate

ORDER = {"user_id": "u1", "amount": 1999, "currency": "USD", "adapter": "sandbox"}
READ = JsonBody(OrderCreate)


def _app() -> FastAPI:
    """Two routes over OrderCreate: FastAPI's declared parameter, and the body read by hand."""
    app = FastAPI()
    errors.install(app)

    @app.post("/declared")
    async def declared(body: Annotated[OrderCreate, Body()]) -> dict[str, Any]:
        return body.model_dump()

    async def own(request: Request) -> Response:
        content_type = first_headers(request.scope, frozenset({b"content-type"}))
        read = await READ.read(request.receive, content_type.get(b"content-type"))
        body, wrong = READ.validate(read)
        if body is None:
            raise RequestValidationError(wrong)
        return JSONResponse(body.model_dump())

    app.router.add_api_route("/own", own, methods=["POST"], route_class_override=RequestRoute)
    return app


BODIES = [
    json.dumps(ORDER).encode(),
    json.dumps(ORDER | {"amount": 1999.0, "metadata": {"a": [1, 2.5, None, "é"]}}).encode(),
    json.dumps(ORDER | {"amount": 19.99, "colour": "red", "currency": "usd"}).encode(),
    json.dumps(ORDER | {"user_id": "a\x00b", "metadata": {"k": "\x00"}}).encode(),
    b'{"user_id": "\\ud800", "amount": 1, "currency": "USD", "adapter": "sandbox"}',
    json.dumps(ORDER).encode("utf-16"),
    b"\xef\xbb\xbf" + json.dumps(ORDER).encode(),
    b"{not json",
    b'{"amount": 1',
    b"[1, 2]",
    b"null",
    b"",
    b" " * 10,
    b"\xff\xfe\x00",
    b"[" * 5000 + b"]" * 5000,
    b'{"user_id":"u1","amount":NaN,"currency":"USD","adapter":"sandbox"}',
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.shop+json",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    None,
]


APP = _app()


def post(path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post(path, content=body, headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_a_body_read_by_hand_is_answered_as_fastapi_answers_a_declared_one(
    body: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    declared = post("/declared", body, headers)
    own = post("/own", body, headers)
    assert (own.status_code, own.json()) == (declared.status_code, declared.json())
