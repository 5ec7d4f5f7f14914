"""The fixture replay: routes learned from the adapter, scripted answers, counts (no network)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, ClassVar
from uuid import uuid4

import httpx
import pytest

from adapters import yookassa
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    Capabilities,
    PspRequest,
    PspResponse,
    pairs,
)
from adapters.replay import Replay
from adapters.sandbox import adapter as sandbox_adapter
from adapters.testing import SAMPLE_ORDER_ID, sample_order
from orders.model import Order
from tests.unit import test_sandbox_adapter as sandbox_tests
from tests.unit import test_yookassa as yookassa_tests

PAYMENT_ID = yookassa_tests.PAYMENT_ID
API_URL = "http://replay.test"


def yookassa_replay() -> Replay:
    fixtures = yookassa_tests.TestYooKassaConformance.fixtures
    return Replay(yookassa.adapter, fixtures, yookassa_tests.SETTINGS)


def send(replay: Replay, request: PspRequest) -> httpx.Response:
    """Send an adapter's request through the replay, as the transport would."""
    with httpx.Client(transport=replay.mock_transport()) as client:
        return client.request(
            request.method,
            request.url,
            headers=dict(request.headers),
            params=tuple(pairs(request.params)) or None,
            json=request.json,
        )


def order_of(**changes: Any) -> Order:
    """An order of the engine's, not the kit's: another id and number."""
    return sample_order(adapter="yookassa", id=uuid4(), number=9001, **changes)


def test_replay_learns_each_operations_route_from_the_adapter() -> None:
    routes = {op: (r.method, r.path) for op, r in yookassa_replay().routes.items()}
    assert routes == {
        "create": ("POST", "/payments"),
        "status": ("GET", f"/payments/{PAYMENT_ID}"),
        "capture": ("POST", f"/payments/{PAYMENT_ID}/capture"),
        "cancel": ("POST", f"/payments/{PAYMENT_ID}/cancel"),
    }


def test_replay_answers_create_and_the_scripted_status_sequence_then_repeats_the_last() -> None:
    replay = yookassa_replay()
    replay.script("status", CanonicalState.PENDING, CanonicalState.PENDING, CanonicalState.PAID)
    settings = replay.settings(API_URL)
    order = order_of()
    created = send(replay, yookassa.adapter.build_create(order, settings))
    invoice = yookassa.adapter.parse_create(order, _response(created))
    invoiced = replace(order, psp_id=invoice.psp_id)
    states = []
    for _ in range(4):
        answer = send(replay, yookassa.adapter.build_status(invoiced, settings))
        states.append(yookassa.adapter.parse_status(invoiced, _response(answer), settings).state)
    assert states == [CanonicalState.PENDING] * 2 + [CanonicalState.PAID] * 2
    assert replay.counts() == {"create": 1, "status": 4}
    assert replay.unmatched == []


def test_replay_recognises_a_payment_id_other_than_the_kits() -> None:
    replay = yookassa_replay()
    order = order_of(psp_id="another-payment-id")
    send(replay, yookassa.adapter.build_capture(order, replay.settings(API_URL)))
    assert replay.counts() == {"capture": 1}


def test_replay_answers_an_unknown_request_404_naming_its_routes() -> None:
    replay = yookassa_replay()
    request = PspRequest("GET", f"{API_URL}/refunds", "status")
    answer = send(replay, request)
    assert answer.status_code == 404
    assert answer.json()["routes"]["create"] == "POST /payments"
    assert [(r.method, r.path) for r in replay.unmatched] == [("GET", "/refunds")]
    assert replay.counts() == {"unmatched": 1}


def test_replay_serves_scripted_raw_answers_such_as_an_error_page() -> None:
    replay = yookassa_replay()
    replay.script("status", PspResponse(503, b"upstream down"), CanonicalState.PAID)
    request = yookassa.adapter.build_status(order_of(psp_id=PAYMENT_ID), replay.settings(API_URL))
    assert send(replay, request).status_code == 503
    assert json.loads(send(replay, request).content)["status"] == "succeeded"


def test_replay_refuses_scripts_it_cannot_answer() -> None:
    replay = yookassa_replay()
    with pytest.raises(ValueError, match="builds no lookup request"):
        replay.script("lookup", CanonicalState.PAID)
    bare = replace(yookassa_tests.TestYooKassaConformance.fixtures, states={})
    with pytest.raises(ValueError, match="no paid fixture"):
        Replay(yookassa.adapter, bare, yookassa_tests.SETTINGS).script(
            "status", CanonicalState.PAID
        )


def test_lookup_finds_nothing_before_a_create_and_the_invoice_after() -> None:
    fixtures = sandbox_tests.TestSandboxConformance.fixtures
    replay = Replay(sandbox_adapter, fixtures, sandbox_tests.TestSandboxConformance.settings)
    settings = replay.settings(API_URL)
    order = sample_order(adapter="sandbox")
    lookup = sandbox_adapter.build_lookup(order, settings)
    assert sandbox_adapter.parse_lookup(order, _response(send(replay, lookup)), settings) is None
    send(replay, sandbox_adapter.build_create(order, settings))
    found = sandbox_adapter.parse_lookup(order, _response(send(replay, lookup)), settings)
    assert found is not None
    assert found.psp_id == "inv_kit"
    assert replay.counts() == {"lookup": 2, "create": 1}


def test_bound_order_replaces_the_kit_orders_id_in_answers() -> None:
    replay = yookassa_replay()
    order = order_of(psp_id=PAYMENT_ID)
    replay.bind(order)
    answer = send(replay, yookassa.adapter.build_status(order, replay.settings(API_URL)))
    metadata = answer.json()["metadata"]
    assert metadata[yookassa.META_ORDER_ID] == str(order.id)
    assert str(SAMPLE_ORDER_ID) not in answer.text


class SamePathTwice(yookassa.YooKassa):
    """Cancels by POSTing to the create path: the replay cannot tell the two apart."""

    capabilities: ClassVar[Capabilities] = yookassa.YooKassa.capabilities

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("POST", f"{settings.api_url}/payments", "cancel", json={})


def test_replay_refuses_two_operations_on_one_route() -> None:
    fixtures = yookassa_tests.TestYooKassaConformance.fixtures
    with pytest.raises(ValueError, match="cancel and create both use POST /payments"):
        Replay(SamePathTwice(), fixtures, yookassa_tests.SETTINGS)


def _response(answer: httpx.Response) -> PspResponse:
    return PspResponse(answer.status_code, answer.content, dict(answer.headers))
