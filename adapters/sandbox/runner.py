"""Running the sandbox: :func:`serve` for the CLI, :func:`running_sandbox` for tests and demos.

Both use a uvicorn server that releases requests held by ``timeout`` faults before it drains
connections, so stopping never waits out an injected hang.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from socket import socket

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.server import create_app

logger = logging.getLogger(__name__)
log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that says when it listens and runs a hook before shutting down."""

    def __init__(
        self,
        config: uvicorn.Config,
        before_shutdown: Callable[[], None],
        on_listening: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown
        self._on_listening = on_listening
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket] | None = None) -> None:
        await super().startup(sockets)
        if self._on_listening is not None and self.started and self.servers:
            self._on_listening(self.servers[0].sockets[0].getsockname()[1])
        self.ready.set()

    async def shutdown(self, sockets: list[socket] | None = None) -> None:
        self._before_shutdown()
        await super().shutdown(sockets)


def _release_holds(app: ASGIApp) -> Callable[[], None]:
    """The hook that frees requests held by timeout faults (the sandbox's or a fake's)."""
    state = getattr(app, "state", None)
    holder = getattr(state, "sandbox", None) or getattr(state, "fake", None)
    return holder.release_holds if holder is not None else lambda: None


def serve(
    host: str, port: int, config: SandboxConfig | None = None, *, access_log: bool = True
) -> None:
    """Run the sandbox payment system on ``host:port`` until SIGINT or SIGTERM.

    Serves the merchant API under ``/api/v1``, the pay pages under ``/pay/{id}`` and the
    unauthenticated control API under ``/_control`` (faults, late payments, stats, reset), so
    bind it to a loopback address. Requests held by injected timeouts are released on shutdown.
    ``access_log=False`` drops uvicorn's line per request (a load test's thousands a second).
    """
    app = create_app(config)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        ws="none",
        access_log=access_log,
        timeout_graceful_shutdown=5,
    )

    def listening(bound: int) -> None:
        url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
        log.info(
            "sandbox listening",
            url=url,
            api=f"{url}/api/v1",
            pay_pages=f"{url}/pay/{{invoice_id}}",
            control=f"{url}/_control/",
        )

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn re-raises it once drained
        _Server(uvicorn_config, _release_holds(app), listening).run()


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> Iterator[str]:
    """Serve any ASGI app from a background thread; yields its base URL (port 0: a free one)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, _release_holds(app))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:
            failure.append(exc)
        finally:
            server.ready.set()

    thread = threading.Thread(target=run, name=f"asgi-{host}:{port}", daemon=True)
    thread.start()
    try:
        if not server.ready.wait(startup_timeout) or failure or not server.started:
            raise RuntimeError(f"server on {host}:{port} did not start: {failure or 'timed out'}")
        bound_port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(startup_timeout)
        if thread.is_alive():
            logger.warning("server thread on %s:%s did not stop in time", host, port)


@dataclass(frozen=True, slots=True)
class SandboxHandle:
    """A running sandbox: its base URL (the adapter's API_URL) and its configuration."""

    url: str
    config: SandboxConfig
    app: Starlette


@contextlib.contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[SandboxHandle]:
    """A sandbox serving from a background thread on a free port; stopped on exit."""
    config = config or SandboxConfig()
    app = create_app(config)
    with serve_in_thread(app, host, port) as url:
        yield SandboxHandle(url=url, config=config, app=app)
