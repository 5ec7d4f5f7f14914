"""AiohttpTransport against loopback servers: what reaches the wire, and what each failure becomes.

Each server is an ``asyncio.start_server`` on 127.0.0.1 in the test's own event loop, speaking
just enough HTTP/1.1 by hand to answer, hang, hang up or talk nonsense. Failures split the way
the engine needs: ``ConnectError`` / ``ConnectTimeout`` when nothing was sent, any other
``httpx.TransportError`` when the request may have reached the payment system.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import httpx
import pytest

from adapters.base import PspRequest, PspResponse
from adapters.sandbox.adapter import Sandbox
from adapters.testing import sample_order
from dispatcher.worker.aiohttp_transport import AiohttpTransport
from dispatcher.worker.transport import PspUnavailable, Transport, _plain
from orders import Money
from tests.dispatch_support import FAST, sandbox_runtime

NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


@dataclass(frozen=True)
class Received:
    """One request as it came off the socket."""

    line: bytes  # the request line, without CRLF
    headers: list[tuple[bytes, bytes]]  # in wire order, names as sent
    body: bytes

    def header_set(self) -> list[tuple[bytes, bytes]]:
        return sorted((name.lower(), value) for name, value in self.headers)


Handler = Callable[["LoopbackServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LoopbackServer:
    """A TCP server on a free 127.0.0.1 port; every connection is handed to ``handle``.

    Handlers that never answer wait on ``release``, which is set on exit; the server then closes
    every connection it still has and waits for its handlers, so nothing outlives the test.
    """

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.connections = 0
        self.requests: list[Received] = []
        self.received = asyncio.Event()  # set at each request read
        self.release = asyncio.Event()
        self.errors: list[BaseException] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self.release.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks)
        await self._server.wait_closed()
        if exc_type is None:
            assert self.errors == []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        self._writers.append(writer)
        try:
            await self.handle(self, reader, writer)
        except Exception as exc:  # reported by __aexit__, not lost in the loop's log
            self.errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def read_request(self, reader: asyncio.StreamReader) -> Received | None:
        """The next request on this connection, or None when the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        line, *header_lines = head[:-4].split(b"\r\n")
        headers: list[tuple[bytes, bytes]] = []
        for header in header_lines:
            name, sep, value = header.partition(b":")
            assert sep, header
            headers.append((name, value.strip(b" \t")))
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        assert len(lengths) <= 1, headers
        body = await reader.readexactly(int(lengths[0])) if lengths else b""
        request = Received(line, headers, body)
        self.requests.append(request)
        self.received.set()
        return request


def response_bytes(
    status: str, headers: list[tuple[str, str]], body: bytes, *, length: int | None = None
) -> bytes:
    """An HTTP/1.1 response; ``length`` overrides the Content-Length (to truncate a body)."""
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def client(timeout: httpx.Timeout | float = 2.0, *, max_connections: int = 10) -> httpx.AsyncClient:
    transport = AiohttpTransport(max_connections=max_connections)
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def free_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """Run a scenario on a fresh event loop; a hang (a caller nobody answers) fails in 5 s."""

    async def guarded() -> None:
        async with asyncio.timeout(5):
            await scenario

    asyncio.run(guarded())


async def close_without_answer(
    server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await server.read_request(reader)


async def never_answer(
    server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await server.read_request(reader)
    await server.release.wait()


def test_a_post_arrives_byte_exact_and_the_answer_comes_back_whole() -> None:
    payload = {"amount": 1999, "currency": "USD", "note": "Zoë's order"}
    answer = json.dumps({"id": "inv_1", "status": "pending"}).encode()

    async def handle(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        headers = [("Content-Type", "application/json"), ("X-Dup", "a"), ("X-Dup", "b")]
        writer.write(response_bytes("201 Created", headers, answer))
        await writer.drain()

    async def go() -> None:
        async with LoopbackServer(handle) as server, client() as http:
            response = await http.post(
                f"{server.url}/api/v1/invoices?site=shop&ref=A%2042",
                json=payload,
                headers={"Idempotency-Key": "key-42", "X-Request-Id": "req-1"},
                auth=httpx.BasicAuth("merchant", "s3cret"),
            )
            assert len(server.requests) == 1
            got = server.requests[0]
            sent = response.request

        assert got.line == b"POST /api/v1/invoices?site=shop&ref=A%2042 HTTP/1.1"
        assert got.body == sent.content  # the bytes httpx built, unchanged
        assert json.loads(got.body) == payload
        # every header httpx built arrives once, with its value unchanged, and nothing else
        assert got.header_set() == sorted((k.lower(), v) for k, v in sent.headers.raw)
        wire = dict(got.header_set())
        assert wire[b"authorization"] == b"Basic " + base64.b64encode(b"merchant:s3cret")
        assert wire[b"idempotency-key"] == b"key-42"
        assert wire[b"x-request-id"] == b"req-1"
        assert wire[b"content-type"] == b"application/json"
        assert wire[b"content-length"] == str(len(got.body)).encode()
        assert wire[b"host"] == f"127.0.0.1:{server.port}".encode()

        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        assert response.headers.get_list("x-dup") == ["a", "b"]
        assert response.content == answer
        assert response.json() == {"id": "inv_1", "status": "pending"}

    run(go())


def test_a_gzip_answer_is_decoded_once_by_httpx() -> None:
    text = "Привет, payment system! " * 50
    compressed = gzip.compress(text.encode())

    async def handle(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Encoding", "gzip")]
        writer.write(response_bytes("200 OK", headers, compressed))
        await writer.drain()

    async def go() -> None:
        async with LoopbackServer(handle) as server, client() as http:
            response = await http.get(f"{server.url}/text")
        assert response.status_code == 200
        assert response.text == text
        # the transport handed httpx the bytes as they came off the wire
        assert response.num_bytes_downloaded == len(compressed)
        assert response.headers["content-length"] == str(len(compressed))

    run(go())


def test_sequential_requests_reuse_one_keep_alive_connection() -> None:
    async def handle(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await server.read_request(reader)) is not None:
            writer.write(response_bytes("200 OK", [], request.line.split(b" ")[1]))
            await writer.drain()

    async def go() -> None:
        async with LoopbackServer(handle) as server:
            async with client() as http:
                bodies = [(await http.get(f"{server.url}/poll/{i}")).content for i in range(3)]
            assert bodies == [b"/poll/0", b"/poll/1", b"/poll/2"]
            assert len(server.requests) == 3
            assert server.connections == 1

    run(go())


def test_connection_refused_is_a_connect_error() -> None:
    async def go() -> None:
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(f"http://127.0.0.1:{free_port()}/api/v1/invoices", json={})

    run(go())


def test_a_server_that_reads_the_request_and_hangs_up_gives_an_error_that_may_have_sent() -> None:
    async def go() -> None:
        async with LoopbackServer(close_without_answer) as server, client() as http:
            with pytest.raises(httpx.TransportError) as info:
                await http.post(f"{server.url}/api/v1/invoices", json={"amount": 1})
            assert len(server.requests) == 1  # it did arrive
        assert isinstance(info.value, httpx.ReadError)
        assert not isinstance(info.value, NOT_SENT)

    run(go())


def test_a_server_that_never_answers_gives_a_read_timeout() -> None:
    async def go() -> None:
        # only the read timeout is short: a transport ignoring it trips run()'s 5 s guard
        async with (
            LoopbackServer(never_answer) as server,
            client(httpx.Timeout(30.0, read=0.3)) as http,
        ):
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"{server.url}/api/v1/invoices", json={"amount": 1})
            assert len(server.requests) == 1

    run(go())


def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async def handle(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await server.release.wait()  # the client sees the nonsense, not a hang-up

    async def go() -> None:
        async with LoopbackServer(handle) as server, client() as http:
            with pytest.raises(httpx.TransportError) as info:
                await http.post(f"{server.url}/api/v1/invoices", json={"amount": 1})
        assert isinstance(info.value, httpx.RemoteProtocolError)
        assert not isinstance(info.value, NOT_SENT)

    run(go())


def test_a_truncated_body_is_a_read_error() -> None:
    async def handle(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(response_bytes("200 OK", [], b'{"id":', length=100))
        await writer.drain()

    async def go() -> None:
        async with LoopbackServer(handle) as server, client() as http:
            with pytest.raises(httpx.ReadError):
                await http.post(f"{server.url}/api/v1/invoices", json={"amount": 1})

    run(go())


def test_waiting_too_long_for_a_pooled_connection_is_a_connect_timeout() -> None:
    async def go() -> None:
        timeout = httpx.Timeout(30.0, connect=0.2, pool=0.2)
        async with (
            LoopbackServer(never_answer) as server,
            client(timeout, max_connections=1) as http,
        ):
            first = asyncio.create_task(http.post(f"{server.url}/first", json={}))
            await server.received.wait()  # the only connection is taken
            with pytest.raises(httpx.ConnectTimeout):
                await http.post(f"{server.url}/second", json={})
            assert [r.line for r in server.requests] == [b"POST /first HTTP/1.1"]
            assert server.connections == 1
            server.release.set()  # the first request's server hangs up
            with pytest.raises(httpx.ReadError):
                await first

    run(go())


async def send_create(url: str) -> None:
    """A sandbox create request through the PSP transport, once (no retries)."""
    runtime = sandbox_runtime(url, replace(FAST, retries=0))
    order = replace(
        sample_order(),
        id=uuid.uuid4(),
        money=Money(1000, "USD"),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    transport = Transport(runtime.adapter, runtime.settings, runtime.policy)
    try:
        request = runtime.adapter.build_create(order, runtime.settings)
        assert isinstance(request, PspRequest)
        await transport.send(request)
    finally:
        await transport.aclose()


def test_through_the_psp_transport_a_hang_up_may_have_sent() -> None:
    async def go() -> None:
        async with LoopbackServer(close_without_answer) as server:
            with pytest.raises(PspUnavailable) as info:
                await send_create(server.url)
            assert [r.line.split(b" ")[0] for r in server.requests] == [b"POST"]
        assert info.value.maybe_sent is True

    run(go())


def test_through_the_psp_transport_refused_is_known_not_sent() -> None:
    with pytest.raises(PspUnavailable) as info:
        run(send_create(f"http://127.0.0.1:{free_port()}"))
    assert info.value.maybe_sent is False


def test_a_status_get_after_a_hang_up_is_not_sent_again_behind_the_retries() -> None:
    # aiohttp on its own would send an idempotent request a second time after a disconnect,
    # past the PSP transport's retry count, breaker and rate limit.
    async def go() -> None:
        async with LoopbackServer(close_without_answer) as server, client() as http:
            with pytest.raises(httpx.ReadError):
                await http.get(f"{server.url}/api/v1/invoices/inv_1")
            assert len(server.requests) == 1

    run(go())


def test_a_url_that_is_not_http_is_known_not_sent() -> None:
    async def go() -> None:
        async with client() as http:
            with pytest.raises(httpx.UnsupportedProtocol):
                await http.get("ftp://127.0.0.1/x")

    run(go())


class _SandboxWithoutKeys(Sandbox):
    """The sandbox as a payment system without idempotency keys would be (T-Bank's Init)."""

    capabilities = replace(Sandbox.capabilities, idempotent_create=False)


@pytest.mark.parametrize(("adapter", "creates"), [(_SandboxWithoutKeys(), 1), (Sandbox(), 3)])
def test_against_a_slow_server_a_create_without_keys_is_sent_exactly_once(
    adapter: Sandbox, creates: int
) -> None:
    # Given a payment system that takes the create and answers too late, and two retries,
    policy = replace(FAST, retries=2, timeout=0.3)
    base = sandbox_runtime("http://127.0.0.1:9", policy)
    order = replace(
        sample_order(), id=uuid.uuid4(), money=Money(1000, "USD"),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip

    async def go() -> None:
        async with LoopbackServer(never_answer) as server:
            settings = replace(
                base.settings, values={**base.settings.values, "API_URL": server.url}
            )
            transport = Transport(adapter, settings, policy)
            request = adapter.build_create(order, settings)
            try:
                with pytest.raises(PspUnavailable) as caught:
                    await transport.send(request)
            finally:
                await transport.aclose()
            # then one order made exactly one create without keys (the retries re-send it
            # with the same key where there is one).
            assert caught.value.maybe_sent
            assert len(server.requests) == creates

    run(go())


# The PSP transport sends on aiohttp itself, past httpx's send (auth, redirects, cookies, hooks);
# what reaches the payment system and what the adapter reads must not change for it.
WIRE_REQUESTS = [
    PspRequest(
        "POST",
        "/v1/invoices",
        "create",
        headers={"Idempotency-Key": "pd-42", "Authorization": "Bearer k"},
        json={"amount": 1999, "note": "Zoë's order", "items": [1, 2]},
    ),
    PspRequest("GET", "/v1/invoices/inv 1", "status", params=[("expand", "a"), ("expand", "b c")]),
    PspRequest("POST", "/v1/refunds", "refund", form=[("amount", "5"), ("reason", "a&b é")]),
    PspRequest(
        "POST", "/v1/raw", "capture", headers={"Content-Type": "text/plain"}, content=b"raw"
    ),
    PspRequest("GET", "/v1/gzip", "status"),
    PspRequest("GET", "/v1/busy", "status"),
    PspRequest("GET", "/v1/invoices/inv_1", "status", headers={"Authorization": "Bearer k"}),
    PspRequest("POST", "/v1/invoices/inv_1/cancel", "cancel"),
    PspRequest(
        "POST",
        "/v1/payments",
        "create",
        headers={"Content-Type": "application/json; charset=utf-8", "Accept": "text/plain"},
        json={"amount": {"value": "19.99"}},
    ),
]
# Put together by the transport itself (the others are built by httpx first, on the same wire).
PLAIN = {0, 2, 3, 4, 5, 6, 7, 8}


async def _echo(
    server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while (request := await server.read_request(reader)) is not None:
        path = request.line.split(b" ")[1]
        headers = [("Content-Type", "application/json"), ("X-Dup", "a"), ("X-Dup", "b")]
        body = json.dumps({"path": path.decode(), "body": request.body.decode()}).encode()
        status = "200 OK"
        if path == b"/v1/gzip":
            headers.append(("Content-Encoding", "gzip"))
            body = gzip.compress(body)
        elif path == b"/v1/busy":
            status = "429 Too Many Requests"
            headers.append(("Retry-After", "0"))
        writer.write(response_bytes(status, headers, body))
        await writer.drain()


async def _send_all(transport: Transport, base: str) -> list[object]:
    answers: list[object] = []
    try:
        for request in WIRE_REQUESTS:
            try:
                answers.append(await transport.send(replace(request, url=base + request.url)))
            except PspUnavailable as exc:
                answers.append((str(exc), exc.maybe_sent, exc.retry_after))
    finally:
        await transport.aclose()
    return answers


def test_the_psp_transport_on_aiohttp_sends_and_reads_what_it_would_through_httpx() -> None:
    policy = replace(FAST, retries=0)
    runtime = sandbox_runtime("http://127.0.0.1:9", policy)

    async def go() -> None:
        # Given the same requests sent on the transport's own aiohttp wire and, through the
        # httpx client, on an AiohttpTransport given as its wire,
        async with LoopbackServer(_echo) as direct, LoopbackServer(_echo) as through:
            mine = Transport(runtime.adapter, runtime.settings, policy)
            assert mine._wire is not None  # the wire is driven without the client's send
            given = Transport(
                runtime.adapter, runtime.settings, policy, http_transport=AiohttpTransport()
            )
            assert given._wire is None
            plain = {
                n
                for n, r in enumerate(WIRE_REQUESTS)
                if _plain(replace(r, url=direct.url + r.url), dict(r.headers))
            }
            assert plain == PLAIN
            answers = await _send_all(mine, direct.url)
            expected = await _send_all(given, through.url)
            sent, wanted = direct.requests, through.requests
        # then every request arrives byte for byte as httpx would have sent it,
        assert len(sent) == len(wanted) == len(WIRE_REQUESTS)
        for got, want in zip(sent, wanted, strict=True):
            assert got.line == want.line
            assert got.body == want.body
            ports = {f"127.0.0.1:{direct.port}".encode(), f"127.0.0.1:{through.port}".encode()}
            hosts = [(n, b"HOST") if v in ports else (n, v) for n, v in got.header_set()]
            want_hosts = [(n, b"HOST") if v in ports else (n, v) for n, v in want.header_set()]
            assert hosts == want_hosts
        # and every answer reads the same: status, body (gzip decoded), repeated headers
        # joined, a 429 with its Retry-After.
        assert len(answers) == len(expected)
        for answer, want_answer in zip(answers, expected, strict=True):
            if isinstance(answer, PspResponse):
                assert isinstance(want_answer, PspResponse)
                assert answer.status_code == want_answer.status_code
                assert answer.status_code == 200
                assert answer.content == want_answer.content
                assert json.loads(answer.content)["path"].startswith("/v1/")
                drop = {"content-length"}  # of the gzip body: the same on both, but ports differ
                assert {k: v for k, v in answer.headers.items() if k not in drop} == {
                    k: v for k, v in want_answer.headers.items() if k not in drop
                }
                assert answer.headers["x-dup"] == "a, b"
            else:
                message, maybe_sent, retry_after = answer  # type: ignore[misc]
                assert (maybe_sent, retry_after) == want_answer[1:]  # type: ignore[index]
                assert message.endswith("HTTP 429")
                assert retry_after == 0.0

    run(go())
