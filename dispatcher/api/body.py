"""A JSON body read once by its route, answered exactly as a FastAPI body parameter would be.

``POST /v1/orders``, the busiest route, takes the ``Request`` and reads its body here instead
of declaring a body parameter: FastAPI would parse the JSON, validate the model from Python
objects and hand the route a copy. Here the common body (``Content-Type: application/json``,
valid) is parsed and validated in one step by pydantic's ``validate_json``; any other body is
read again the way FastAPI reads one (the content type decides whether it is JSON, then
``json.loads`` and ``validate_python``), so an error is the one the declared parameter gave:
the same status, code, message and field (``tests/integration/test_api.py``). ``validate_json``
accepts no document ``json.loads`` refuses and reads the same values from the ones it takes;
where they differ (UTF-16, a BOM, lone surrogates, deep nesting) it refuses, and the second
reading decides.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import Receive, Scope

M = TypeVar("M")
Errors = list[dict[str, Any]]
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Read(Generic[M]):
    """A body as read: valid already (``model``), or still to be validated (``value``)."""

    model: M | None
    value: Any = _MISSING  # JSON, or bytes that were not sent as JSON


class JsonBody(Generic[M]):
    """Reads and validates the body of one model's route."""

    def __init__(self, model: type[M]) -> None:
        self.adapter: TypeAdapter[M] = TypeAdapter(model)

    async def read(self, receive: Receive, content_type: str | None) -> Read[M]:
        """The body; JSON that does not parse is answered at once (400), as FastAPI answers it
        before anything else of the request (the key, the query) is looked at."""
        body = await _body(receive)
        if not body:
            return Read(None)
        if content_type == "application/json":
            try:
                return Read(self.adapter.validate_json(body))
            except ValidationError:
                pass  # read again below, for the answer FastAPI gives
        if not _is_json(content_type):
            return Read(None, body)
        try:
            return Read(None, json.loads(body))
        except json.JSONDecodeError as exc:
            error = {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
            raise RequestValidationError([error], body=exc.doc) from exc
        except Exception as exc:  # not UTF-8, nested past the interpreter's stack
            raise HTTPException(400, "There was an error parsing the body") from exc

    def validate(self, read: Read[M]) -> tuple[M | None, Errors]:
        """The model, or the errors of the body (located under ``body``, as FastAPI's are)."""
        if read.model is not None:
            return read.model, []
        if read.value is _MISSING:
            return None, [
                {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
            ]
        try:
            return self.adapter.validate_python(read.value, from_attributes=True), []
        except ValidationError as exc:
            return None, located(exc, "body")


def first_headers(scope: Scope, names: frozenset[bytes]) -> dict[bytes, str]:
    """The first value of each header of ``names`` the request has (lower-case names, as ASGI
    gives them), as Starlette's ``Headers.get`` reads one."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in names and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def _body(receive: Receive) -> bytes:
    """The request body, read once. ``BodyLimit`` has checked its declared length (or read a
    body of undeclared length whole and hands it on as one message)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def located(exc: ValidationError, *where: str) -> Errors:
    """``exc``'s errors with their location prefixed by ``where``."""
    return [{**e, "loc": (*where, *e["loc"])} for e in exc.errors(include_url=False)]


def _is_json(content_type: str | None) -> bool:
    """FastAPI's test: a body is JSON when its content type is ``application/json`` or
    ``application/*+json`` (a body without a content type is not)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


class RawResponse(Response):
    """A response already rendered: ``body`` and every header given, so nothing is rendered
    or looked at; sent as Starlette sends any response (two ASGI messages)."""

    def __init__(self, body: bytes, status_code: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        self.raw_headers = headers


class RequestRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` and returns the ``Response``.

    FastAPI publishes it from its declaration (``response_model``, ``responses``,
    ``openapi_extra``) and calls the endpoint as it is: no dependencies to solve, no body to
    read, no returned model to validate and encode; the endpoint does what it needs of that
    itself. On the app's own router it is served as Starlette serves a plain route (FastAPI's
    wrapper adds the exit stacks of dependencies with ``yield``, which it has none of); its
    errors go to the app's exception handlers either way. Declared ``dependencies`` would not
    run, so it takes none.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.dependencies:
            raise TypeError(f"{path}: a RequestRoute runs no dependencies")
        self.app = request_response(endpoint)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint
