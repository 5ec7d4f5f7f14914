"""Integration tests run against a real PostgreSQL (and Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from adapters.sandbox.config import SandboxConfig
from adapters.sandbox.runner import SandboxHandle, running_sandbox
from orders.db import Pool, open_pool
from orders.repository import OrderRepository
from tests.dispatch_support import SandboxControl

ADAPTERS = {"sandbox": timedelta(hours=1), "yookassa": timedelta(hours=1)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def pool(database_url: str) -> Iterator[Pool]:
    pool = open_pool(database_url, max_size=12, name="tests")
    yield pool
    pool.close()


@pytest.fixture
def repo(pool: Pool) -> Iterator[OrderRepository]:
    with OrderRepository(pool, ADAPTERS) as repo:
        yield repo


@pytest.fixture
def site() -> str:
    """A site name of this test's own, so tests sharing a database never see each other."""
    return f"site-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    """The sandbox payment system, served over HTTP for one test module."""
    with running_sandbox(SandboxConfig(hang_seconds=3.0)) as handle:
        yield handle


@pytest.fixture
def control(sandbox: SandboxHandle) -> Iterator[SandboxControl]:
    """The sandbox's control API, reset to no faults before each test."""
    ctl = SandboxControl(sandbox.url)
    ctl.reset()
    yield ctl
    ctl.close()
