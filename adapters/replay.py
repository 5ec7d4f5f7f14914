"""Replay an adapter's conformance fixtures over HTTP, so the real engine runs against it.

An adapter author has recorded (or reconstructed) answers in a :class:`~adapters.testing.FixtureSet`
for the kit. :class:`Replay` serves them: it learns which method and path each operation uses by
building the kit order's requests with the adapter itself, then answers every request it
recognises from the fixtures and counts calls per operation::

    replay = Replay(my_psp.adapter, fixtures, settings={"secret_key": "fake-secret-123"})
    replay.script("status", CanonicalState.PENDING, CanonicalState.PENDING, CanonicalState.PAID)
    with replay.serve() as url:                  # a Starlette app on a free loopback port
        settings = replay.settings(url)          # the adapter's settings with API_URL=url
        ...                                      # run the engine with them
    assert replay.calls["create"] == 1

What it answers, per operation: ``create`` the create fixture; ``status`` the next scripted
state's fixture (the last one repeats; by default ``PENDING``); ``capture`` the captured fixture;
``cancel`` the cancelled fixture; ``lookup`` ``lookup_found`` once a create was answered, else
``lookup_missing`` (as the payment system would); ``token`` the token fixture. Any operation can
be scripted with canonical states or raw :class:`PspResponse` answers (a 503, a malformed body).
A request it does not recognise is answered 404 with a JSON body naming the known routes, and
kept in :attr:`Replay.unmatched`.

The fixtures describe the kit's order; the engine's orders have other ids. :meth:`Replay.bind`
names the order being replayed: its id then replaces the kit order's id in every answer (ids
are UUIDs, so the replacement touches nothing else), for adapters that check an answer names
their order. The fixtures describe one payment, and a payment id is unique per adapter in the
orders table: replay one order per database. Path segments holding the kit order's id, number,
idempotency key or payment id match any value, so ``/payments/{id}`` is recognised whatever the
id.

:meth:`Replay.mock_transport` answers the same way without a server, as an
``httpx.MockTransport`` for ``Engine(..., http_transport=...)``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Invoice,
    NotSupported,
    PspRequest,
    PspResponse,
)
from adapters.registry import resolve_settings
from adapters.testing import FixtureSet, sample_order
from orders.model import Order
from orders.status import OrderStatus

# The host the routes are learned on; never contacted.
LEARNING_URL = "http://replay.invalid"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

Answer = CanonicalState | PspResponse


@dataclass(frozen=True, slots=True)
class ReplayRoute:
    """How one operation's requests look: a method and a path pattern."""

    operation: str
    method: str
    path: str  # as learned from the kit order, for messages
    pattern: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        return method.upper() == self.method and self.pattern.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class ReplayedRequest:
    """A request the replay received, with the operation it was taken for (None: unmatched)."""

    operation: str | None
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


def _pattern(path: str, wildcards: Sequence[str]) -> re.Pattern[str]:
    """``path`` with every segment that is one of ``wildcards`` matching any one segment."""
    segments = [
        "[^/]+" if segment in wildcards else re.escape(segment) for segment in path.split("/")
    ]
    return re.compile("/".join(segments))


class Replay:
    """Fixture answers for one adapter, served over HTTP or through ``httpx.MockTransport``."""

    def __init__(
        self,
        adapter: Adapter,
        fixtures: FixtureSet,
        settings: Mapping[str, str],
        order: Order | None = None,
    ) -> None:
        """``settings`` is the kit's settings table (fake secrets); ``order`` the order the
        fixtures describe (the kit's ``sample_order`` by default)."""
        self.adapter = adapter
        self.fixtures = fixtures
        self.table = dict(settings)
        self.kit_order = replace(order or sample_order(), adapter=adapter.name)
        self.routes = self._learn()
        self.calls: Counter[str] = Counter()
        self.requests: list[ReplayedRequest] = []
        self._scripts: dict[str, list[Answer]] = {}
        self._bound: Order | None = None
        self._lock = threading.Lock()

    # -- set-up --------------------------------------------------------------------------------

    def settings(self, api_url: str) -> AdapterSettings:
        """The adapter's settings pointing at a replay served on ``api_url``."""
        return resolve_settings(self.adapter, {**self.table, "API_URL": api_url}, environ={})

    def _psp_id(self, settings: AdapterSettings) -> str | None:
        if self.fixtures.psp_id is not None:
            return self.fixtures.psp_id
        built = self.adapter.build_create(self.kit_order, settings)
        if isinstance(built, Invoice):
            return built.psp_id
        if self.fixtures.create is None:
            return None
        return self.adapter.parse_create(self.kit_order, self.fixtures.create).psp_id

    def _learn(self) -> dict[str, ReplayRoute]:
        """The route of every operation the adapter builds a request for."""
        settings = self.settings(LEARNING_URL)
        order = self.kit_order
        psp_id = self._psp_id(settings)
        invoiced = replace(order, status=OrderStatus.AWAITING_PAYMENT, psp_id=psp_id)
        built: dict[str, PspRequest | Invoice | None] = {
            "create": self.adapter.build_create(order, settings),
            "token": self.adapter.build_token(settings),
        }
        if psp_id is not None:
            built["status"] = self.adapter.build_status(invoiced, settings)
        optional = {
            "cancel": (self.adapter.build_cancel, invoiced),
            "capture": (self.adapter.build_capture, invoiced),
            "lookup": (self.adapter.build_lookup, order),
        }
        for operation, (build, for_order) in optional.items():
            with contextlib.suppress(NotSupported):
                built[operation] = build(for_order, settings)
        wildcards = [str(order.id), str(order.number), order.psp_idempotency_key]
        wildcards += [psp_id] if psp_id else []
        routes: dict[str, ReplayRoute] = {}
        for operation, request in built.items():
            if not isinstance(request, PspRequest):
                continue  # an invoice built without a call, or no token needed
            path = urlsplit(request.url).path
            route = ReplayRoute(operation, request.method.upper(), path, _pattern(path, wildcards))
            for other in routes.values():
                if other.method == route.method and other.pattern.pattern == route.pattern.pattern:
                    raise ValueError(
                        f"{operation} and {other.operation} both use {route.method} {path}: "
                        "the replay cannot tell their requests apart"
                    )
            routes[operation] = route
        return routes

    def script(self, operation: str, *answers: Answer) -> None:
        """The next answers to ``operation``, in order; the last one repeats.

        A :class:`CanonicalState` answers with that state's fixture, a :class:`PspResponse`
        as it is. Scripting an operation the adapter has no route for is an error.
        """
        if operation not in self.routes:
            raise ValueError(
                f"{self.adapter.name} builds no {operation} request (known: {sorted(self.routes)})"
            )
        if not answers:
            raise ValueError("script at least one answer")
        for answer in answers:
            if isinstance(answer, CanonicalState) and answer not in self.fixtures.states:
                raise ValueError(f"no {answer} fixture in FixtureSet.states to answer with")
        with self._lock:
            self._scripts[operation] = list(answers)

    def bind(self, order: Order) -> None:
        """Answer about ``order``: its id replaces the kit order's id in the answers."""
        with self._lock:
            self._bound = order

    # -- answering -----------------------------------------------------------------------------

    def operation_of(self, method: str, path: str) -> str | None:
        for route in self.routes.values():
            if route.matches(method, path):
                return route.operation
        return None

    def _scripted(self, operation: str) -> Answer | None:
        script = self._scripts.get(operation)
        if not script:
            return None
        return script.pop(0) if len(script) > 1 else script[0]

    def _fixture_for(self, operation: str) -> PspResponse | None:
        """The answer to ``operation`` (called with the lock held)."""
        scripted = self._scripted(operation)
        if isinstance(scripted, PspResponse):
            return scripted
        fixtures = self.fixtures
        if operation == "status" or scripted is not None:
            default = CanonicalState.PENDING
            state = scripted if scripted is not None else default
            return fixtures.states.get(state)
        if operation == "lookup":
            return fixtures.lookup_found if self.calls["create"] else fixtures.lookup_missing
        return {
            "create": fixtures.create,
            "capture": fixtures.captured,
            "cancel": fixtures.cancelled,
            "token": fixtures.token,
        }.get(operation)

    def _personalised(self, content: bytes) -> bytes:
        if self._bound is None:
            return content
        return content.replace(str(self.kit_order.id).encode(), str(self._bound.id).encode())

    def answer(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> PspResponse:
        """Count and answer one request."""
        operation = self.operation_of(method, path)
        record = ReplayedRequest(operation, method.upper(), path, query, dict(headers), body)
        with self._lock:
            self.requests.append(record)
            self.calls[operation or "unmatched"] += 1
            if operation is None:
                known = {r.operation: f"{r.method} {r.path}" for r in self.routes.values()}
                message = {"error": f"the replay knows no {method} {path}", "routes": known}
                return PspResponse(404, json.dumps(message).encode(), _JSON)
            fixture = self._fixture_for(operation)
            if fixture is None:
                message = {"error": f"FixtureSet has no answer to {operation}"}
                return PspResponse(501, json.dumps(message).encode(), _JSON)
            content = self._personalised(fixture.content)
            return PspResponse(fixture.status_code, content, _headers(fixture))

    def counts(self) -> dict[str, int]:
        """Calls received per operation so far (``unmatched`` for unrecognised requests)."""
        with self._lock:
            return dict(self.calls)

    @property
    def unmatched(self) -> list[ReplayedRequest]:
        with self._lock:
            return [r for r in self.requests if r.operation is None]

    # -- serving -------------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The replay as an ASGI app: every path, every method."""

        async def endpoint(request: Request) -> Response:
            answer = self.answer(
                request.method,
                request.url.path,
                request.url.query,
                dict(request.headers),
                await request.body(),
            )
            return Response(answer.content, answer.status_code, headers=dict(answer.headers))

        return Starlette(routes=[Route("/{path:path}", endpoint, methods=METHODS)])

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve the replay from a background thread on a free port; yields its base URL."""
        from adapters.sandbox.runner import serve_in_thread

        with serve_in_thread(self.app(), host) as url:
            yield url

    def mock_transport(self) -> httpx.MockTransport:
        """The replay as an ``httpx.MockTransport``: no server, the same answers and counts."""

        def handle(request: httpx.Request) -> httpx.Response:
            answer = self.answer(
                request.method,
                request.url.path,
                request.url.query.decode("ascii", "replace"),
                dict(request.headers),
                request.read(),
            )
            return httpx.Response(
                answer.status_code, headers=dict(answer.headers), content=answer.content
            )

        return httpx.MockTransport(handle)


_JSON = {"content-type": "application/json"}
# Framing headers of a recorded answer: the server computes its own.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def _headers(fixture: PspResponse) -> dict[str, str]:
    """A fixture's headers, less framing; JSON's content type when it has none and looks so."""
    headers = {k.lower(): v for k, v in fixture.headers.items() if k.lower() not in _FRAMING}
    if "content-type" not in headers and fixture.content.lstrip()[:1] in (b"{", b"["):
        headers["content-type"] = "application/json"
    return headers
