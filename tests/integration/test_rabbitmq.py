"""RabbitMQ is accepted as the broker (``amqp://``): an order goes through on it."""

from __future__ import annotations

import os
import socket

import pytest

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.runner import SandboxHandle
from orders import Money, NewOrder, OrderStatus
from tests.dispatch_support import running_daemon, wait_until

AMQP_URL = os.environ.get("PAYDISPATCH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(
    not _reachable(),
    reason="no RabbitMQ on 127.0.0.1:5672 (start one, or set PAYDISPATCH_TEST_AMQP_URL)",
)
def test_an_order_is_paid_through_a_rabbitmq_broker(
    own_database_url: str, sandbox: SandboxHandle
) -> None:
    with running_daemon(own_database_url, AMQP_URL, sandbox.url) as daemon:
        new = NewOrder(
            site="shop",
            user_id="u1",
            money=Money(990, "EUR"),
            adapter="sandbox",
            metadata={SCENARIO_METADATA_KEY: "pay_after:1"},
        )
        order_id = daemon.repo.create(new).order.id
        wait_until(lambda: daemon.repo.get(order_id).status is OrderStatus.PAID, what="paid")
