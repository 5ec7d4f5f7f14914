"""A fast lane for ``POST /v1/orders``: the hot path as plain ASGI, everything else to FastAPI.

Order creation is the endpoint sites call most, and FastAPI's machinery around it (routing
over every route, dependency solving, response re-validation) cost more CPU than the create
itself (docs/benchmarks.md). The lane serves a create without that machinery when the request
is one it can fully read the way the route would:

- ``Authorization: Bearer <key>`` with a key verified recently (the key cache FastAPI's
  dependency fills),
- a JSON body (``Content-Type: application/json``) that :class:`OrderCreate` accepts, with a
  ``Content-Length`` within the body limit (the lane runs in front of :class:`BodyLimit`, so it
  reads only a body whose declared size it has checked; the server stops at that size),
- at most one ``Idempotency-Key`` of allowed length.

Any other request (no or unknown key, invalid JSON, a field error, a missing content type,
repeated headers) goes to the FastAPI route unchanged, with its body, so every error is
answered by one implementation. Both call :func:`create_for_site`, and errors raised there are
rendered by the same functions the app's exception handlers use.
"""

from __future__ import annotations

import json

import structlog
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.api.context import ApiContext
from dispatcher.api.errors import HttpError, error_body, error_response, from_domain
from dispatcher.api.orders import create_for_site
from dispatcher.api.schemas import OrderCreate, OrderOut
from orders.errors import DispatchError
from orders.model import LIMITS

log = structlog.get_logger(__name__)

PATH = "/v1/orders"
KEY_MAX = LIMITS["idempotency_key"]
_WANTED = {b"authorization", b"content-type", b"content-length", b"idempotency-key"}


class CreateLane:
    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != PATH
            or scope.get("query_string")  # the route refuses parameters it does not take
        ):
            await self.app(scope, receive, send)
            return
        seen: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED:
                if name in seen:  # repeated: the route decides what that means
                    await self.app(scope, receive, send)
                    return
                seen[name] = value
        site = self._site(seen.get(b"authorization"))
        key = seen.get(b"idempotency-key")
        content_type = seen.get(b"content-type", b"").split(b";")[0].strip().lower()
        length = seen.get(b"content-length", b"")
        if (
            site is None
            or content_type != b"application/json"
            or not length.isdigit()
            or int(length) > self.ctx.body_limit
            or (key is not None and not 1 <= len(key.decode("latin-1")) <= KEY_MAX)
        ):
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        try:
            data = json.loads(body)
            request = OrderCreate.model_validate(data)
        except (ValueError, RecursionError, ValidationError):  # the route words these
            await self.app(scope, _replay(body, receive), send)
            return
        self.ctx.lane_creates += 1
        await self._create(
            site, request, None if key is None else key.decode("latin-1"), scope, send
        )

    def _site(self, authorization: bytes | None) -> str | None:
        if authorization is None:
            return None
        scheme, _, credentials = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return None
        return self.ctx.keys.cached_site(credentials)

    async def _create(
        self, site: str, request: OrderCreate, key: str | None, scope: Scope, send: Send
    ) -> None:
        response: Response
        try:
            created = await create_for_site(self.ctx, site, request, key)
        except HttpError as exc:
            response = error_response(exc)
        except DispatchError as exc:
            response = error_response(from_domain(exc))
        except Exception:
            log.exception("unexpected error in the API", path=PATH)
            response = JSONResponse(error_body("internal_error", "internal error"), 500)
        else:  # the common answer, sent as the two ASGI messages Response would send
            body = OrderOut.of(created.order, self.ctx.public_url).model_dump_json().encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"location", f"{PATH}/{created.order.id}".encode()),
            ]
            status = 201 if created.created else 200
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await response(scope, _no_body, send)


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
