"""What billing's synchronous faces share: an async pool of their own on the background loop.

Billing's classes are async, over the one async pool of :mod:`orders.db`. Code that is
synchronous by nature (the ``paydispatch`` commands, the sweeper, benchmarks, tests) calls them
through a face such as :class:`~dispatcher.billing.wallet.SyncWallets`: each of its methods is
one call of the async method on the process's background event loop
(:mod:`orders.db.blocking`), so no statement is written twice and no thread pool sits between
the two. A face opens its pool there on first use, like the order repository's face
(:class:`orders.repository.OrderRepository`), and ``close()`` (or ``with``) closes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from orders.db import AsyncPool, Pool, blocking, open_async_pool

T = TypeVar("T")


class Face:
    """A conninfo (or a sync :data:`~orders.db.Pool`, whose conninfo is used) and the async
    pool opened from it on the background loop on first use."""

    def __init__(
        self, pool_or_url: Pool | str, *, max_size: int = 4, name: str = "billing"
    ) -> None:
        conninfo = pool_or_url if isinstance(pool_or_url, str) else pool_or_url.conninfo
        self.conninfo: str = conninfo() if callable(conninfo) else conninfo
        self.max_size = max_size
        self.name = name
        self._pool: AsyncPool | None = None
        self._lock = threading.Lock()  # callers may be many threads: open the pool once

    @property
    def pool(self) -> AsyncPool:
        """The face's async pool; it belongs to the background loop, so only use it there."""
        with self._lock:
            if self._pool is None:
                self._pool = blocking.call(
                    open_async_pool(self.conninfo, max_size=self.max_size, name=self.name)
                )
            return self._pool

    def run(self, call: Callable[[AsyncPool], Coroutine[Any, Any, T]]) -> T:
        """``call(pool)`` run on the background loop; its result, or its exception."""
        return blocking.call(call(self.pool))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            blocking.call(pool.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
