"""An httpx transport that sends over aiohttp's connection pool.

The PSP transport speaks httpx (requests, auth, timeouts, errors), but httpx's default transport
(httpcore with h11 on anyio) cost a worker about a millisecond of CPU per request, half of all
its work, in pool bookkeeping, socket-readability checks and the pure-Python HTTP parser.
aiohttp's connector and C parser do the same exchange for a fraction of that
(docs/benchmarks.md). Only the wire changes: ``httpx.AsyncClient(transport=AiohttpTransport())``
keeps httpx's API, and aiohttp's errors are mapped to httpx's own, keeping the one distinction
the engine relies on: whether the request may have reached the payment system.

- nothing was sent: ``httpx.ConnectError`` (refused, DNS), ``httpx.ConnectTimeout`` (connect
  or pool wait timed out), ``httpx.UnsupportedProtocol`` (not an http(s) URL);
- it may have been sent: ``httpx.ReadTimeout``, ``httpx.ReadError`` (disconnected, reset),
  ``httpx.RemoteProtocolError`` (an answer that is not HTTP).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx

# An answer as it came off the wire: status, raw header pairs in wire order, body (still encoded
# as its Content-Encoding says).
Exchanged = tuple[int, list[tuple[bytes, bytes]], bytes]


@contextmanager
def _mapped(request: httpx.Request | None) -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # connect or pool wait: nothing was sent
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # before the request was written
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:  # never sent
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ClientResponseError as exc:  # malformed status line or headers
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:  # disconnected, reset, truncated body
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Keep-alive connections to any host, at most ``max_connections`` at once.

    Create it on the event loop that will use it; close it with ``aclose`` (the client that
    owns it does).
    """

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 30.0) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry,
                # no caching of DNS answers beyond the connection pool: a moved PSP is followed
                use_dns_cache=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # a payment API is stateless
                auto_decompress=False,  # httpx decodes content-encoding itself
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
            # aiohttp silently sends a GET (a status poll) again after a disconnect; every
            # attempt must go through the transport's retries, breaker and rate limit instead.
            # There is no public switch; aiohttp's own test client sets the same attribute.
            self._session._retry_connection = False
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        status, raw, content = await self.exchange(request)
        return httpx.Response(
            status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw],
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def exchange(self, request: httpx.Request) -> Exchanged:
        """Send ``request`` as httpx built it and read the whole answer, without wrapping it
        in an ``httpx.Response`` (the PSP transport reads status, headers and body directly)."""
        body = await request.aread()
        headers = list(request.headers.multi_items())
        timeout = request.extensions.get("timeout", {})
        return await self.send(
            request.method, str(request.url), headers, body, timeout, request=request
        )

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: dict[str, Any],
        *,
        request: httpx.Request | None = None,
    ) -> Exchanged:
        """Send a request given as its parts (headers as they go on the wire, ``timeout`` as
        ``httpx.Timeout.as_dict()``); errors as httpx's, naming ``request`` if given."""
        session = self._get_session()
        with _mapped(request):
            async with session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=_timeout(timeout),
                compress=None,
                auto_decompress=False,
            ) as response:
                content = await response.read()
                return response.status, list(response.raw_headers), content

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            # let the connector's transports finish closing before the loop goes away
            await asyncio.sleep(0)


def _timeout(values: dict[str, Any]) -> aiohttp.ClientTimeout:
    """httpx's connect / read / write / pool timeouts as aiohttp's."""
    connect = values.get("connect")
    pool = values.get("pool")
    read = values.get("read")
    wait = None if connect is None and pool is None else (connect or 0) + (pool or 0)
    return aiohttp.ClientTimeout(total=None, connect=wait, sock_connect=connect, sock_read=read)
