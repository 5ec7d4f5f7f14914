"""PSP transport: the only place paydispatch talks HTTP to payment systems.

One ``httpx.AsyncClient`` per adapter (over aiohttp's connection pool), explicit timeouts,
tenacity retries of transient failures (same request, so the same idempotency key), a rate
limit and a concurrency cap per adapter, and a circuit breaker. Everything is async: a poll
waiting on a slow payment system holds no thread.

What the contract asks of it (``adapters/base.py``):

- Query strings and form bodies may be sequences of pairs: sent in order, keys repeated.
- A create of an adapter without idempotency keys is never sent twice: only failures that surely
  sent nothing (connection refused, connect timeout, 429) are retried; the engine looks the
  invoice up before any later create.
- Access tokens (``build_token``/``parse_token``): fetched through the same client, retries,
  breaker and metrics (operation ``token``), one fetch at a time, cached until shortly before
  they expire, put on every request with ``apply_token``, and refreshed once when a request is
  answered 401.

Errors raised (all :class:`TransientError` — never a reason to reject an order):

- :class:`PspUnavailable` — timeout, connection error, 5xx or 429 after the retries;
  ``maybe_sent`` tells whether the payment system may have acted on the request.
- :class:`CircuitOpen` — too many recent failures; nothing was sent.

Both are logged per adapter, not per call: one line when the payment system becomes
unavailable, then at most one per interval with a count of the rest
(:mod:`dispatcher.worker.outage`).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from adapters.base import Adapter, AdapterSettings, PspRequest, PspResponse, Token, pairs
from dispatcher import metrics
from dispatcher.policy import DispatchPolicy
from dispatcher.worker.aiohttp_transport import AiohttpTransport, Exchanged
from dispatcher.worker.breaker import CircuitBreaker, CircuitOpen
from dispatcher.worker.outage import OutageLog
from orders.backoff import retry_after_wait
from orders.errors import TransientError

log = structlog.get_logger(__name__)

__all__ = ["CircuitOpen", "PspUnavailable", "RateLimiter", "Transport"]


class PspUnavailable(TransientError):
    """The payment system did not give a usable answer (timeout, network, 5xx, 429)."""

    def __init__(self, message: str, *, maybe_sent: bool, retry_after: float | None = None):
        super().__init__(message)
        self.maybe_sent = maybe_sent
        self.retry_after = retry_after


class RateLimiter:
    """Token bucket: at most ``rate`` acquisitions per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(rate, 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, PspUnavailable)


def _surely_not_sent(exc: BaseException) -> bool:
    return isinstance(exc, PspUnavailable) and not exc.maybe_sent


# A cached token is used until this long before it expires: the smaller of a minute and a tenth
# of its lifetime, so a request never leaves with a token about to lapse on the way.
TOKEN_MARGIN = timedelta(seconds=60)
TOKEN_MARGIN_SHARE = 0.1
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class _Wait:
    """tenacity wait: full-jitter exponential, but never shorter than a Retry-After."""

    base: float = 0.2
    cap: float = 5.0
    rng: Callable[[], float] = random.random

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = exc.retry_after if isinstance(exc, PspUnavailable) else None
        return retry_after_wait(
            self.base, state.attempt_number - 1, cap=self.cap, retry_after=after, rng=self.rng
        )


def _client(policy: DispatchPolicy, transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(policy.timeout, connect=min(policy.timeout, 5.0)),
        transport=transport,
        follow_redirects=False,
        trust_env=False,  # a payment API is reached directly, whatever the environment says
    )


def _headers_and_content(request: PspRequest) -> tuple[dict[str, str], bytes | None]:
    """The headers and raw body to send; a form is encoded here, its pairs kept in order."""
    headers = dict(request.headers)
    if request.form is None:
        return headers, request.content
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = FORM_CONTENT_TYPE
    return headers, urlencode(pairs(request.form)).encode("ascii")


# A URL httpx sends as it is: http(s), a lower-case host, a path of characters that need no
# quoting (no "%", no dot segment), no query or fragment. Others are built by httpx itself.
_PLAIN_URL = re.compile(
    r"https?://[a-z0-9][a-z0-9.-]*(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]*)*"
)


def _plain(request: PspRequest, headers: Mapping[str, str]) -> bool:
    return (
        not request.params
        and _PLAIN_URL.fullmatch(request.url) is not None
        and "/." not in request.url
        and all(name.isascii() and value.isascii() for name, value in headers.items())
    )


def _header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """An answer's headers as ``dict(httpx.Headers(raw))`` gives them: names lower-cased, the
    values of a repeated name joined with ", ", decoded as httpx guesses (ASCII, else UTF-8,
    else Latin-1)."""
    encoding = _encoding(raw)
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode(encoding).lower(), value.decode(encoding)
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _encoding(raw: list[tuple[bytes, bytes]]) -> str:
    for candidate in ("ascii", "utf-8"):
        try:
            for name, value in raw:
                name.decode(candidate)
                value.decode(candidate)
        except UnicodeDecodeError:
            continue
        return candidate
    return "iso-8859-1"


class Transport:
    """Sends an adapter's :class:`PspRequest` and returns the :class:`PspResponse`.

    2xx and 4xx answers (other than 429) are returned for the adapter to parse; everything
    else is retried and finally raised as :class:`PspUnavailable`. Create one per adapter and
    per event loop; close it with :meth:`aclose`.

    ``http_transport`` replaces the wire (``httpx.MockTransport`` in an adapter's tests, a
    replay of recorded answers); ``clock`` (monotonic seconds) times the token cache.
    """

    def __init__(
        self,
        adapter: Adapter,
        settings: AdapterSettings,
        policy: DispatchPolicy,
        *,
        http_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.settings = settings
        self.policy = policy
        # aiohttp's pool under httpx's API (dispatcher/worker/aiohttp_transport.py says why).
        # On that wire a request built by httpx is sent by the wire itself, past httpx's send
        # (auth, redirects, cookies, event hooks: none of which a payment API gets from us),
        # which cost a poll a third of its CPU (docs/benchmarks.md). Any other wire (a
        # ``MockTransport``, a replay) is driven through the client.
        self._wire: AiohttpTransport | None = None
        if http_transport is None:
            self._wire = http_transport = AiohttpTransport(max_connections=policy.concurrency)
        self.client = _client(policy, http_transport)
        self._defaults = list(self.client.headers.items())  # httpx's: accept, user-agent...
        self._timeouts = self.client.timeout.as_dict()
        self.clock = clock
        self._token: Token | None = None
        self._token_good_until = 0.0
        self._token_lock = asyncio.Lock()
        gauge = metrics.BREAKER_STATE.labels(adapter.name)
        gauge.set(0)
        self.breaker = CircuitBreaker(
            policy.breaker_failures, policy.breaker_reset, on_change=gauge.set
        )
        self.limiter = RateLimiter(policy.rate)
        self.slots = asyncio.Semaphore(policy.concurrency)
        self.outage = OutageLog(adapter.name, clock=clock)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, request: PspRequest) -> PspResponse:
        """Send ``request`` (with the access token, if the adapter uses one) and answer it."""
        token = await self._current_token()
        if token is None:
            return await self._send(request)
        response = await self._send(self.adapter.apply_token(request, token))
        if response.status_code != 401:
            return response
        # The token may have been revoked or rotated before its time: one fresh token, once.
        log.info("access token refused; fetching a new one", adapter=self.adapter.name)
        token = await self._current_token(refused=token)
        assert token is not None
        return await self._send(self.adapter.apply_token(request, token))

    async def _current_token(self, refused: Token | None = None) -> Token | None:
        """The cached token, or a new one; None when the adapter needs none.

        One fetch at a time: steps waiting meanwhile use the token it brings. ``refused`` is a
        token a request was just refused with: it is fetched anew unless another step already
        replaced it.
        """
        if refused is None and self._token is not None and self.clock() < self._token_good_until:
            return self._token
        async with self._token_lock:
            fresh = self._token is not None and self.clock() < self._token_good_until
            if fresh and (refused is None or self._token is not refused):
                return self._token
            built = self.adapter.build_token(self.settings)
            if built is None:
                return None
            request = replace(built, operation="token")
            started = self.clock()
            token = self.adapter.parse_token(await self._send(request), self.settings)
            lifetime = token.expires_in.total_seconds()
            margin = min(TOKEN_MARGIN.total_seconds(), lifetime * TOKEN_MARGIN_SHARE)
            self._token = token
            self._token_good_until = started + lifetime - margin
            return token

    async def _send(self, request: PspRequest) -> PspResponse:
        """One request through the breaker and the retries."""
        try:
            self.breaker.before_call(self.adapter.name)
        except CircuitOpen as exc:
            self.outage.failed(str(exc), held_back=True)
            raise
        once_only = (
            request.operation == "create" and not self.adapter.capabilities.idempotent_create
        )
        # Without an idempotency key a second create could make a second invoice: retry only
        # what surely never reached the payment system.
        retryable = _surely_not_sent if once_only else _is_retryable
        try:
            try:
                response = await self._send_once(request)
            except PspUnavailable as exc:
                if not retryable(exc):
                    raise
                response = await self._retry(request, retryable, exc)
        except PspUnavailable as exc:
            self.breaker.record_failure()
            self.outage.failed(str(exc))
            raise
        self.breaker.record_success()
        self.outage.recovered()
        return response

    async def _retry(
        self,
        request: PspRequest,
        retryable: Callable[[BaseException], bool],
        first: PspUnavailable,
    ) -> PspResponse:
        """The tries after a first one that failed with ``first``, under tenacity.

        The first try is made outside tenacity (most calls need no retry, and setting up its
        retry state cost a poll a tenth of its CPU); tenacity's own first attempt here gives
        back ``first`` without sending, so the count of tries and every wait are what they
        would have been had tenacity made that try."""
        failed = [first]
        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self.policy.retries + 1),
            wait=_Wait(),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if failed:
                    raise failed.pop()
                return await self._send_once(request)
        raise AssertionError("unreachable: tenacity returns or reraises")  # pragma: no cover

    async def _exchange(
        self, request: PspRequest, headers: dict[str, str], content: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (as ``dict(response.headers)``) and decoded body of the answer.

        On the aiohttp wire a plain request (no query, a URL httpx would not rewrite, ASCII
        headers) is put together here as httpx would build it; any other is built by httpx."""
        if self._wire is not None and _plain(request, headers):
            wire_headers, body = self._prepared(request, headers, content)
            exchanged = await self._wire.send(
                request.method, request.url, wire_headers, body, self._timeouts
            )
        else:
            built = self.client.build_request(
                request.method,
                request.url,
                headers=headers,
                params=tuple(pairs(request.params)) or None,
                json=request.json,
                content=content,
            )
            if self._wire is None or built.url.userinfo:  # the client's wire, or URL auth
                response = await self.client.send(built)
                self.client.cookies.clear()  # a payment API is stateless: no cookie goes back
                return response.status_code, dict(response.headers), response.content
            exchanged = await self._wire.exchange(built)
        status, raw, body = exchanged
        answer_headers = _header_dict(raw)
        if "content-encoding" in answer_headers:  # decoded by httpx, as through the client
            return await _decoded(exchanged)
        return status, answer_headers, body

    def _prepared(
        self, request: PspRequest, headers: dict[str, str], content: bytes | None
    ) -> tuple[list[tuple[str, str]], bytes]:
        """The headers and body httpx's ``build_request`` makes of a plain request (its
        default headers unless given, then the request's, then the body's length and type)."""
        given = {name.lower() for name in headers}
        wire = [(name, value) for name, value in self._defaults if name not in given]
        wire += headers.items()
        extra: dict[str, str] = {}
        if content is not None:
            body = content
            if body:
                extra["content-length"] = str(len(body))
        elif request.json is not None:
            body = json.dumps(
                request.json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
            extra = {"content-length": str(len(body)), "content-type": "application/json"}
        else:
            body = b""
        if not body and request.method in ("POST", "PUT", "PATCH"):
            extra.setdefault("content-length", "0")
        wire += [(name, value) for name, value in extra.items() if name not in given]
        return wire, body

    async def _send_once(self, request: PspRequest) -> PspResponse:
        async with self.slots:
            await self.limiter.acquire()
            started = time.perf_counter()
            outcome = "error"
            try:
                headers, content = _headers_and_content(request)
                code, answer_headers, body = await self._exchange(request, headers, content)
            except httpx.TimeoutException as exc:
                outcome = "timeout"
                # A connect timeout means nothing reached the payment system.
                sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
                raise PspUnavailable(
                    f"{self.adapter.name} {request.operation}: timed out ({type(exc).__name__})",
                    maybe_sent=sent,
                ) from exc
            except httpx.TransportError as exc:
                outcome = "network"
                sent = not isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol)
                raise PspUnavailable(
                    f"{self.adapter.name} {request.operation}: {type(exc).__name__}: {exc}",
                    maybe_sent=sent,
                ) from exc
            finally:
                elapsed = time.perf_counter() - started
                metrics.PSP_DURATION.labels(self.adapter.name, request.operation).observe(elapsed)
                if outcome != "error":
                    metrics.PSP_REQUESTS.labels(self.adapter.name, request.operation, outcome).inc()
            kind = "ok" if code < 400 else "429" if code == 429 else f"{code // 100}xx"
            metrics.PSP_REQUESTS.labels(self.adapter.name, request.operation, kind).inc()
            if code == 429 or code >= 500:
                raise PspUnavailable(
                    f"{self.adapter.name} {request.operation}: HTTP {code}",
                    maybe_sent=code != 429,
                    retry_after=_retry_after(answer_headers),
                )
            return PspResponse(status_code=code, content=body, headers=answer_headers)


async def _decoded(exchanged: Exchanged) -> tuple[int, dict[str, str], bytes]:
    """An answer with a Content-Encoding, decoded by httpx's own decoders."""
    status, raw, body = exchanged
    response = httpx.Response(status, headers=raw, stream=httpx.ByteStream(body))
    await response.aread()
    return status, dict(response.headers), response.content
