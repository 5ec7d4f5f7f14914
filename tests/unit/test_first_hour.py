"""Issue #16, "Surprises to remove": what a new operator tripped over in the first hour.

A payment system that is down is one warning per adapter per interval, not a line per order;
the sandbox's control API lists its routes and fault switches at ``/_control/`` and in
docs/sandbox.md; the first ``./run`` shows how its install is getting on. And README.md's
demo section quotes the demo's money-going-out lines exactly as the demo prints them (issue #14).
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import io
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import httpx
import pytest
import structlog
from starlette.routing import Route
from structlog.testing import capture_logs

from adapters.sandbox.faults import WEBHOOK_FAULT_HELP, FaultKind, Operation, WebhookFaults
from adapters.sandbox.server import create_app
from dispatcher import demo, metrics
from dispatcher import demo_money_out as out
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import Action
from dispatcher.worker.breaker import BreakerState
from dispatcher.worker.engine import Engine
from dispatcher.worker.outage import OutageLog
from dispatcher.worker.transport import Transport
from orders.money import Money
from orders.repository import Orders
from orders.status import OrderStatus
from tests.unit.test_engine_steps import (
    LEASE,
    NOW,
    PAYMENT_ID,
    FakeOrders,
    counter,
    leased,
    yookassa_runtime,
)

S = OrderStatus
WATCHED = 300


@pytest.fixture(autouse=True)
def _closed_breaker_gauge() -> Iterator[None]:
    yield
    metrics.BREAKER_STATE.labels("yookassa").set(0)


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _run_steps(
    runtime: AdapterRuntime,
    repo: FakeOrders,
    action: Action,
    wire: httpx.MockTransport,
) -> None:
    """One step for every order in ``repo``, all at once, with a transport whose clock stands
    still (the whole flood falls within one log interval, however slow the machine)."""

    async def go() -> None:
        engine = Engine(
            cast(Orders, repo),
            {runtime.name: runtime},
            clock=lambda: NOW,
            http_transport=wire,
        )
        engine.transports[runtime.name] = Transport(
            runtime.adapter, runtime.settings, runtime.policy, http_transport=wire, clock=lambda: 0
        )
        try:
            await asyncio.gather(*(engine.run(i, LEASE, action) for i in list(repo.orders)))
        finally:
            await engine.aclose()

    asyncio.run(go())


def _watched_orders(count: int) -> FakeOrders:
    first = leased(status=S.EXPIRED, psp_id=PAYMENT_ID, polls=2)
    orders = [replace(first, id=uuid.uuid4(), number=1000 + n) for n in range(count)]
    return FakeOrders(*orders)


def _at(level: str, logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["log_level"] == level]


def test_unreachable_payment_system_logs_one_warning_for_hundreds_of_watched_orders() -> None:
    # Given 300 orders watched for late payments and a payment system that refuses connections,
    runtime = yookassa_runtime()
    runtime = replace(runtime, policy=replace(runtime.policy, breaker_failures=5))
    repo = _watched_orders(WATCHED)
    errors_before = counter(metrics.STEP_ERRORS, "yookassa", "watch", "transient")

    # When every one of them gets its step,
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        _run_steps(runtime, repo, Action.WATCH, httpx.MockTransport(_refuse))

    # Then the log has one warning, for the adapter, counting the failures it stands for,
    warnings = _at("warning", logs)
    assert len(warnings) == 1, warnings[:3]
    (warning,) = warnings
    assert warning["event"].startswith("payment system unavailable")
    assert warning["adapter"] == "yookassa"
    assert "order_id" not in warning  # a line about the adapter, not about one order
    assert "ConnectError" in warning["error"]
    # and each order's failure is still there at debug, with the order's id,
    details = [e for e in _at("debug", logs) if e["event"] == "step failed"]
    assert {e["order_id"] for e in details} == {str(i) for i in repo.orders}
    # while the metric counts every failed step, the breaker opened after 5 failures,
    after = counter(metrics.STEP_ERRORS, "yookassa", "watch", "transient")
    assert after == errors_before + WATCHED
    assert metrics.BREAKER_STATE.labels("yookassa")._value.get() == BreakerState.OPEN
    # and every order stays watched, due again later.
    assert {(o.status, o.errors, o.lease_token) for o in repo.orders.values()} == {
        (S.EXPIRED, 1, None)
    }
    assert all(o.next_run_at is not None and o.next_run_at > NOW for o in repo.orders.values())


def test_an_unreadable_answer_is_still_a_warning_per_order() -> None:
    # Given orders whose payment system answers, but with something unreadable,
    def garbled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>maintenance</html>")

    repo = _watched_orders(3)

    with capture_logs() as logs:
        _run_steps(yookassa_runtime(), repo, Action.WATCH, httpx.MockTransport(garbled))

    # Then each order's failure is a warning of its own: it says something about that order.
    failed = [e for e in _at("warning", logs) if e["event"] == "step failed"]
    assert [e["kind"] for e in failed] == ["malformed"] * 3
    assert not [e for e in logs if e["event"].startswith("payment system unavailable")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_warns_once_per_interval_with_the_count_left_out_and_ends_with_one_line() -> None:
    clock = Clock()
    outage = OutageLog("sandbox", interval=30.0, clock=clock)

    with capture_logs() as logs:
        outage.failed("sandbox status: ConnectError")  # the first failure: a line at once
        for second in range(1, 30):
            clock.now = 100.0 + second
            outage.failed("sandbox status: ConnectError")
        outage.failed("sandbox: circuit open after 5 failures", held_back=True)
        clock.now = 131.0  # one interval after the first line
        outage.failed("sandbox status: ConnectError")
        clock.now = 140.0
        outage.failed("sandbox status: ConnectError")
        outage.recovered()
        outage.recovered()  # nothing under way: nothing to say

    assert [(e["log_level"], e["suppressed"]) for e in logs] == [
        ("warning", 0),
        ("warning", 30),
        ("info", 1),
    ]
    first, second, back = logs
    assert (first["failed_calls"], first["error"]) == (1, "sandbox status: ConnectError")
    assert (second["failed_calls"], second["held_back_by_breaker"]) == (31, 1)
    assert second["down_for"] == 31.0
    assert back["event"] == "payment system available again"
    assert (back["failed_calls"], back["held_back_by_breaker"], back["down_for"]) == (32, 1, 40.0)


def test_a_new_outage_after_recovery_warns_at_once() -> None:
    clock = Clock()
    outage = OutageLog("sandbox", interval=30.0, clock=clock)
    with capture_logs() as logs:
        outage.failed("down")
        outage.recovered()
        clock.now += 1
        outage.failed("down again")

    assert [(e["log_level"], e.get("error")) for e in logs] == [
        ("warning", "down"),
        ("info", None),
        ("warning", "down again"),
    ]
    assert logs[2]["suppressed"] == 0


# -- the sandbox's control API lists itself ---------------------------------------------------

SANDBOX_DOC = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"


def _control_listing() -> tuple[int, Any, list[tuple[str, str]]]:
    """GET /_control/ of a fresh sandbox app, and the app's own control routes."""
    app = create_app()
    routes = [
        (method, route.path_format)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/_control/")
        for method in sorted((route.methods or set()) - {"HEAD"})
    ]

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            return await client.get("/_control/")

    response = asyncio.run(get())
    return response.status_code, response.json(), routes


def test_sandbox_control_root_lists_every_control_route_with_a_description() -> None:
    status, listing, routes = _control_listing()

    assert status == 200
    listed = {(r["method"], r["path"]): r for r in listing["routes"]}
    assert set(listed) == set(routes)
    # the switches a tester reaches for first are among them
    assert {
        ("POST", "/_control/faults/{operation}"),
        ("POST", "/_control/webhooks"),
        ("POST", "/_control/reset"),
        ("GET", "/_control/stats"),
        ("POST", "/_control/invoices/{invoice_id}/{action}"),
    } <= set(listed)
    assert all(r["description"] for r in listing["routes"])
    assert listed["POST", "/_control/faults/{operation}"]["choices"] == {
        "operation": [o.value for o in Operation]
    }
    assert listed["POST", "/_control/invoices/{invoice_id}/{action}"]["choices"] == {
        "action": ["pay", "decline", "refund"]
    }


def test_sandbox_control_root_lists_every_fault_kind_with_its_parameters() -> None:
    _, listing, _ = _control_listing()

    kinds = listing["fault_kinds"]
    assert list(kinds) == [k.value for k in FaultKind]
    assert all(kind["description"] for kind in kinds.values())
    assert kinds["latency"]["parameters"] == {"ms": 500}
    assert kinds["timeout"]["parameters"] == {"seconds": 30.0}  # the config's hang_seconds
    assert kinds["malformed"]["parameters"] == {"style": "html"}
    assert set(listing["webhook_faults"]) == {"duplicate", "reorder"}


def test_every_webhook_fault_switch_has_a_description() -> None:
    assert set(WEBHOOK_FAULT_HELP) == set(WebhookFaults.__dataclass_fields__)


def test_docs_sandbox_lists_every_control_route_and_fault() -> None:
    doc = SANDBOX_DOC.read_text(encoding="utf-8")
    _, listing, routes = _control_listing()

    missing = [f"{m} {p}" for m, p in routes if f"| `{m}` | `{p}` |" not in doc]
    missing += [f"fault {k}" for k in listing["fault_kinds"] if f"| `{k}` |" not in doc]
    missing += [f"switch {w}" for w in listing["webhook_faults"] if f"| `{w}` |" not in doc]
    missing += [f"operation {o}" for o in listing["operations"] if f"`{o}`" not in doc]
    assert not missing, f"docs/sandbox.md does not list: {missing}"


# -- ./run shows the first install's progress --------------------------------------------------

# What pip prints while ./run installs the project (pip 25, no terminal, progress bars off).
PIP_OUTPUT = (
    """\
Looking in indexes: https://pypi.org/simple, file:///opt/pypi/simple
Looking in links: /opt/wheels
Obtaining file:///work/main
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
  Checking if build backend supports build_editable: started
WARNING: Location 'file:///opt/pypi-more/simple/h11/' is ignored: it is neither a file nor a dir
Collecting dramatiq<3,>=2.0 (from dramatiq[redis]<3,>=2.0->paydispatch==0.1.0)
  Downloading dramatiq-2.0.0-py3-none-any.whl (120 kB)
"""
    + "".join(f"Processing /opt/pypi/files/dep{n}-1.0-py3-none-any.whl\n" for n in range(11))
    + """\
Building wheels for collected packages: paydispatch
  Building editable for paydispatch (pyproject.toml): started
Installing collected packages: dep0, dep1, dep2, dramatiq, paydispatch
Successfully installed dep0-1.0 dep1-1.0 dep2-1.0 dramatiq-2.0.0 paydispatch-0.1.0
"""
)


def _run_script() -> ModuleType:
    """The ``run`` script at the repository's root, imported as a module (it has no .py)."""
    path = Path(__file__).resolve().parents[2] / "run"
    loader = importlib.machinery.SourceFileLoader("paydispatch_run_script", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _follow(tty: bool) -> str:
    run = _run_script()
    out = io.StringIO()
    ticks = iter(range(1000))
    progress = run.PipProgress(out, tty=tty, clock=lambda: float(next(ticks)))
    for line in PIP_OUTPUT.splitlines(keepends=True):
        progress.feed(line)
    progress.finish()
    assert progress.lines[-1].startswith("Successfully installed")  # pip's output is kept
    return out.getvalue()


def test_first_install_without_a_terminal_prints_each_phase_with_counts_and_times() -> None:
    shown = _follow(tty=False).splitlines()

    assert shown == [
        "    finding packages (1s)",
        "    preparing the build (2s)",
        "    finding packages: 1 package (3s)",
        "    finding packages: 10 packages (4s)",  # a line every ten packages found
        "    building: 12 packages (5s)",
        "    installing and compiling: 5 packages (6s)",
        "    installed: 5 packages (7s)",
    ]
    assert "\r" not in "".join(shown)
    assert "is ignored" not in "".join(shown)  # pip's harmless find-links noise stays out


def test_first_install_on_a_terminal_rewrites_one_status_line() -> None:
    shown = _follow(tty=True)

    assert shown.count("\n") == 1  # one line, ended once the install is done
    updates = shown.split("\r\x1b[K")[1:]
    assert len(updates) >= 14  # one per package found and per phase
    assert "    finding packages: 1 package, dramatiq (4s)" in updates
    assert "    finding packages: 2 packages, dep0 (5s)" in updates
    assert updates[-1].startswith("    installed: 5 packages (")


def test_pip_warnings_and_errors_are_shown_as_they_come() -> None:
    run = _run_script()
    out = io.StringIO()
    progress = run.PipProgress(out, tty=True)
    progress.feed("Collecting nothing-such\n")
    progress.feed("ERROR: No matching distribution found for nothing-such\n")

    assert out.getvalue().endswith("\n    ERROR: No matching distribution found for nothing-such\n")


# -- the demo's money going out (issue #14): README.md quotes what it prints ------------------


def _readme_demo_section() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("## The demo")
    return readme[start : readme.index("\n## ", start + 1)]


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def test_readme_quotes_the_demos_money_out_lines_as_the_demo_prints_them() -> None:
    printed = [
        out.header_line(),
        out.refund_line(
            69,
            usd(16601),
            usd(49804),
            status="succeeded",
            seconds=1.7,
            refund_status="partially_refunded",
        ),
        out.wallet_line("user-4", usd(95561), usd(78960), usd(0)),
        out.withdrawal_line("user-5", usd(64979), usd(680), "succeeded", 1.5),
        out.payout_completed_line("sandbox"),
        out.wallet_line("user-5", usd(129959), usd(64300), usd(0)),
        out.psp_line("sandbox", 1, 1),
        out.audit_line("demo-530278", True, {"wallets": 12, "entries": 26}),
        "demo succeeded",
    ]
    assert "```text\n" + "\n".join(printed) + "\n```" in _readme_demo_section()
    # The example adds up: the wallets lost the refund, and the withdrawal with its fee (1 % of
    # the amount rounded up to a cent, + 0.30: the demo's settings).
    assert 95561 - 16601 == 78960
    assert 64979 + 680 + 64300 == 129959
    assert out.WITHDRAWAL_ENV["PAYDISPATCH_WITHDRAWALS_FEE_FIXED"] == "0.30"
    assert out.WITHDRAWAL_ENV["PAYDISPATCH_WITHDRAWALS_FEE_PERCENT"] == "1"


def test_readme_quotes_the_demos_lines_for_a_fake_without_payouts() -> None:
    printed = [out.skipped_line("withdrawal", "stripe"), out.psp_line("stripe", 1, None)]
    assert "```text\n" + "\n".join(printed) + "\n```" in _readme_demo_section()


def test_the_demo_refunds_with_every_fake_and_withdraws_only_where_the_adapter_pays_out() -> None:
    assert all(out.refunds(adapter) for adapter in demo.ADAPTERS)
    assert [a for a in demo.ADAPTERS if out.pays_out(a)] == ["sandbox"]
    assert out.daemon_env("sandbox")["PAYDISPATCH_WITHDRAWALS_ADAPTER"] == "sandbox"
    assert "PAYDISPATCH_WITHDRAWALS_ADAPTER" not in out.daemon_env("stripe")
