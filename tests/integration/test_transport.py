"""The PSP transport against the real sandbox: what is retried, what is returned, what is raised."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.base import PspRequest, PspResponse
from adapters.sandbox.runner import SandboxHandle
from adapters.testing import sample_order
from dispatcher.worker.breaker import CircuitOpen
from dispatcher.worker.transport import PspUnavailable, Transport
from orders import Money, Order
from tests.dispatch_support import FAST, SandboxControl, sandbox_runtime


def an_order() -> Order:
    # A fresh id each time (the sandbox keeps invoices by key) and a deadline in the future.
    return replace(
        sample_order(),
        id=uuid.uuid4(),
        money=Money(1000, "USD"),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )


def send_create(url: str, order: Order, **policy: Any) -> PspResponse:
    runtime = sandbox_runtime(url, replace(FAST, **policy))

    async def go() -> PspResponse:
        transport = Transport(runtime.adapter, runtime.settings, runtime.policy)
        try:
            request = runtime.adapter.build_create(order, runtime.settings)
            assert isinstance(request, PspRequest)
            return await transport.send(request)
        finally:
            await transport.aclose()

    return asyncio.run(go())


def test_5xx_and_429_are_retried_with_the_same_request(
    sandbox: SandboxHandle, control: SandboxControl
) -> None:
    control.faults("create", queue=["http_500", "http_429"])
    response = send_create(sandbox.url, an_order(), retries=2)
    assert response.status_code == 201
    stats = control.stats()
    assert stats["create_calls"] == 3
    assert stats["invoices"] == 1


def test_exhausted_retries_raise_a_transient_error_that_says_it_may_have_been_sent(
    sandbox: SandboxHandle, control: SandboxControl
) -> None:
    control.faults("create", queue=["http_500", "http_500"])
    with pytest.raises(PspUnavailable) as info:
        send_create(sandbox.url, an_order(), retries=1)
    assert info.value.maybe_sent


def test_timeout_is_transient_and_maybe_sent(
    sandbox: SandboxHandle, control: SandboxControl
) -> None:
    control.faults("create", queue=["accept_then_timeout"])
    with pytest.raises(PspUnavailable, match="timed out") as info:
        send_create(sandbox.url, an_order(), retries=0, timeout=0.5)
    assert info.value.maybe_sent


def test_connection_refused_is_known_not_sent() -> None:
    with pytest.raises(PspUnavailable) as info:
        send_create("http://127.0.0.1:9", an_order(), retries=0)
    assert not info.value.maybe_sent


def test_open_circuit_refuses_without_calling(
    sandbox: SandboxHandle, control: SandboxControl
) -> None:
    runtime = sandbox_runtime("http://127.0.0.1:9", replace(FAST, retries=0, breaker_failures=2))

    async def go() -> None:
        transport = Transport(runtime.adapter, runtime.settings, runtime.policy)
        request = runtime.adapter.build_status(
            replace(an_order(), psp_id="inv_1"), runtime.settings
        )
        try:
            for _ in range(2):
                with pytest.raises(PspUnavailable):
                    await transport.send(request)
            with pytest.raises(CircuitOpen):
                await transport.send(request)
        finally:
            await transport.aclose()

    asyncio.run(go())
