"""The dramatiq side: the broker, the actors, and sending a step to an adapter's queue.

Actors ``submit``, ``poll`` and ``finalize`` (and ``watch`` for late payments) all hand their
step to the process's :class:`EngineHost`; ``deliver`` hands it a billing webhook delivery.
Messages carry the order id, the lease token and the action; dramatiq's own retries are off,
because the order table and its leases are the retry mechanism (a lost message only delays an
order until its lease ends).
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimit

from dispatcher.billing.webhook import Delivery
from dispatcher.engine import Action
from dispatcher.host import EngineHost
from dispatcher.runtime import queue_name

_host: EngineHost | None = None
_delivery: Delivery | None = None
# Billing webhook deliveries have their own queue, so a slow receiver never delays orders.
BILLING_QUEUE = "paydispatch.billing"


def set_host(host: EngineHost | None) -> None:
    global _host  # noqa: PLW0603 - one engine per worker process, installed by its entry point
    _host = host


def _admit_all(steps: list[list[str]], action: Action) -> None:
    if _host is None:
        raise RuntimeError("no engine in this process: run `paydispatch worker`")
    _host.admit_many([(UUID(order_id), UUID(token)) for order_id, token in steps], action)


# Each message carries a batch of [order_id, lease_token] pairs of one adapter and action: the
# broker's cost is paid per batch, not per order. Each pair is still its own step.
def submit(steps: list[list[str]]) -> None:
    _admit_all(steps, Action.SUBMIT)


def poll(steps: list[list[str]]) -> None:
    _admit_all(steps, Action.POLL)


def finalize(steps: list[list[str]]) -> None:
    _admit_all(steps, Action.FINALIZE)


def watch(steps: list[list[str]]) -> None:
    _admit_all(steps, Action.WATCH)


_FUNCTIONS = {
    Action.SUBMIT: submit,
    Action.POLL: poll,
    Action.FINALIZE: finalize,
    Action.WATCH: watch,
}


def set_delivery(delivery: Delivery | None) -> None:
    global _delivery  # noqa: PLW0603 - one delivery per worker process, like the engine host
    _delivery = delivery


def deliver(event_id: str, token: str) -> None:
    """Send one billing webhook event, on the engine's loop (a slow receiver holds no thread)."""
    if _host is None or _delivery is None:
        raise RuntimeError("no webhook delivery in this process: configure the webhook hook")
    _host.admit_coroutine(_delivery.deliver(UUID(event_id), UUID(token)))


def make_broker(url: str, *, namespace: str = "paydispatch") -> dramatiq.Broker:
    """A broker for ``redis://`` (default) or ``amqp://`` URLs, without dramatiq's retries.

    Only the middleware the actors use: TimeLimit for their ``time_limit``. No Retries (the
    leases retry), and none of age limits, shutdown notices, callbacks or pipelines, which no
    actor or message asks for.
    """
    middleware: list[dramatiq.Middleware] = [TimeLimit()]
    broker: dramatiq.Broker
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url, middleware=middleware)
    elif url.startswith(("redis://", "rediss://", "unix://")):
        # dramatiq's RedisBroker.__init__ has no annotations
        broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=url, middleware=middleware, namespace=namespace
        )
    else:
        scheme = url.split("://", maxsplit=1)[0]
        raise ValueError(f"PAYDISPATCH_BROKER_URL: unsupported scheme {scheme!r}")
    return broker


class Dispatch:
    """Actors declared on one broker, and the queues of the enabled adapters."""

    def __init__(self, broker: dramatiq.Broker, adapters: list[str]) -> None:
        self.broker = broker
        self.actors = {
            action: dramatiq.Actor(
                fn,
                broker=broker,
                actor_name=str(action),
                queue_name=queue_name(adapters[0]) if adapters else "paydispatch",
                priority=0,
                # An actor may wait for free engine slots for a whole batch of steps.
                options={"time_limit": 600_000},
            )
            for action, fn in _FUNCTIONS.items()
        }
        for adapter in adapters:
            broker.declare_queue(queue_name(adapter))
        self.deliver_actor = dramatiq.Actor(
            deliver,
            broker=broker,
            actor_name="deliver",
            queue_name=BILLING_QUEUE,
            priority=0,
            options={"time_limit": 60_000},
        )

    def send(self, adapter: str, action: Action, order_id: UUID, token: UUID) -> None:
        self.send_many(adapter, action, [(order_id, token)])

    def send_many(self, adapter: str, action: Action, steps: Sequence[tuple[UUID, UUID]]) -> None:
        """One message for a batch of steps, on the adapter's queue."""
        pairs = [[str(order_id), str(token)] for order_id, token in steps]
        message = self.actors[action].message(pairs)
        self.broker.enqueue(message.copy(queue_name=queue_name(adapter)))

    def send_delivery(self, event_id: UUID, token: UUID) -> None:
        self.deliver_actor.send(str(event_id), str(token))
