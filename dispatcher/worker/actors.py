"""The dramatiq side of a worker: the actors, declared on the worker's broker.

Actors ``submit``, ``poll`` and ``finalize`` (and ``watch`` for late payments) all hand their
step to the process's :class:`EngineHost`; ``deliver`` hands it a billing webhook delivery.
This is the receiving half of :mod:`dispatcher.steps`, whose :class:`~dispatcher.steps.Steps`
sends the messages (the actor names, queues and arguments are that module's); dramatiq's own
retries are off, because the order table and its leases are the retry mechanism.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import dramatiq

from dispatcher.billing.webhook import Delivery
from dispatcher.steps import BILLING_QUEUE, DELIVER, Action, queue_name
from dispatcher.worker.host import EngineHost

_host: EngineHost | None = None
_delivery: Delivery | None = None


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


def transfer(steps: list[list[str]]) -> None:
    """Refunds and payouts: [transfer_id, lease_token] pairs (issue #14)."""
    _admit_all(steps, Action.TRANSFER)


def refund_check(steps: list[list[str]]) -> None:
    """Paid orders' refund checks: [order_id, token] pairs (issue #14)."""
    _admit_all(steps, Action.REFUND_CHECK)


_FUNCTIONS = {
    Action.SUBMIT: submit,
    Action.POLL: poll,
    Action.FINALIZE: finalize,
    Action.WATCH: watch,
    Action.TRANSFER: transfer,
    Action.REFUND_CHECK: refund_check,
}


def set_delivery(delivery: Delivery | None) -> None:
    global _delivery  # noqa: PLW0603 - one delivery per worker process, like the engine host
    _delivery = delivery


def deliver(event_id: str, token: str) -> None:
    """Send one billing webhook event, on the engine's loop (a slow receiver holds no thread)."""
    if _host is None or _delivery is None:
        raise RuntimeError("no webhook delivery in this process: configure the webhook hook")
    _host.admit_coroutine(_delivery.deliver(UUID(event_id), UUID(token)))


class Actors:
    """The actors declared on one broker, and the queues of the adapters the worker consumes.

    A dramatiq worker consumes only the queues declared on its broker, and runs a message only
    when the message's actor is declared there.
    """

    def __init__(self, broker: dramatiq.Broker, adapters: Sequence[str]) -> None:
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
            actor_name=DELIVER,
            queue_name=BILLING_QUEUE,
            priority=0,
            options={"time_limit": 60_000},
        )
