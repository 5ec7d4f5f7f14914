"""dispatcher/api/wire.py: uvicorn's protocol sending each response in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from dispatcher.api.server import serve
from dispatcher.api.wire import OneWriteHttp, _OneWrite


class Transport(asyncio.Transport):
    """What the protocol hands to the socket: each ``write`` call kept apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def small(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app answering ``{"ok":true}`` in two ASGI messages, as every Starlette response."""
    assert scope["type"] == "http"
    body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def streamed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app sending its body in parts, across turns of the loop."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"one", b"two"):
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def answer(protocol_class: type[HttpToolsProtocol], app: Any) -> Transport:
    """One GET through ``protocol_class`` over a recording transport, answered in full."""
    loop = asyncio.get_running_loop()
    config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None)
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    await asyncio.gather(*state.tasks)
    for _ in range(3):  # the turn after the answer, where a held write leaves
        await asyncio.sleep(0)
    return transport


def test_a_small_answer_leaves_in_one_write() -> None:
    transport = asyncio.run(answer(OneWriteHttp, small))
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 11" in head
    assert body == b'{"ok":true}'


def test_uvicorn_alone_writes_the_head_and_the_body_apart() -> None:
    """What the protocol changes: without it the same answer is two writes."""
    transport = asyncio.run(answer(HttpToolsProtocol, small))
    assert len(transport.writes) == 2


def test_a_streamed_answer_arrives_whole_and_in_order() -> None:
    transport = asyncio.run(answer(OneWriteHttp, streamed))
    sent = b"".join(transport.writes)
    head, _, body = sent.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"


def test_closing_sends_what_is_held_first_and_abort_drops_it() -> None:
    asyncio.run(close_and_abort())


async def close_and_abort() -> None:
    loop = asyncio.get_running_loop()
    transport = Transport()
    wire = _OneWrite(transport, loop)
    wire.write(b"head")
    wire.close()
    assert transport.writes == [b"head"]
    assert transport.closed

    transport = Transport()
    wire = _OneWrite(transport, loop)
    wire.write(b"head")
    wire.abort()
    await asyncio.sleep(0)
    assert transport.writes == []
    assert transport.aborted


def test_the_api_is_served_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``paydispatch api`` hands the protocol to uvicorn, with one worker and with several."""
    seen: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.append(kwargs["http"]))
    monkeypatch.setattr("dispatcher.api.server.log_listening", lambda *args, **kwargs: None)
    assert serve(object(), host="127.0.0.1", port=0, workers=2) == 0  # type: ignore[arg-type]
    assert seen == [OneWriteHttp]
