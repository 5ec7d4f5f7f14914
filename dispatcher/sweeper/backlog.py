"""How many step messages wait in an adapter's queue: the sweeper's back-pressure.

A claimed order's message waits in the broker until a worker has room for it. When the workers
cannot keep up, every further claim only lengthens that wait; once a message waits longer than
the lease, the order is claimed again and the message arrives stale, so the workers spend their
time on steps they drop, and an order whose step sits behind thousands of others (a submit
behind polls) is never run (issue #15, item 2: measured at 20,000 awaiting orders). The sweeper
therefore claims for an adapter only while its queue holds fewer than ``max_queued`` messages;
due orders wait in the table instead, oldest first, where the next claim finds them.
"""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dispatcher.steps import queue_name

# Messages waiting in the adapter's queue (None: the broker cannot tell).
Backlog = Callable[[str], int | None]


def broker_backlog(broker: dramatiq.Broker) -> Backlog:
    """The messages waiting in each adapter's queue on ``broker`` (Redis or RabbitMQ)."""

    def waiting(adapter: str) -> int | None:
        queue = queue_name(adapter)
        if isinstance(broker, RedisBroker):
            # dramatiq's Redis broker keeps a queue's waiting message ids in the list
            # "<namespace>:<queue>" (its dispatch.lua); workers pop them when they have room.
            return int(broker.client.llen(f"{broker.namespace}:{queue}"))
        counts = getattr(broker, "get_queue_message_counts", None)  # RabbitmqBroker
        if counts is not None:
            ready, _delayed, _dead = counts(queue)
            return int(ready)
        return None

    return waiting
