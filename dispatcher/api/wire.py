"""uvicorn's HTTP protocol with each response sent in one write.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two ``send`` calls
on the socket for every answer, and on a loopback or a fast network each one costs the kernel a
segment to push and the client a wake-up to read it. An app sends both messages of a small
answer in the same turn of the event loop, so :class:`OneWriteHttp` holds the head until the
body is written and hands both to the socket together: one system call, one segment, one
wake-up for the client. ``bench/api.py`` measures the difference (docs/benchmarks.md, issue #13).

Written here because uvicorn has no such option (its ``http`` setting takes a protocol class,
which this is); the holding is the transport's only change, everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWrite:
    """A transport that holds a write until the next one, or until the end of the loop's turn.

    A response's head is held; its body, written in the same turn, goes out with it at once.
    A write with nothing held after it (a lone head, the end of a streamed body) leaves at the
    end of the turn. Everything but writing and closing is the wrapped transport's: flow
    control (the protocol is the transport's own), the write buffer's size.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            held, self._held = self._held, None
            self._transport.write(held + data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close (the transport sends its buffer before closing)."""
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`_OneWrite` transport (``http=`` of uvicorn)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]
