"""The PHP client (clients/php) against a real ``paydispatch api`` process and PostgreSQL.

The PHP side is plain scripts under clients/php/tests that exit non-zero on a failed check; this
module starts the API, makes a site key with ``paydispatch keys create``, runs the scripts with
Debian's ``php`` and checks what they report against the database. Webhook signatures made by
dispatcher.billing.receiver are verified in PHP, so the two stay in step. Everything here skips
when ``php`` (with its curl extension) is not installed; .ci/run installs it in CI.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.api.keys import ApiKeys
from dispatcher.billing.hooks import WebhookHook
from dispatcher.billing.receiver import HEADER, sign, signature, verify
from dispatcher.billing.sites import SyncSiteWebhooks
from dispatcher.billing.wallet import SyncWallets
from dispatcher.billing.webhook import Delivery, Outbox, SyncOutbox, event_body
from dispatcher.services import Services, free_port
from orders import Money, NewOrder, OrderStatus
from orders.client import ApiError, Client
from orders.db import Pool, open_async_pool, open_pool
from orders.errors import InvalidSignature
from orders.repository import OrderRepository
from tests.billing_support import pay
from tests.conftest import cli
from tests.dispatch_support import wait_until
from tests.e2e.test_processes import daemon_env, spawn
from tests.integration.test_api import make_paid

ROOT = Path(__file__).resolve().parents[2]
PHP_CLIENT = ROOT / "clients" / "php"
PHP_TESTS = PHP_CLIENT / "tests"
PHP = shutil.which("php")
COMPOSER = shutil.which("composer")
NO_PHP = "no php: install Debian's `apt-get install php-cli php-curl` (.ci/run does this in CI)"


@pytest.fixture(scope="module")
def php() -> str:
    """The php binary, with the curl extension the client requires; else the test skips."""
    if PHP is None:
        pytest.skip(NO_PHP)
    modules = subprocess.run([PHP, "-m"], capture_output=True, text=True, check=True).stdout
    if "curl" not in modules.split():
        pytest.skip(f"php has no curl extension: {NO_PHP}")
    return PHP


@dataclass
class Api:
    url: str
    database_url: str
    repo: OrderRepository
    pool: Pool

    def new_key(self, *, by_command: bool = False) -> tuple[str, str]:
        """A new site and its key: made by ``paydispatch keys create`` as an operator makes one,
        or (quicker) by the key store the command uses."""
        site = f"php-{uuid.uuid4().hex[:12]}"
        if not by_command:
            return site, ApiKeys(self.pool).create(site, "php client")[1]
        made = cli(self.database_url, "keys", "create", site, "--description", "php client")
        assert made.returncode == 0, made.stderr
        return site, made.stdout.splitlines()[0]

    def paid_order(self, site: str, description: str = "Top-up") -> uuid.UUID:
        new = NewOrder(
            site=site, user_id="42", money=Money(1999, "EUR"), adapter="sandbox",
            site_ref=f"R-{uuid.uuid4().hex[:6]}", description=description,
        )  # fmt: skip
        order_id = self.repo.create(new).order.id
        make_paid(self.repo, order_id)
        return order_id

    def orders_of(self, site: str) -> dict[str, str]:
        """Every order of ``site``: id -> status."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT id, status FROM orders WHERE site = %s", (site,))
            return {str(row["id"]): row["status"] for row in rows}


@pytest.fixture(scope="module")
def api(php: str, found_services: Services, database_url: str) -> Iterator[Api]:
    """A ``paydispatch api`` process over this module's database (no sweeper: orders stay new)."""
    url = f"http://127.0.0.1:{free_port()}"
    env = daemon_env(database_url, found_services.broker_url, "http://127.0.0.1:9")
    env |= {"PAYDISPATCH_API_PORT": url.rsplit(":", 1)[1], "PAYDISPATCH_PUBLIC_URL": url}
    process = spawn(env, "api")
    pool = open_pool(database_url, max_size=2, name="e2e-php")
    try:

        def ready() -> bool:
            assert process.poll() is None, "paydispatch api exited"
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, what="paydispatch api")
        with OrderRepository(pool, {"sandbox": timedelta(hours=1)}) as repo:
            yield Api(url, database_url, repo, pool)
    finally:
        process.terminate()
        process.wait(timeout=30)
        pool.close()


def run_php(php: str, script: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run a PHP test script; it must exit 0 and print its outcome as JSON on the last line."""
    done = subprocess.run(
        [php, str(PHP_TESTS / script), *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    outcome: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return outcome


# -- orders, errors, wallets against the API ----------------------------------------------------


def test_php_client_creates_replays_lists_and_cancels_orders(php: str, api: Api) -> None:
    site, key = api.new_key(by_command=True)
    outcome = run_php(php, "orders.php", {"PD_URL": api.url, "PD_KEY": key})
    # The replays by site_ref and by key made no second order; the cancel reached the database.
    orders = api.orders_of(site)
    assert len(orders) == outcome["orders"] == 5
    assert orders[outcome["cancelled"]] == OrderStatus.CANCELLED
    assert orders[outcome["keyed"]] == OrderStatus.NEW


def test_php_client_maps_error_answers_to_the_same_exceptions_as_the_python_client(
    php: str, api: Api
) -> None:
    site, key = api.new_key()
    paid = api.paid_order(site)
    outcome = run_php(
        php,
        "errors.php",
        {"PD_URL": api.url, "PD_KEY": key, "PD_PAID": str(paid),
         "PD_DEAD_URL": f"http://127.0.0.1:{free_port()}"},
    )  # fmt: skip
    assert outcome["adapter"] == "unknown_adapter"
    # An answer that is not the API's JSON (uvicorn refusing the request line) maps by status.
    assert outcome["huge"] == [400, "http_error"]
    with Client(api.url, key, retries=0) as python, pytest.raises(ApiError) as raised:
        python.debit("nobody", Money(100, "USD"), key="php-overdraw")
    kind, status, code = outcome["empty_debit"]
    assert kind.rsplit("\\", 1)[1] == type(raised.value).__name__
    assert (status, code) == (raised.value.status_code, raised.value.code)
    assert api.orders_of(site)[str(paid)] == OrderStatus.PAID


def test_php_client_reads_balances_and_entries_page_by_page_and_debits_once(
    php: str, api: Api, request: pytest.FixtureRequest
) -> None:
    site, key = api.new_key()
    wallets = SyncWallets(api.pool)
    request.addfinalizer(wallets.close)
    for n, money in enumerate([Money(500, "USD"), Money(250, "USD"), Money(100, "EUR")], 1):
        wallets.credit(
            site, "u-1", money, kind="adjustment", key=f"php-credit-{n}", description="test"
        )
    outcome = run_php(php, "wallet.php", {"PD_URL": api.url, "PD_KEY": key, "PD_USER": "u-1"})
    # One debit for the two requests with its key; the overdraft wrote nothing.
    assert wallets.balance(site, "u-1", "USD") == Money(550, "USD")
    debits = [e for e in wallets.history(site, "u-1").items if e.money.amount < 0]
    assert [(e.id, e.key) for e in debits] == [(outcome["debit"], "php-debit-1")]


# -- retries, through a faulty front of the API -------------------------------------------------


@dataclass
class Front:
    """An HTTP front of the API that does what it is told to each request in turn: ``pass`` it
    on, ``lose`` the API's answer (pass it on, answer 502), answer ``busy`` (503 with
    Retry-After, not passed on), answer ``html`` (200 with a web server's page, not passed on),
    or ``hang`` (no answer until the test ends). It records every
    request it receives."""

    upstream: str
    url: str = ""
    faults: queue.SimpleQueue[str] = field(default_factory=queue.SimpleQueue)
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def plan(self, *faults: str) -> None:
        for fault in faults:
            self.faults.put(fault)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        self.seen.append((request.command, request.path, request.headers.get("Idempotency-Key")))
        fault = "pass" if self.faults.empty() else self.faults.get()
        if fault == "hang":
            self.release.wait(timeout=30)
            return
        if fault == "html":
            self.answer(request, 200, b"<html><body>Welcome to nginx!</body></html>", {})
            return
        if fault == "busy":
            body = b'{"error":{"code":"unavailable","message":"the database is unreachable"}}'
            self.answer(request, 503, body, {"Retry-After": "0"})
            return
        length = int(request.headers.get("Content-Length") or 0)
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}
        }
        answer = httpx.request(
            request.command,
            self.upstream + request.path,
            headers=headers,
            content=request.rfile.read(length) if length else None,
            timeout=10,
        )
        if fault == "lose":
            self.answer(request, 502, b"<html><body>502 Bad Gateway</body></html>", {})
        else:
            self.answer(request, answer.status_code, answer.content, {})

    @staticmethod
    def answer(
        request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "application/json" if body[:1] == b"{" else "text/html")
        request.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture
def front(api: Api) -> Iterator[Front]:
    front = Front(api.url)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            front.handle(self)

        def do_POST(self) -> None:
            front.handle(self)

        def do_DELETE(self) -> None:
            front.handle(self)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads ``front.seen``."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    front.url = f"http://127.0.0.1:{server.server_address[1]}"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    yield front
    front.release.set()
    server.shutdown()
    server.server_close()
    serving.join(timeout=10)


def test_a_create_whose_answer_is_lost_is_retried_with_the_same_key_and_makes_one_order(
    php: str, api: Api, front: Front
) -> None:
    site, key = api.new_key()
    # Given a front that passes the create on but loses the API's answer,
    front.plan("lose")
    # when the PHP client creates an order,
    outcome = run_php(php, "retry.php", {"PD_FRONT_URL": front.url, "PD_KEY": key}, "create")
    # then it tried again with the same key and got the order the first try made.
    assert [(m, k) for m, _, k in front.seen] == [("POST", outcome["key"])] * 2
    assert outcome["created"] is False
    assert api.orders_of(site) == {outcome["order"]: OrderStatus.NEW}


def test_a_cancel_whose_answer_is_lost_is_retried_and_answers_the_cancelled_order(
    php: str, api: Api, front: Front
) -> None:
    site, key = api.new_key()
    order = api.repo.create(NewOrder(site, "u", Money(100, "USD"), "sandbox")).order.id
    front.plan("lose")
    outcome = run_php(
        php, "retry.php", {"PD_FRONT_URL": front.url, "PD_KEY": key, "PD_ORDER": str(order)},
        "cancel",
    )  # fmt: skip
    assert outcome == {"status": "cancelled"}
    assert [m for m, _, _ in front.seen] == ["DELETE", "DELETE"]
    assert api.orders_of(site) == {str(order): OrderStatus.CANCELLED}


def test_busy_answers_are_retried_until_the_api_answers(php: str, api: Api, front: Front) -> None:
    site, key = api.new_key()
    order = api.paid_order(site)
    front.plan("busy", "busy")
    env = {"PD_FRONT_URL": front.url, "PD_KEY": key, "PD_ORDER": str(order)}
    assert run_php(php, "retry.php", env, "get") == {"order": str(order)}
    assert [m for m, _, _ in front.seen] == ["GET"] * 3


def test_retries_end_with_unavailable_carrying_the_api_error_code(
    php: str, api: Api, front: Front
) -> None:
    site, key = api.new_key()
    order = api.paid_order(site)
    front.plan("busy", "busy", "busy")
    env = {"PD_FRONT_URL": front.url, "PD_KEY": key, "PD_ORDER": str(order), "PD_RETRIES": "2"}
    outcome = run_php(php, "retry.php", env, "get")
    assert outcome == {
        "error": "Paydispatch\\Exception\\Unavailable", "status": 503, "code": "unavailable"
    }  # fmt: skip
    assert len(front.seen) == 3


def test_a_refusal_is_not_retried(php: str, api: Api, front: Front) -> None:
    site, key = api.new_key()
    order = api.paid_order(site)
    env = {"PD_FRONT_URL": front.url, "PD_KEY": key, "PD_ORDER": str(order)}
    outcome = run_php(php, "retry.php", env, "cancel")
    assert outcome == {
        "error": "Paydispatch\\Exception\\Conflict", "status": 409, "code": "not_cancellable"
    }  # fmt: skip
    assert len(front.seen) == 1


def test_a_success_that_is_no_json_object_is_unavailable_malformed_response_and_not_retried(
    php: str, api: Api, front: Front
) -> None:
    site, key = api.new_key()
    order = api.paid_order(site)
    front.plan("html")
    env = {"PD_FRONT_URL": front.url, "PD_KEY": key, "PD_ORDER": str(order)}
    outcome = run_php(php, "retry.php", env, "get")
    assert outcome == {
        "error": "Paydispatch\\Exception\\Unavailable", "status": 200, "code": "malformed_response"
    }  # fmt: skip
    assert len(front.seen) == 1


def test_an_api_that_never_answers_times_out_and_is_retried_then_unavailable(
    php: str, api: Api, front: Front
) -> None:
    site, key = api.new_key()
    order = api.paid_order(site)
    front.plan("hang", "hang")
    env = {
        "PD_FRONT_URL": front.url, "PD_KEY": key, "PD_ORDER": str(order),
        "PD_RETRIES": "1", "PD_TIMEOUT": "0.3",
    }  # fmt: skip
    outcome = run_php(php, "retry.php", env, "get")
    assert outcome == {
        "error": "Paydispatch\\Exception\\Unavailable", "status": 0, "code": "network_error"
    }  # fmt: skip
    assert [m for m, _, _ in front.seen] == ["GET", "GET"]


def test_php_client_refuses_a_key_with_a_line_break_instead_of_injecting_a_header(
    php: str, api: Api, front: Front
) -> None:
    site, key = api.new_key()
    # Given an idempotency key (or an API key read from a file) with a line break in it,
    outcome = run_php(php, "retry.php", {"PD_FRONT_URL": front.url, "PD_KEY": key}, "inject")
    # then the client refuses it as an argument error, and nothing reaches the API:
    # curl would have sent the rest of the value as a header line of its own.
    refused = "InvalidArgumentException"
    assert outcome == {"create": refused, "debit": refused, "client": refused}
    assert front.seen == []
    assert api.orders_of(site) == {}


# -- webhook signatures: PHP verifies what Python signs -----------------------------------------


def test_php_webhook_verify_accepts_and_refuses_exactly_what_the_python_receiver_does(
    php: str, api: Api, tmp_path: Path
) -> None:
    site, _ = api.new_key()
    order = api.repo.get(api.paid_order(site, description="Пополнение — café"))
    event_id = uuid.uuid4()
    body = event_body(event_id, order, late=False).encode()
    tampered = body.replace(b'"amount":1999', b'"amount":9999')
    assert tampered != body
    t = 1_800_000_000
    new, old = "whsec-new", "whsec-old"
    both = f"t={t},v1={signature(new, t, body)},v1={signature(old, t, body)}"
    cases: dict[str, tuple[bytes, str | None, list[str], float]] = {
        "valid": (body, sign(new, body, t), [new], t + 10),
        "rotated: old secret still accepted": (body, sign(old, body, t), [new, old], t),
        "rotated: old secret dropped": (body, sign(old, body, t), [new], t),
        "two signatures, either secret": (body, both, [old], t),
        "wrong secret": (body, sign("whsec-other", body, t), [new, old], t),
        "tampered body": (tampered, sign(new, body, t), [new], t),
        "at the tolerance": (body, sign(new, body, t), [new], t + 300),
        "stale": (body, sign(new, body, t), [new], t + 301),
        "from the future": (body, sign(new, body, t), [new], t - 301),
        "no header": (body, None, [new], t),
        "no timestamp": (body, f"v1={signature(new, t, body)}", [new], t),
        "no signature": (body, f"t={t}", [new], t),
        "signed but not JSON": (b"not json", sign(new, b"not json", t), [new], t),
    }
    payload = {
        name: {
            "body_b64": base64.b64encode(raw).decode(),
            "header": header,
            "secrets": secrets,
            "tolerance": 300,
            "now": now,
        }
        for name, (raw, header, secrets, now) in cases.items()
    }
    (tmp_path / "cases.json").write_text(json.dumps(payload))

    outcome = run_php(php, "webhook.php", {}, str(tmp_path / "cases.json"))

    def python(raw: bytes, header: str | None, secrets: list[str], now: float) -> str:
        for secret in secrets:
            try:
                return f"ok {verify(secret, header, raw, now=now)['id']}"
            except InvalidSignature:
                continue
        return "invalid"

    assert {name: outcome[name] for name in cases} == {
        name: python(*case) for name, case in cases.items()
    }
    accepted = {name for name in cases if outcome[name] != "invalid"}
    assert accepted == {
        "valid", "rotated: old secret still accepted", "two signatures, either secret",
        "at the tolerance",
    }  # fmt: skip
    assert outcome["valid"] == f"ok {event_id}"
    signed = 1_700_000_000, b'{"id":"e-1"}'
    assert outcome["_php_signature"] == signature("s3cret", *signed)
    assert outcome["_php_rotation_header"] == (
        f"t={signed[0]},v1={signature('s3cret', *signed)},v1={signature('old', *signed)}"
    )


@contextmanager
def php_endpoint(php: str, secrets: list[str], seen: Path | None = None) -> Iterator[str]:
    """The README's webhook endpoint (clients/php/tests/receiver.php) under PHP's own web
    server, verifying with ``secrets``; yields its URL once it answers."""
    url = f"http://127.0.0.1:{free_port()}"
    env = os.environ | {"PD_SECRETS": ",".join(secrets), "PD_SEEN": str(seen or "")}
    server = subprocess.Popen(
        [php, "-S", url.removeprefix("http://"), str(PHP_TESTS / "receiver.php")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def serving() -> bool:
        try:
            return httpx.post(url, content=b"{}", timeout=2).status_code == 400
        except httpx.TransportError:
            return False

    try:
        wait_until(serving, timeout=30, what="php -S")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_php_endpoint_accepts_a_webhook_as_paydispatch_signs_it_and_refuses_a_forgery(
    php: str, api: Api
) -> None:
    site, _ = api.new_key()
    order = api.repo.get(api.paid_order(site))
    event_id = uuid.uuid4()
    body = event_body(event_id, order, late=False).encode()
    # Given the README's endpoint, holding a new and an old secret,
    with (
        php_endpoint(php, ["whsec-new", "whsec-old"]) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):

        def post(raw: bytes, header: str) -> httpx.Response:
            headers = {HEADER: header, "Content-Type": "application/json"}
            return http.post("/paydispatch-webhook", content=raw, headers=headers)

        # when paydispatch posts an event signed now with either secret, it is accepted;
        for secret in ("whsec-old", "whsec-new"):
            accepted = post(body, sign(secret, body))
            assert accepted.status_code == 200, accepted.text
            assert accepted.json() == {"id": str(event_id), "user_id": "42"}
        # a changed amount, another secret or a signature ten minutes old are refused.
        forged = body.replace(b'"amount":1999', b'"amount":9999')
        stale = int(time.time()) - 600
        for raw, header in [
            (forged, sign("whsec-new", body)),
            (body, sign("whsec-other", body)),
            (body, sign("whsec-new", body, stale)),
        ]:
            assert post(raw, header).status_code == 400


def deliver_once(api: Api, site: str) -> tuple[str, dict[str, Any]]:
    """Pay an order of ``site`` with the webhook hook writing its event, and make one delivery
    attempt with paydispatch's own Delivery; returns the outcome and the outbox row."""
    new = NewOrder(site=site, user_id="buyer", money=Money(1999, "EUR"), adapter="sandbox")
    order_id = api.repo.create(new).order.id
    api.repo.transition(order_id, OrderStatus.NEW, OrderStatus.SUBMITTING, actor="test")
    api.repo.transition(
        order_id, OrderStatus.SUBMITTING, OrderStatus.AWAITING_PAYMENT, actor="test",
        psp_id=f"inv-{order_id}", pay_url="https://psp.example/pay/1",
    )  # fmt: skip
    pay(api.repo, order_id, OrderStatus.AWAITING_PAYMENT, WebhookHook(Outbox(None)))
    with SyncOutbox(api.pool) as outbox:
        claimed = dict(outbox.claim(100, timedelta(minutes=1)))
    with api.pool.connection() as conn:
        query = "SELECT id FROM billing_outbox WHERE order_id = %s"
        written = conn.execute(query, (order_id,)).fetchone()
    assert written is not None
    event_id = written["id"]

    async def attempt() -> str:
        pool = await open_async_pool(api.pool.conninfo, max_size=1, name="tests-delivery")
        delivery = Delivery(pool, timeout=10)
        try:
            return await delivery.deliver(event_id, claimed[event_id])
        finally:
            await delivery.aclose()
            await pool.close()

    outcome = asyncio.run(attempt())
    with api.pool.connection() as conn:
        found = conn.execute("SELECT * FROM billing_outbox WHERE id = %s", (event_id,)).fetchone()
    assert found is not None
    return outcome, found


def test_paydispatch_delivers_a_paid_event_to_a_php_endpoint_through_a_secret_rotation(
    php: str, api: Api, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    site, _ = api.new_key()
    seen = tmp_path / "seen"
    sites = SyncSiteWebhooks(api.pool)
    request.addfinalizer(sites.close)
    _, first = sites.set(site, "http://127.0.0.1:9/not-yet")  # its first secret, shown once
    assert first is not None
    rotated = sites.rotate(site)
    assert rotated is not None
    second = rotated[1]
    # Given a site whose endpoint still holds only the secret from before the rotation,
    with php_endpoint(php, [first], seen) as url:
        sites.set(site, url)
        # when paydispatch delivers a paid order's event, signed with both secrets,
        outcome, row = deliver_once(api, site)
        # then the PHP endpoint verified it and took its id.
        assert (outcome, row["status"], row["last_status"]) == ("delivered", "delivered", 200)
        assert seen.read_text().split() == [str(row["id"])]
    # An endpoint that switched to the new secret accepts the next event too,
    with php_endpoint(php, [second], seen) as url:
        sites.set(site, url)
        outcome, _ = deliver_once(api, site)
        assert outcome == "delivered"
    # and one holding a secret paydispatch never had refuses it: the event waits for a retry.
    with php_endpoint(php, ["whsec_not_this_sites"], seen) as url:
        sites.set(site, url)
        outcome, row = deliver_once(api, site)
        assert (outcome, row["status"], row["last_status"]) == ("retry", "pending", 400)
    assert len(seen.read_text().split()) == 2


# -- the package: composer.json, syntax, Composer installs ------------------------------------


def test_composer_json_declares_a_dependency_free_psr4_package() -> None:
    manifest = json.loads((PHP_CLIENT / "composer.json").read_text())
    assert manifest["name"] == "paydispatch/client"
    assert manifest["require"] == {"php": ">=8.1", "ext-curl": "*", "ext-json": "*"}
    assert "require-dev" not in manifest
    assert manifest["autoload"] == {"psr-4": {"Paydispatch\\": "src/"}}
    # PSR-4: every class file declares the namespace its path names, and the class its name.
    sources = sorted((PHP_CLIENT / "src").rglob("*.php"))
    assert sources
    for source in sources:
        relative = source.relative_to(PHP_CLIENT / "src").with_suffix("")
        namespace = "\\".join(("Paydispatch", *relative.parts[:-1]))
        text = source.read_text()
        assert f"namespace {namespace};" in text, source
        assert re.search(
            rf"^(final |abstract )?(class|interface|enum) {relative.name}\b", text, re.M
        )


def test_every_php_file_of_the_client_parses(php: str) -> None:
    files = sorted(PHP_CLIENT.rglob("*.php"))
    for path in files:
        linted = subprocess.run([php, "-l", str(path)], capture_output=True, text=True, check=False)
        assert linted.returncode == 0, linted.stdout + linted.stderr


def composer_install(
    tmp_path: Path, repository: dict[str, Any], version: str, *, git: bool = False
) -> Path:
    """A new project requiring the client from ``repository`` only (Packagist off), installed
    with every HTTP request sent to a dead proxy. Composer's network switch is on too unless
    the repository is ``git``: it also forbids Composer's clone of a local git repository."""
    if COMPOSER is None:
        pytest.skip("no composer: install Debian's `apt-get install composer` (.ci/run does)")
    project = tmp_path / "site"
    project.mkdir()
    manifest = {
        "name": "example/site",
        "require": {"paydispatch/client": version},
        "repositories": [repository, {"packagist.org": False}],
    }
    (project / "composer.json").write_text(json.dumps(manifest, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSER")}
    env |= {
        "COMPOSER_HOME": str(tmp_path / "composer-home"),
        "COMPOSER_CACHE_DIR": str(tmp_path / "composer-cache"),
        "COMPOSER_NO_INTERACTION": "1",
        "COMPOSER_ALLOW_SUPERUSER": "1",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    if not git:
        env["COMPOSER_DISABLE_NETWORK"] = "1"
    done = subprocess.run(
        [COMPOSER, "install", "--no-progress", "--no-ansi"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return project


USE_THE_CLIENT = """<?php
require __DIR__ . '/vendor/autoload.php';
$header = Paydispatch\\Webhook::sign('s3cret', '{"id":"e-7"}', 1700000000);
$event = Paydispatch\\Webhook::verify('{"id":"e-7"}', $header, ['s3cret'], 300, 1700000000);
$client = new Paydispatch\\Client('http://127.0.0.1:9', 'pd_key');
echo $event['id'], ' ', $client::class, ' ', Paydispatch\\OrderStatus::from('paid')->name, "\\n";
"""


def check_installed(php: str, project: Path) -> None:
    (project / "use.php").write_text(USE_THE_CLIENT)
    used = subprocess.run(
        [php, str(project / "use.php")], capture_output=True, text=True, check=False
    )
    assert (used.returncode, used.stdout) == (0, "e-7 Paydispatch\\Client Paid\n"), used.stderr


def test_composer_installs_the_client_offline_from_a_path_repository(
    php: str, tmp_path: Path
) -> None:
    repository = {"type": "path", "url": str(PHP_CLIENT), "options": {"symlink": False}}
    project = composer_install(tmp_path, repository, "*@dev")
    assert (project / "vendor" / "paydispatch" / "client" / "src" / "Client.php").is_file()
    check_installed(php, project)


def test_composer_installs_the_client_offline_from_a_vcs_repository(
    php: str, tmp_path: Path
) -> None:
    """A repository whose root is clients/php, as ``git subtree split`` makes it (Composer
    reads composer.json only at a repository's root)."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("no git")
    source = tmp_path / "paydispatch-php"
    shutil.copytree(PHP_CLIENT, source, ignore=shutil.ignore_patterns("vendor", "composer.lock"))
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for argv in (["init", "-q", "-b", "main"], ["add", "."], [*identity, "commit", "-qm", "c"]):
        subprocess.run([git, *argv], cwd=source, check=True, capture_output=True)
    project = composer_install(tmp_path, {"type": "vcs", "url": str(source)}, "dev-main", git=True)
    check_installed(php, project)
