"""What the API's routes share: the repository, the adapters, the keys, the billing hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from fastapi import Request

from dispatcher.api.batched import BatchedOrders
from dispatcher.api.keys import ApiKeys
from dispatcher.runtime import AdapterRuntime
from orders.db import Pool
from orders.model import PaidHook
from orders.repository import OrderRepository, Orders


@dataclass
class ApiContext:
    """Everything a request needs; built once per process (see ``server.context_from``)."""

    repo: OrderRepository
    runtimes: Mapping[str, AdapterRuntime]
    public_url: str = "http://127.0.0.1:8000"
    broker_url: str | None = None
    paid_hook: PaidHook | None = None
    body_limit: int = 64 * 1024
    docs: bool = True  # serve the browsable /docs (settings.api_docs)
    console: bool = True  # serve the operators' console under /console/ (settings.console)
    # A webhook event replayed from the console gets this many seconds of retries again.
    webhook_max_age: float = 3 * 24 * 3600.0
    # Buyers' status pages pull an order's next poll forward at most this often (seconds).
    view_debounce: float = 2.0
    keys: ApiKeys = field(init=False)
    batched: BatchedOrders = field(init=False)
    orders: Orders = field(init=False)  # the async repository, opened in the app's lifespan
    on_close: list[Callable[[], None]] = field(default_factory=list)
    # When each order's status page last pulled its poll forward (monotonic seconds).
    views: dict[UUID, float] = field(default_factory=dict)
    # Creates answered by the fast lane rather than the FastAPI route (dispatcher.api.lane).
    lane_creates: int = 0

    def __post_init__(self) -> None:
        self.public_url = self.public_url.rstrip("/")
        self.keys = ApiKeys(self.pool)
        conninfo = self.pool.conninfo
        self.batched = BatchedOrders(self.repo, conninfo() if callable(conninfo) else conninfo)

    @property
    def pool(self) -> Pool:
        return self.repo.pool

    def status_page(self, order_id: object) -> str:
        return f"{self.public_url}/pay/{order_id}"

    def close(self) -> None:
        for fn in self.on_close:
            fn()


async def get_context(request: Request) -> ApiContext:
    # async: FastAPI runs a plain function dependency on a worker thread
    ctx: ApiContext = request.app.state.ctx
    return ctx
