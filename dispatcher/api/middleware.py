"""Pure ASGI middleware: the request body limit, enforced before anything parses the body."""

from __future__ import annotations

import json
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "body_too_large",
                "message": f"the request body is over the limit of {limit} bytes",
                "field": None,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Answer 413 to a body over ``limit`` bytes, by Content-Length or as it streams in.

    No route ever sees part of an oversized request, and nothing is written for one. A request
    that declares its length once, within the limit, and no Transfer-Encoding goes on as it
    came: the server frames its body by that length (HTTP/1.1; an HTTP/2 server refuses DATA
    past it), so no more can arrive, and its route reads the body once, itself (the create,
    ``dispatcher.api.body``). A body of undeclared length is read here first, at most
    ``limit`` bytes of it, and handed on in one piece.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: a request it passes on runs as the app's own coroutine, with
        # no frame of this layer to resume through at each of its suspensions.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        declared = 0  # Content-Length headers within the limit
        framed = True  # no Transfer-Encoding, no unreadable Content-Length
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    framed = False
                elif int(value) > self.limit:
                    return _too_large(send, self.limit)
                else:
                    declared += 1
            elif name == b"transfer-encoding":
                framed = False
        if framed and declared == 1:
            return self.app(scope, receive, send)
        return self._read_first(scope, receive, send)

    async def _read_first(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read a body of undeclared length (at most ``limit`` bytes), then run the app."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _too_large(send, self.limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
