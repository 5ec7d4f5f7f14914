"""The step vocabulary (issue #13, item 2): the sweeper sends through ``dispatcher.steps`` alone,
and what it sends is what the worker's actors receive: the same actor names, queues and
arguments, though the sending process declares no actor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from dramatiq.brokers.stub import StubBroker

from dispatcher.steps import BILLING_QUEUE, DELIVER, Action, Steps, queue_name
from dispatcher.worker.actors import Actors
from tests.conftest import ROOT


def test_the_sweeper_loads_neither_the_worker_nor_aiohttp() -> None:
    code = (
        "import json, sys, dispatcher.sweeper, dispatcher.steps\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if m.startswith(('dispatcher.worker', 'aiohttp', 'fastapi')))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_steps_enqueue_what_the_actors_are_declared_to_receive() -> None:
    sender, receiver = StubBroker(), StubBroker()
    steps = Steps(sender, ["sandbox", "stripe"])
    declared = Actors(receiver, ["sandbox", "stripe"])
    assert not sender.actors  # the sending half declares no actor
    assert {queue_name("sandbox"), queue_name("stripe"), BILLING_QUEUE} <= set(sender.queues)
    assert set(sender.get_declared_queues()) <= set(receiver.get_declared_queues())
    order, token = uuid.uuid4(), uuid.uuid4()
    for action in Action:
        steps.send_many("stripe", action, [(order, token), (token, order)])
        message = sender.queues[queue_name("stripe")].get_nowait()
        decoded = json.loads(message)
        assert decoded["actor_name"] == str(action) == declared.actors[action].actor_name
        assert decoded["args"] == [[[str(order), str(token)], [str(token), str(order)]]]
        assert decoded["kwargs"] == {}
        receiver.get_actor(decoded["actor_name"])  # the worker runs it
    steps.send("sandbox", Action.POLL, order, token)
    decoded = json.loads(sender.queues[queue_name("sandbox")].get_nowait())
    assert (decoded["actor_name"], decoded["args"]) == ("poll", [[[str(order), str(token)]]])
    steps.send_delivery(order, token)
    decoded = json.loads(sender.queues[BILLING_QUEUE].get_nowait())
    assert (decoded["actor_name"], decoded["args"]) == (DELIVER, [str(order), str(token)])
    assert decoded["queue_name"] == BILLING_QUEUE == declared.deliver_actor.queue_name
    receiver.get_actor(DELIVER)
    sender.close()
    receiver.close()
