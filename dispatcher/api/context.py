"""What the API's routes share: the repository, the adapters, the keys, the billing hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from fastapi import Request

from dispatcher.api.keys import ApiKeys
from dispatcher.billing.withdrawals import Withdrawals
from dispatcher.config import WithdrawalSettings
from dispatcher.refunds import RefundCheck
from dispatcher.runtime import AdapterRuntime
from orders.db import Pool, open_async_pool
from orders.model import PaidHook, TransferHook
from orders.repository import OrderRepository, Orders
from orders.transfers import Transfers


@dataclass
class ApiContext:
    """Everything a request needs; built once per process (see ``server.context_from``)."""

    # The synchronous face: for the operators' pages (FastAPI's thread pool) and tests. The
    # routes sites and buyers call use ``orders``.
    repo: OrderRepository
    runtimes: Mapping[str, AdapterRuntime]
    public_url: str = "http://127.0.0.1:8000"
    broker_url: str | None = None
    paid_hook: PaidHook | None = None
    # Runs where a transfer the API writes reaches a final state (a refund the payment system
    # reports on its own, in the callbacks): billing's reversal, withdrawals' settling.
    transfer_hook: TransferHook | None = None
    refund_hold: RefundCheck | None = None  # billing's check of a new refund (refuse policy)
    body_limit: int = 64 * 1024
    docs: bool = True  # serve the browsable /docs (settings.api_docs)
    console: bool = True  # serve the operators' console under /console/ (settings.console)
    # A webhook event replayed from the console gets this many seconds of retries again.
    webhook_max_age: float = 3 * 24 * 3600.0
    # Buyers' status pages pull an order's next poll forward at most this often (seconds), and
    # not within this long of the dispatcher's last look: under the page's 1.5 s, so a page
    # that looks again 0.5 s after its pull and 1.5 s later pulls again (a poll every 2 s).
    view_debounce: float = 1.0
    pool_size: int = 10  # connections of the async pool ``orders`` runs on
    # Where the key revocation listener connects (not through a pooler); None: the repository's.
    listen_url: str | None = None
    keys: ApiKeys = field(init=False)
    orders: Orders = field(init=False)  # the async repository, opened in the app's lifespan
    transfers: Transfers = field(init=False)  # refunds, on the same pool
    withdrawal_settings: WithdrawalSettings = field(default_factory=WithdrawalSettings)
    withdrawals: Withdrawals = field(init=False)  # issue #14, on the same pool
    on_close: list[Callable[[], None]] = field(default_factory=list)
    # When each order's status page last pulled its poll forward (monotonic seconds).
    views: dict[UUID, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.public_url = self.public_url.rstrip("/")
        self.keys = ApiKeys(self.pool)

    @property
    def pool(self) -> Pool:
        return self.repo.pool

    def status_page(self, order_id: object) -> str:
        return f"{self.public_url}/pay/{order_id}"

    async def open(self) -> None:
        """Open :attr:`orders` on the running loop (the server's, in the app's lifespan): an
        ``Orders`` belongs to the loop its pool was opened on."""
        pool = await open_async_pool(self.repo.conninfo, max_size=self.pool_size, name="api")
        self.orders = Orders(pool, self.repo.adapters)
        capabilities = {name: rt.adapter.capabilities for name, rt in self.runtimes.items()}
        self.transfers = Transfers(pool, capabilities=capabilities, hook=self.transfer_hook)
        self.withdrawals = Withdrawals(pool, self.withdrawal_settings, capabilities=capabilities)

    async def aclose(self) -> None:
        """Close what :meth:`open` opened (the app's shutdown)."""
        if hasattr(self, "orders"):
            await self.orders.pool.close()
            del self.orders
        if hasattr(self, "transfers"):
            del self.transfers

    def close(self) -> None:
        for fn in self.on_close:
            fn()


async def get_context(request: Request) -> ApiContext:
    # async: FastAPI runs a plain function dependency on a worker thread
    ctx: ApiContext = request.app.state.ctx
    return ctx
