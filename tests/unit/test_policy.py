"""Poll schedule: first poll soon, capped exponential backoff with full jitter, never late."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.base import PollPolicy
from adapters.sandbox import adapter as sandbox
from dispatcher.config import ConfigError
from dispatcher.policy import MIN_DELAY, load_policy, next_poll

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAR = NOW + timedelta(days=1)
POLICY = PollPolicy(first=timedelta(seconds=5), factor=2.0, cap=timedelta(minutes=5))


def test_first_poll_comes_after_the_first_delay() -> None:
    assert next_poll(POLICY, 0, NOW, FAR) == NOW + timedelta(seconds=5)


@given(st.integers(min_value=1, max_value=60), st.integers(min_value=0, max_value=2**32))
def test_later_polls_stay_within_the_capped_exponential_ceiling(polls: int, seed: int) -> None:
    at = next_poll(POLICY, polls, NOW, FAR, random.Random(seed))
    ceiling = min(300.0, 5.0 * 2.0**polls)
    assert NOW + MIN_DELAY <= at <= NOW + timedelta(seconds=ceiling)


@given(st.integers(min_value=0, max_value=60), st.floats(min_value=0, max_value=400))
def test_no_poll_is_scheduled_past_the_deadline(polls: int, seconds_left: float) -> None:
    deadline = NOW + timedelta(seconds=seconds_left)
    assert next_poll(POLICY, polls, NOW, deadline, random.Random(1)) <= deadline


def test_jitter_spreads_orders_created_together() -> None:
    rng = random.Random(7)
    times = {next_poll(POLICY, 4, NOW, FAR, rng) for _ in range(100)}
    assert len(times) > 90


def test_policy_defaults_come_from_the_adapter_and_the_environment_overrides() -> None:
    policy = load_policy(sandbox, {}, {"PAYDISPATCH_SANDBOX_POLL_CAP": "2.5"})
    assert policy.poll.first == sandbox.capabilities.poll.first
    assert policy.poll.cap == timedelta(seconds=2.5)
    assert load_policy(sandbox, {"timeout": "3"}, {}).timeout == 3.0


@pytest.mark.parametrize("value", ["soon", "-1", "0"])
def test_bad_policy_values_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="PAYDISPATCH_SANDBOX_TIMEOUT"):
        load_policy(sandbox, {}, {"PAYDISPATCH_SANDBOX_TIMEOUT": value})
