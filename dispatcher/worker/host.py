"""Runs the engine's event loop in a thread and admits steps to it from dramatiq's threads.

An actor hands its step to the loop and returns at once, so a handful of worker threads keep
hundreds of slow polls in flight. Admission blocks when ``max_in_flight`` steps are running:
that is the back-pressure on the queue. The message is acknowledged before the step ends; a
crash loses nothing, because the order's lease brings it back to the sweeper.

The engine's async repository lives on this loop (an :class:`Orders` belongs to the loop its
pool was opened on): :meth:`EngineHost.open` opens the pool there before the loop's thread
starts, and :meth:`EngineHost.stop` closes it after the engine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import structlog

from dispatcher import metrics
from dispatcher.steps import Action
from dispatcher.worker.engine import Engine
from orders.db import AsyncPool, open_async_pool
from orders.db.blocking import new_event_loop
from orders.repository import Orders

log = structlog.get_logger(__name__)


class EngineHost:
    def __init__(
        self,
        engine: Engine,
        max_in_flight: int = 500,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        pool: AsyncPool | None = None,
    ) -> None:
        """``loop``: the loop ``engine``'s repository was opened on (a new one if None);
        ``pool``: that repository's pool, closed by :meth:`stop` after the engine."""
        self.engine = engine
        self.loop = loop or new_event_loop()
        self.pool = pool
        self.slots = threading.BoundedSemaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self._thread = threading.Thread(target=self._run, name="paydispatch-engine", daemon=True)
        self._idle = threading.Condition()
        self._in_flight = 0
        self._accepting = True
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def open(
        cls,
        database_url: str,
        adapters: Mapping[str, timedelta],
        build: Callable[[Orders], Engine],
        *,
        pool_size: int = 8,
        max_in_flight: int = 500,
        name: str = "engine",
    ) -> EngineHost:
        """A host whose engine is ``build(orders)``, over a pool of ``pool_size`` connections
        opened on the host's loop (before its thread runs it; call :meth:`start` next)."""
        loop = new_event_loop()
        pool = loop.run_until_complete(open_async_pool(database_url, max_size=pool_size, name=name))
        return cls(build(Orders(pool, adapters)), max_in_flight, loop=loop, pool=pool)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self, order_id: UUID, token: UUID, action: Action) -> None:
        """Start a step on the loop; blocks while the engine is full."""
        self.admit_many([(order_id, token)], action)

    def admit_many(self, steps: Sequence[tuple[UUID, UUID]], action: Action) -> None:
        """Start a batch of steps with one hand-off to the loop; blocks while it is full.

        Steps started together read their orders with one query (the engine coalesces them).
        """
        if not self._accepting:
            raise RuntimeError("engine is shutting down")
        self._take(len(steps))
        self.loop.call_soon_threadsafe(self._start_steps, list(steps), action)

    def _start_steps(self, steps: list[tuple[UUID, UUID]], action: Action) -> None:
        for order_id, token in steps:
            task = self.loop.create_task(self._step(order_id, token, action))
            self._tasks.add(task)  # the loop keeps only weak references to its tasks
            task.add_done_callback(self._tasks.discard)

    async def _step(self, order_id: UUID, token: UUID, action: Action) -> None:
        try:
            await self.engine.run(order_id, token, action)
        finally:
            self._give_back()

    def admit_coroutine(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run any coroutine on the loop under the same in-flight limit (billing deliveries)."""
        if not self._accepting:
            coro.close()
            raise RuntimeError("engine is shutting down")
        self._take(1)
        asyncio.run_coroutine_threadsafe(self._guarded(coro), self.loop)

    async def _guarded(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except Exception:
            log.exception("coroutine admitted to the engine loop crashed")
        finally:
            self._give_back()

    def _take(self, n: int) -> None:
        """Hold ``n`` in-flight slots (blocking while the engine is full)."""
        for _ in range(n):
            self.slots.acquire()
        with self._idle:
            self._in_flight += n
            metrics.IN_FLIGHT.set(self._in_flight)

    def _give_back(self) -> None:
        self.slots.release()
        with self._idle:
            self._in_flight -= 1
            metrics.IN_FLIGHT.set(self._in_flight)
            self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Stop admitting and wait for running steps; True when all finished in time."""
        self._accepting = False
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
        try:
            future.result(timeout=10)
        except TimeoutError:
            log.warning("engine did not close in time")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()

    async def _close(self) -> None:
        await self.engine.aclose()
        if self.pool is not None:
            await self.pool.close()
