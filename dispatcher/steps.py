"""The step vocabulary: what a claimed order needs next, which queue it goes to, and sending it.

The sweeper sends steps and the worker's actors receive them; both import this module, and
nothing in it imports the actor functions, the engine or its host, so the sweeper loads neither
aiohttp nor the worker stack (issue #13, item 2). :class:`Steps` is the sending half: it builds
each ``dramatiq.Message`` itself, with the actor names, queues and arguments that
:mod:`dispatcher.worker.actors` declares on the worker's broker (the receiving half).

Messages carry the order id (a refund's or payout's id for ``transfer``), the lease token and
the action; dramatiq's own retries are off, because the order and transfer tables and their
leases are the retry mechanism (a lost message only delays an order until its lease ends).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from uuid import UUID

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimit

from orders.model import Order
from orders.status import LATE_PAYMENT_FROM, OrderStatus

S = OrderStatus
# Billing webhook deliveries have their own queue, so a slow receiver never delays orders.
BILLING_QUEUE = "paydispatch.billing"
# The actor that sends one billing webhook event (its arguments: event id, lease token).
DELIVER = "deliver"


class Action(StrEnum):
    """A step of an order; its value is the name of the actor that runs it."""

    SUBMIT = "submit"
    POLL = "poll"
    FINALIZE = "finalize"  # the deadline passed: one last status check, then expired
    WATCH = "watch"  # after expired/rejected/cancelled: look for a late payment
    # A refund or payout (issue #14): one action; the step looks at the transfer's status. Its
    # messages carry [transfer_id, lease_token] pairs on the adapter's queue.
    TRANSFER = "transfer"
    # A paid order's refund check (issue #14): its payment's status read for refunds made at
    # the payment system. Its messages carry [order_id, token] pairs; the token is not checked
    # (the check's due time is its lease, and recording is keyed: a second check records nothing).
    REFUND_CHECK = "refund_check"


def action_for(order: Order, now: datetime) -> Action | None:
    """What a claimed order needs next, or None when nothing is left to do."""
    if order.status in {S.NEW, S.SUBMITTING}:
        return Action.SUBMIT
    if order.status is S.AWAITING_PAYMENT:
        return Action.FINALIZE if now >= order.expires_at else Action.POLL
    if order.status in LATE_PAYMENT_FROM:
        return Action.WATCH
    return None


def queue_name(adapter: str) -> str:
    """One dramatiq queue per payment system, so a slow one never starves the others."""
    return f"paydispatch.{adapter}"


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


class Steps:
    """Sends steps to the adapters' queues (and billing deliveries to theirs) on one broker.

    No actor is declared here: a broker enqueues a message by its queue name alone (Redis
    pushes it to the queue's list; RabbitMQ declares the queue on the server before it
    publishes), and the worker that consumes the queue looks the actor up by the message's
    ``actor_name``. The queues are declared all the same, as the worker's broker declares them.
    """

    def __init__(self, broker: dramatiq.Broker, adapters: Sequence[str]) -> None:
        self.broker = broker
        for adapter in adapters:
            broker.declare_queue(queue_name(adapter))
        broker.declare_queue(BILLING_QUEUE)

    def send(self, adapter: str, action: Action, order_id: UUID, token: UUID) -> None:
        self.send_many(adapter, action, [(order_id, token)])

    def send_many(self, adapter: str, action: Action, steps: Sequence[tuple[UUID, UUID]]) -> None:
        """One message for a batch of [order_id, lease_token] pairs, on the adapter's queue.

        The broker's cost is paid per batch, not per order; each pair is still its own step.
        """
        pairs = [[str(order_id), str(token)] for order_id, token in steps]
        self._enqueue(queue_name(adapter), str(action), (pairs,))

    def send_delivery(self, event_id: UUID, token: UUID) -> None:
        """One billing webhook event, on the billing queue."""
        self._enqueue(BILLING_QUEUE, DELIVER, (str(event_id), str(token)))

    def _enqueue(self, queue: str, actor: str, args: tuple[object, ...]) -> None:
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}
        )
        self.broker.enqueue(message)
