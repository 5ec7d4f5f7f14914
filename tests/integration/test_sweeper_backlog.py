"""The sweeper's back-pressure: no claim for an adapter whose queue is full (issue #15, item 2).

Past the point where the workers keep up, claimed steps only wait in the broker; once they wait
longer than the lease they arrive stale and the order is claimed again. Due orders must wait in
the table instead, and be claimed, oldest first, as the queue drains.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from dispatcher.services import Services
from dispatcher.steps import Action, Steps, make_broker
from dispatcher.sweeper.backlog import broker_backlog
from dispatcher.sweeper.loop import Sweeper
from orders import Money, NewOrder
from orders.db import open_pool
from orders.repository import OrderRepository
from tests.conftest import drop_database, make_database
from tests.integration.conftest import ADAPTERS
from tests.namespaces import flush_namespace, own_namespace


@pytest.fixture
def repo(found_services: Services, template_database: str) -> Iterator[OrderRepository]:
    url = make_database(found_services, template_database)
    pool = open_pool(url, max_size=4, name="backlog")
    try:
        with OrderRepository(pool, ADAPTERS) as repo:
            yield repo
    finally:
        pool.close()
        drop_database(found_services, url)


class Recorder:
    """The sending half, recording each message's steps instead of enqueuing them."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Action, list[UUID]]] = []

    def send_many(self, adapter: str, action: Action, steps: Sequence[tuple[UUID, UUID]]) -> None:
        self.messages.append((adapter, action, [order_id for order_id, _ in steps]))


def test_orders_wait_in_the_table_while_their_queue_is_full(repo: OrderRepository) -> None:
    # Given 30 due orders and a queue that already holds max_queued (3) messages,
    made = [
        repo.create(NewOrder(site="s", user_id=f"u{i}", money=Money(100, "EUR"), adapter="sandbox"))
        for i in range(30)
    ]
    ids = {created.order.id for created in made}
    waiting = {"sandbox": 3}
    sent = Recorder()
    sweeper = Sweeper(
        repo, sent, ["sandbox"], backlog=waiting.get, max_queued=3,  # type: ignore[arg-type]
        message_size=10, lease=timedelta(minutes=5),
    )  # fmt: skip
    # when the sweeper ticks, nothing is claimed or sent,
    assert sweeper.tick() == 0
    assert sent.messages == []
    # then with one message left in the queue it claims two messages' worth (20 steps),
    waiting["sandbox"] = 1
    assert sweeper.tick() == 20
    assert [len(steps) for _, _, steps in sent.messages] == [10, 10]
    # and once the queue is empty, the rest: every order sent once, as a submit.
    waiting["sandbox"] = 0
    assert sweeper.tick() == 10
    steps = [order_id for _, _, batch in sent.messages for order_id in batch]
    assert sorted(steps) == sorted(ids)
    assert {action for _, action, _ in sent.messages} == {Action.SUBMIT}


def test_the_backlog_is_read_from_the_redis_queue(found_services: Services) -> None:
    # Given the daemon's broker on Redis and a sender on it,
    namespace = own_namespace()
    broker = make_broker(found_services.broker_url, namespace=namespace)
    try:
        steps = Steps(broker, ["sandbox", "stripe"])
        waiting = broker_backlog(broker)
        assert waiting("sandbox") == 0
        # when two messages go to the sandbox's queue and one to stripe's,
        steps.send_many("sandbox", Action.POLL, [(uuid4(), uuid4())])
        steps.send_many("sandbox", Action.POLL, [(uuid4(), uuid4()), (uuid4(), uuid4())])
        steps.send_many("stripe", Action.SUBMIT, [(uuid4(), uuid4())])
        # then each queue's backlog counts its messages (not their steps).
        assert waiting("sandbox") == 2
        assert waiting("stripe") == 1
    finally:
        broker.close()
        flush_namespace(found_services.broker_url, namespace)
