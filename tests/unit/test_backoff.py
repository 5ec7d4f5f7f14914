"""orders.backoff: the one capped exponential backoff every wait in paydispatch uses."""

from __future__ import annotations

import random

import pytest

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
