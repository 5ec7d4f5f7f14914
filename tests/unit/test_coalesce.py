"""Group commit on an event loop: one batch per loop turn, results routed back to each caller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from orders.coalesce import Coalescer


class Batches:
    """A batch function that records every batch it gets and answers ``answer(item)`` per item.

    With ``gate`` set it holds each batch until the test sets the event; ``entered`` is set as
    soon as a batch arrives, so a test can wait for a batch to be running.
    """

    def __init__(
        self,
        answer: Callable[[int], int | Exception] = lambda item: item * 10,
        *,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.answer = answer
        self.gate = gate
        self.received: list[list[int]] = []
        self.entered = asyncio.Event()
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.received.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            return [self.answer(item) for item in items]
        finally:
            self.running -= 1


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """Run a scenario on a fresh event loop; a hang (a caller nobody answers) fails in 5 s."""

    async def guarded() -> None:
        async with asyncio.timeout(5):
            await scenario

    asyncio.run(guarded())


def test_calls_made_in_one_loop_turn_go_out_as_one_batch() -> None:
    async def go() -> None:
        batches = Batches()
        coalescer: Coalescer[int, int] = Coalescer(batches)
        results = await asyncio.gather(*(coalescer(i) for i in range(10)))
        assert results == [i * 10 for i in range(10)]
        assert batches.received == [list(range(10))]
        assert (coalescer.batches, coalescer.items) == (1, 10)

    run(go())


def test_an_idle_coalescer_sends_a_lone_call_at_once() -> None:
    async def go() -> None:
        batches = Batches()
        coalescer: Coalescer[int, int] = Coalescer(batches)
        assert [await coalescer(i) for i in range(3)] == [0, 10, 20]
        assert batches.received == [[0], [1], [2]]
        assert (coalescer.batches, coalescer.items) == (3, 3)

    run(go())


def test_an_item_whose_result_is_an_exception_fails_only_its_caller() -> None:
    failures: dict[int, Exception] = {}

    def answer(item: int) -> int | Exception:
        if item == 3:
            failures[item] = LookupError(f"no row {item}")
            return failures[item]
        return item * 10

    async def go() -> None:
        coalescer: Coalescer[int, int] = Coalescer(Batches(answer))
        results = await asyncio.gather(*(coalescer(i) for i in range(6)), return_exceptions=True)
        assert results[3] is failures[3]
        assert results[:3] + results[4:] == [0, 10, 20, 40, 50]
        assert coalescer.batches == 1

    run(go())


def test_an_exception_raised_by_the_batch_call_fails_every_caller_of_that_batch() -> None:
    down = ConnectionError("database down")
    calls = 0

    async def call(items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise down
        return list(items)

    async def go() -> None:
        coalescer: Coalescer[int, int] = Coalescer(call)
        results = await asyncio.gather(*(coalescer(i) for i in range(5)), return_exceptions=True)
        assert all(result is down for result in results)
        # the failed batch released its slot: the next call goes through
        assert await coalescer(7) == 7
        assert (coalescer.batches, coalescer.items) == (2, 6)

    run(go())


def test_calls_arriving_while_the_only_batch_runs_go_together_in_the_next() -> None:
    async def go() -> None:
        gate = asyncio.Event()
        batches = Batches(gate=gate)
        coalescer: Coalescer[int, int] = Coalescer(batches, parallel=1)
        first = asyncio.create_task(coalescer(0))
        await batches.entered.wait()  # the first batch is at the "database", holding the slot

        arrived = asyncio.Event()
        count = 0

        async def late(item: int) -> int:
            nonlocal count
            count += 1
            if count == 8:
                arrived.set()
            return await coalescer(item)  # queued before this task first suspends

        later = [asyncio.create_task(late(i)) for i in range(1, 9)]
        await arrived.wait()
        assert batches.received == [[0]]
        gate.set()
        assert await first == 0
        assert await asyncio.gather(*later) == [i * 10 for i in range(1, 9)]
        assert batches.received == [[0], list(range(1, 9))]
        assert batches.most_running == 1
        assert (coalescer.batches, coalescer.items) == (2, 9)

    run(go())


def test_max_batch_splits_a_large_burst() -> None:
    async def go() -> None:
        batches = Batches()
        coalescer: Coalescer[int, int] = Coalescer(batches, max_batch=4, parallel=2)
        results = await asyncio.gather(*(coalescer(i) for i in range(10)))
        assert results == [i * 10 for i in range(10)]
        assert batches.received == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert (coalescer.batches, coalescer.items) == (3, 10)

    run(go())


def test_a_batch_answering_the_wrong_number_of_results_fails_every_caller() -> None:
    async def short(items: list[int]) -> list[int | Exception]:
        return list(items[:1])

    async def go() -> None:
        coalescer: Coalescer[int, int] = Coalescer(short)
        results = await asyncio.gather(*(coalescer(i) for i in range(3)), return_exceptions=True)
        assert len(results) == 3
        for result in results:
            assert isinstance(result, RuntimeError)
            assert str(result) == "batch of 3 got 1 results"
        # and a lone call, answered correctly, still goes through
        assert await coalescer(5) == 5

    run(go())


def test_a_caller_cancelled_while_its_batch_runs_does_not_break_the_others() -> None:
    async def go() -> None:
        gate = asyncio.Event()
        batches = Batches(gate=gate)
        coalescer: Coalescer[int, int] = Coalescer(batches)
        tasks = [asyncio.create_task(coalescer(i)) for i in range(3)]
        await batches.entered.wait()
        assert batches.received == [[0, 1, 2]]
        tasks[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        gate.set()
        assert await tasks[0] == 0
        assert await tasks[2] == 20
        assert (coalescer.batches, coalescer.items) == (1, 3)
        assert await coalescer(4) == 40

    run(go())


def test_a_caller_cancelled_before_its_batch_leaves_takes_its_item_back() -> None:
    async def go() -> None:
        gate = asyncio.Event()
        batches = Batches(gate=gate)
        coalescer: Coalescer[int, int] = Coalescer(batches, parallel=1)
        first = asyncio.create_task(coalescer(0))
        await batches.entered.wait()  # batch [0] is at the "database"
        waiting = [asyncio.create_task(coalescer(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)  # let them queue behind the running batch
        waiting[1].cancel()
        gate.set()
        assert await first == 0
        assert [await waiting[0], await waiting[2]] == [10, 30]
        assert batches.received == [[0], [1, 3]]

    run(go())
