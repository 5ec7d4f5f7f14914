"""The composition root: what a process builds from its :class:`~dispatcher.config.Settings`.

The worker, the sweeper, the API, the supervisor and the CLI's commands build their objects here:
the services, the adapters (checked, their secrets registered with the log
redactor), the pools, the order repository, the paid hook, the webhook outbox and delivery, the
broker and the step sender, the metrics server. Each piece is built on demand, the first time a
process asks for it, and the modules behind it are imported then too: so building the sweeper's
pieces loads nothing of the worker or the API (issue #13, item 2), and a CLI command that only
reads orders loads no broker. :meth:`Root.close` closes what was opened, last opened first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

import structlog

from adapters.base import Secret
from dispatcher import logs, services
from dispatcher.config import ConfigError, Settings
from dispatcher.runtime import AdapterRuntime, build_adapters, expiries
from orders.db import AsyncPool, Pool, open_async_pool, open_pool, use_prepared_statements
from orders.repository import OrderRepository

if TYPE_CHECKING:
    import dramatiq

    from dispatcher.billing.refunds import RefundHold
    from dispatcher.billing.webhook import Delivery, SyncOutbox
    from dispatcher.steps import Steps
    from orders.model import PaidHook, TransferHook

log = structlog.get_logger(__name__)


class Root:
    """One process's pieces, each built from ``settings`` on first use.

    ``name`` labels the process's pools (``application_name`` in ``pg_stat_activity``). Use it
    as a context manager, or call :meth:`close` once the process is done with its pieces.
    """

    def __init__(self, settings: Settings, *, name: str = "paydispatch") -> None:
        self.settings = settings
        self.name = name
        self._closers: list[Callable[[], None]] = []
        self._pool: Pool | None = None
        self._repository: OrderRepository | None = None
        self._broker: dramatiq.Broker | None = None
        self._runtimes: dict[str, AdapterRuntime] | None = None
        self._checked = False

    # -- configuration ---------------------------------------------------------------------

    @cached_property
    def services(self) -> services.Services:
        """The database and the broker: the configured ones, or embedded ones started now.

        Their passwords are registered with the log redactor, so no line ever prints them. The
        pools this process opens from now on prepare statements as ``database_prepare`` says."""
        found = services.ensure(self.settings)
        for url in (found.database_url, found.broker_url, self.settings.listen_database_url):
            if url:
                logs.REDACTOR.add_url_password(url)
        use_prepared_statements(self.settings.database_prepare)
        return found

    @property
    def listen_url(self) -> str:
        """Where the sessions that ``LISTEN`` connect: PostgreSQL itself, even when the pools go
        through a pooler in transaction mode (``PAYDISPATCH_LISTEN_DATABASE_URL``)."""
        return self.settings.listen_database_url or self.services.database_url

    @property
    def runtimes(self) -> dict[str, AdapterRuntime]:
        """Every enabled adapter, configured and checked (a bad setting stops the process here,
        naming it; see :func:`check_adapters`); each secret registered with the log redactor."""
        return self.adapters(check=True)

    def adapters(self, *, check: bool) -> dict[str, AdapterRuntime]:
        """Every enabled adapter, configured, its secrets registered with the log redactor.

        ``check=False`` only for a command that serves nothing and signs nothing (``reconcile``
        reads the payment systems' books): it may run on a published default credential."""
        if self._runtimes is None:
            self._runtimes = build_adapters(self.settings)
            register_secrets(self._runtimes)
        if check and not self._checked:
            check_adapters(self.settings, self._runtimes)
            for rt in self._runtimes.values():
                log.info("adapter configured", adapter=rt.name, settings=repr(rt.settings))
            self._checked = True
        return self._runtimes

    # -- the database ----------------------------------------------------------------------

    def pool(self, size: int = 4) -> Pool:
        """The process's synchronous pool (opened by the first call, with ``size`` connections)."""
        if self._pool is None:
            self._pool = open_pool(self.services.database_url, max_size=size, name=self.name)
            self._closers.append(self._pool.close)
        return self._pool

    async def async_pool(self, size: int, *, name: str | None = None) -> AsyncPool:
        """A new async pool on the running loop (an async pool belongs to the loop it was opened
        on): the caller closes it there."""
        url = self.services.database_url
        return await open_async_pool(url, max_size=size, name=name or self.name)

    def repository(self, *, pool_size: int = 4, adapters: bool = True) -> OrderRepository:
        """The order repository's synchronous face over :meth:`pool`, its async pool as large.

        ``adapters=False`` for a process that creates no order (the operators' commands): no
        adapter is loaded or checked, and the repository knows no order lifetimes."""
        if self._repository is None:
            lifetimes = expiries(self.runtimes) if adapters else {}
            pool = self.pool(pool_size)
            self._repository = OrderRepository(pool, lifetimes, max_size=pool_size)
            self._closers.append(self._repository.close)
        return self._repository

    # -- billing -------------------------------------------------------------------------

    def paid_hook(self) -> PaidHook | None:
        """The billing hook run inside every paid transaction, from the configuration."""
        from dispatcher.billing import hooks  # the hooks load billing's modules: on demand

        return hooks.build(self.settings.billing)

    def transfer_hook(self) -> TransferHook:
        """The hook run where a refund or payout reaches a final state, and where a refund the
        payment system reported is recorded (issue #14): billing's refund hooks, then the
        withdrawals' payout hook; each ignores the kinds it does not handle."""
        from dispatcher.billing import hooks
        from dispatcher.billing.withdrawals import payout_hook

        refund = hooks.build_transfer_hook(self.settings.billing)
        return payout_hook if refund is None else hooks.TransferChain([refund, payout_hook])

    def refund_hold(self) -> RefundHold | None:
        """Billing's check of a new refund, run in the transaction that requests it (the API's
        and the CLI's, ``dispatcher.refunds``): with the ``refuse`` overdraft policy it holds the
        refund's amount in the wallet or refuses the refund; None under ``allow``."""
        from dispatcher.billing import hooks

        return hooks.build_refund_hold(self.settings.billing)

    def outbox(self) -> SyncOutbox | None:
        """The sweeper's view of the webhook outbox, when the webhook hook is configured."""
        if "webhook" not in self.settings.billing.hooks:
            return None
        from dispatcher.billing.webhook import SyncOutbox  # loads httpx: on demand

        max_age = timedelta(seconds=self.settings.billing.webhook_max_age)
        outbox = SyncOutbox(self.pool(), max_age=max_age, name=f"{self.name}-outbox")
        self._closers.append(outbox.close)
        return outbox

    def delivery(self, loop: asyncio.AbstractEventLoop) -> Delivery | None:
        """The worker's webhook sender (to each site's own webhook), when the hook is configured,
        over an async pool opened on ``loop``, where the deliveries run (the engine host's, which
        must be running): close it there, ``delivery.aclose()`` then ``delivery.pool.close()``."""
        billing = self.settings.billing
        if "webhook" not in billing.hooks:
            return None
        from dispatcher.billing.webhook import Delivery  # loads httpx: on demand

        opening = self.async_pool(4, name=f"{self.name}-billing")
        pool = asyncio.run_coroutine_threadsafe(opening, loop).result()
        return Delivery(pool, timeout=billing.webhook_timeout)

    # -- the broker ------------------------------------------------------------------------

    def broker(self) -> dramatiq.Broker:
        """The process's broker (dramatiq is loaded by the first call: the API never makes one)."""
        if self._broker is None:
            from dispatcher.steps import make_broker

            broker = make_broker(self.services.broker_url, namespace=self.settings.broker_namespace)
            self._closers.append(broker.close)
            self._broker = broker
        return self._broker

    def steps(self, adapters: Sequence[str]) -> Steps:
        """The sending half of the step vocabulary, on :meth:`broker`: no actor is declared."""
        from dispatcher.steps import Steps

        return Steps(self.broker(), adapters)

    # -- the rest ----------------------------------------------------------------------------

    def metrics(self, port: int | None, addr: str = "127.0.0.1") -> str:
        """Serve this process's metrics on its own port (one port per process; see README).

        Returns where, for the process's start line: the URL, or ``off`` without a port.
        """
        if port is None:
            return "off"
        import prometheus_client

        server, _thread = prometheus_client.start_http_server(port, addr=addr)
        self._closers.append(server.shutdown)
        return f"http://{addr}:{server.server_port}/metrics"  # the bound port, also for port 0

    def close(self) -> None:
        """Close every piece opened here, the last opened first."""
        while self._closers:
            self._closers.pop()()
        self._pool = self._repository = self._broker = None

    def __enter__(self) -> Root:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_adapters(settings: Settings, runtimes: Mapping[str, AdapterRuntime]) -> None:
    """Refuse to start without a payment system, or with a credential anyone can read.

    A secret setting with a default (the sandbox's API key and webhook secret) is published in
    the source: with it, anyone can sign the adapter's callbacks and credit a wallet without
    paying (issue #12, item 2). Only a development setup (``PAYDISPATCH_DEV=1``: the demo, the
    tests) may run with one.
    """
    if not runtimes:
        raise ConfigError(
            "PAYDISPATCH_ADAPTERS: no payment system is enabled: list them in "
            "PAYDISPATCH_ADAPTERS (or adapters.enabled); the sandbox is the default only with "
            "PAYDISPATCH_DEV=1"
        )
    for rt in runtimes.values():
        for spec in rt.adapter.settings_spec:
            if not spec.secret or spec.default is None or rt.settings.get(spec.key) != spec.default:
                continue
            if not settings.dev:
                var = f"PAYDISPATCH_{rt.name.upper()}_{spec.key}"
                raise ConfigError(
                    f"{var}: still the default published in paydispatch's source, so anyone "
                    f"can use it; set your own (or {var}_FILE), or PAYDISPATCH_DEV=1 for a "
                    "development setup"
                )
    if "sandbox" in runtimes and not settings.dev:
        log.warning(
            "the sandbox payment system is enabled outside a development setup: "
            "its payments are not real money"
        )


def register_secrets(runtimes: Mapping[str, AdapterRuntime]) -> None:
    """Tell the log redactor every adapter secret this process holds, so none is ever printed."""
    for rt in runtimes.values():
        logs.register_secrets(
            v.reveal() for v in rt.settings.values.values() if isinstance(v, Secret)
        )
