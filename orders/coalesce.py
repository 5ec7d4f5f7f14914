"""Group commit on an event loop: many steps' database calls go out as one statement.

A step awaits ``coalescer(item)``. The first call of a loop turn schedules a flush for the end
of that turn, so every step that reaches the same point in the same turn joins the batch; calls
made while ``parallel`` batches are already at the database wait for one of them to come back
and then go together. Nothing waits on a timer: an idle engine flushes a lone call at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")

# Runs one batch; returns one result per item, in order: a value, or the exception that item
# raises. An exception raised by the call itself fails every item of the batch.
BatchCall = Callable[[list[K]], Awaitable[Sequence[R | Exception]]]


class Coalescer(Generic[K, R]):
    def __init__(self, call: BatchCall[K, R], *, max_batch: int = 500, parallel: int = 2) -> None:
        self.call = call
        self.max_batch = max_batch
        self.parallel = parallel
        self._pending: list[tuple[K, asyncio.Future[R]]] = []
        self._running = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # how many batches went out, and with how many items: for tests
        self.items = 0

    async def __call__(self, item: K) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._running < self.parallel:
            self._scheduled = True
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        # A caller cancelled before its batch left takes its item back (a step that was
        # stopped must not write afterwards).
        self._pending = [(item, future) for item, future in self._pending if not future.done()]
        while self._pending and self._running < self.parallel:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._running += 1
            task = loop.create_task(self._flush(batch, loop))
            self._tasks.add(task)  # the loop keeps only weak references to its tasks
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # _flush answers every caller itself; anything escaping it is a bug: make it loud.
            task.get_loop().call_exception_handler(
                {"message": "coalescer batch crashed", "exception": task.exception(), "task": task}
            )

    async def _flush(
        self, batch: list[tuple[K, asyncio.Future[R]]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self.call([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(results)} results")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(batch)
        finally:
            self._running -= 1
            if self._pending:
                self._schedule(loop)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its step was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
