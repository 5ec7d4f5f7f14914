"""What billing's synchronous faces share: an async pool of their own on the background loop.

Billing's classes are async, over the one async pool of :mod:`orders.db`. Code that is
synchronous by nature (the ``paydispatch`` commands, the sweeper, benchmarks, tests) calls them
through a face such as :class:`~dispatcher.billing.wallet.SyncWallets`: each of its methods is
one call of the async method on the process's background event loop
(:mod:`orders.db.blocking`), so no statement is written twice and no thread pool sits between
the two. A face opens its pool there on first use, like the order repository's face
(:class:`orders.repository.OrderRepository`), and ``close()`` (or ``with``) closes it; one left
unclosed is closed when it is collected.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from orders.db import AsyncPool, Pool, blocking, open_async_pool

T = TypeVar("T")

_closing: set[asyncio.Task[None]] = set()  # pool closes scheduled from the loop's own thread


class _Opened:
    """The pool a face opened and the loop it lives on: apart from the face, so that the face's
    finalizer can close it."""

    def __init__(self) -> None:
        self.pool: AsyncPool | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        """Close the pool, if open; safe from any thread, at garbage collection and at exit."""
        pool, loop = self.pool, self.loop
        self.pool = None
        if pool is None or loop is None or loop.is_closed() or not loop.is_running():
            return
        if blocking.in_loop_thread():  # collected on the loop's own thread: it cannot wait
            task = loop.create_task(pool.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
            return
        if blocking.loop() is not loop:  # a forked child: the pool is the parent's
            return
        asyncio.run_coroutine_threadsafe(pool.close(), loop).result(timeout=30)


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
        self._opened = _Opened()
        self._lock = threading.Lock()  # callers may be many threads: open the pool once
        weakref.finalize(self, self._opened.close)

    @property
    def pool(self) -> AsyncPool:
        """The face's async pool; it belongs to the background loop, so only use it there."""
        with self._lock:
            opened, loop = self._opened, blocking.loop()
            if opened.pool is None or opened.loop is not loop:  # first use, or a forked child
                opening = open_async_pool(self.conninfo, max_size=self.max_size, name=self.name)
                opened.pool, opened.loop = blocking.call(opening), loop
            return opened.pool

    def run(self, call: Callable[[AsyncPool], Coroutine[Any, Any, T]]) -> T:
        """``call(pool)`` run on the background loop; its result, or its exception."""
        return blocking.call(call(self.pool))

    def close(self) -> None:
        with self._lock:
            self._opened.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
