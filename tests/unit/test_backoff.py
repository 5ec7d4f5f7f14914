"""orders.backoff: the one capped exponential backoff every wait in paydispatch uses."""

from __future__ import annotations

import asyncio
import random
from types import TracebackType
from typing import Any

import psycopg
import pytest

from adapters.sandbox import webhooks
from adapters.sandbox.faults import WebhookFaults
from dispatcher.api.keys import ApiKeys
from orders.backoff import ceiling, full_jitter, retry_after_wait


def test_ceiling_doubles_from_first_and_stops_at_cap() -> None:
    assert [ceiling(0.5, n, cap=5.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_ceiling_follows_the_factor() -> None:
    assert [ceiling(1.0, n, cap=100.0, factor=3.0) for n in range(4)] == [1.0, 3.0, 9.0, 27.0]


@pytest.mark.parametrize("attempt", [1100, 10**6])
def test_ceiling_is_the_cap_when_the_power_overflows_a_float(attempt: int) -> None:
    assert ceiling(0.2, attempt, cap=5.0) == 5.0
    assert ceiling(0.2, attempt, cap=5.0, factor=2.5) == 5.0


def test_full_jitter_scales_the_ceiling_by_the_draw() -> None:
    assert full_jitter(1.0, 3, cap=100.0, rng=lambda: 0.5) == 4.0
    assert full_jitter(1.0, 3, cap=100.0, rng=lambda: 0.0) == 0.0


def test_full_jitter_spreads_waits_below_the_ceiling() -> None:
    rng = random.Random(7)
    waits = {full_jitter(1.0, 4, cap=10.0, rng=rng.random) for _ in range(200)}
    assert all(0 <= wait < 10.0 for wait in waits)
    assert len(waits) > 150  # callers that failed together do not come back together


def test_full_jitter_draws_from_random_random_at_each_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a test that replaces random.random after this module was imported
    monkeypatch.setattr("random.random", lambda: 0.25)
    # Then the default draw is the replacement
    assert full_jitter(2.0, 2, cap=100.0) == 2.0


def test_retry_after_wait_is_the_jitter_without_a_retry_after() -> None:
    assert retry_after_wait(0.2, 2, cap=5.0, retry_after=None, rng=lambda: 0.5) == 0.4


def test_retry_after_wait_never_comes_back_before_retry_after() -> None:
    assert retry_after_wait(0.2, 0, cap=5.0, retry_after=3.0, rng=lambda: 0.5) == 3.0


def test_retry_after_wait_keeps_a_longer_jitter_over_a_short_retry_after() -> None:
    assert retry_after_wait(1.0, 3, cap=10.0, retry_after=1.0, rng=lambda: 0.5) == 4.0


def test_retry_after_wait_is_at_most_the_cap_whatever_the_server_asks() -> None:
    assert retry_after_wait(0.2, 0, cap=5.0, retry_after=3600.0, rng=lambda: 0.5) == 5.0


# -- the callers' schedules --------------------------------------------------------------------


class _LostConnection:
    """A listener's connection that is lost as soon as it waits for a notice."""

    def __enter__(self) -> _LostConnection:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    def execute(self, *args: Any) -> None:
        return None

    def notifies(self, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("server closed the connection")


def test_the_key_listener_reconnects_after_0_1_s_doubling_to_5_s_and_starts_over_once_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a database refused eight times, then reached and lost, then refused again
    tries = iter([*[None] * 8, _LostConnection(), None, None])

    def connect(*args: Any, **kwargs: Any) -> _LostConnection:
        connection = next(tries)
        if connection is None:
            raise psycopg.OperationalError("connection refused")
        return connection

    monkeypatch.setattr(psycopg, "connect", connect)
    keys = ApiKeys(None)  # type: ignore[arg-type]  # the listener never uses the pool
    waits: list[float] = []

    def wait(timeout: float) -> bool:
        waits.append(timeout)
        if len(waits) == 11:
            keys._stop.set()
        return keys._stop.is_set()

    monkeypatch.setattr(keys._stop, "wait", wait)
    # When the listener runs
    keys._listen("postgresql://nowhere")
    # Then it waits 0.1 s doubling up to 5 s, and from 0.1 s again after it was connected
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 0.1, 0.2, 0.4])


def test_the_sandbox_retries_a_webhook_on_its_documented_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the sandbox's defaults (docs/sandbox.md: 4 attempts, from 0.5 s apart, doubling)
    sender = webhooks.WebhookSender(
        "whsec_test", WebhookFaults, attempts=4, timeout=1.0, backoff=0.5, reorder_window=0.0,
        concurrency=1,
    )  # fmt: skip
    sleeps: list[float] = []

    async def refused(webhook: webhooks.Webhook) -> str:
        return "HTTP 503"

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr(sender, "_attempt", refused)
    monkeypatch.setattr(webhooks.asyncio, "sleep", sleep)
    # When every attempt fails
    asyncio.run(sender._deliver(webhooks.Webhook("http://127.0.0.1:9/", b"{}", "evt_1")))
    # Then the retries come 0.5, 1 and 2 s apart, and the webhook is counted failed once
    assert sleeps == [0.5, 1.0, 2.0]
    assert (sender.failures["HTTP 503"], sender.counts["failed"]) == (4, 1)
