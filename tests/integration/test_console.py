"""The operators' console over real PostgreSQL, served by uvicorn: logging in, every action
(search, order history, resolve, replay), and every refusal (credentials, sessions, CSRF)."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from adapters.sandbox.runner import serve_in_thread
from dispatcher import config
from dispatcher.api import console as console_module
from dispatcher.api import operators as operators_module
from dispatcher.api.app import create_app
from dispatcher.api.console_store import ConsoleStore
from dispatcher.api.context import ApiContext
from dispatcher.api.operators import Operators, check_password, hash_password
from dispatcher.billing.hooks import build
from dispatcher.config import BillingSettings
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool
from orders.errors import InvalidInput, TransientError
from orders.repository import OrderRepository
from tests.billing_support import balances
from tests.conftest import cli
from tests.integration.test_api import api_runtimes

S = OrderStatus
CSRF = re.compile(r'name=csrf value="([^"]+)"')


@dataclass
class Console:
    url: str
    ctx: ApiContext

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, follow_redirects=False)


@contextmanager
def running_console(pool: Pool, *, console: bool = True) -> Iterator[Console]:
    """The real app with the wallet hook, as ``paydispatch api`` builds it."""
    runtimes = api_runtimes()
    with OrderRepository(
        pool, {n: rt.adapter.capabilities.default_expiry for n, rt in runtimes.items()}
    ) as repo:
        ctx = ApiContext(
            repo=repo, runtimes=runtimes, paid_hook=build(BillingSettings()), console=console
        )
        with serve_in_thread(create_app(ctx)) as url:
            ctx.public_url = url
            yield Console(url, ctx)


@pytest.fixture(scope="module")
def console(pool: Pool) -> Iterator[Console]:
    with running_console(pool) as running:
        yield running


@pytest.fixture
def operator(pool: Pool) -> tuple[str, str]:
    """A new operator of this test: (name, password)."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    return name, Operators(pool).add(name)


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match is not None, page.text
    return match.group(1)


def log_in(client: httpx.Client, name: str, password: str) -> httpx.Response:
    form = client.get("/console/login")
    assert form.status_code == 200
    return client.post(
        "/console/login", data={"csrf": csrf_of(form), "name": name, "password": password}
    )


@pytest.fixture
def browser(console: Console, operator: tuple[str, str]) -> Iterator[httpx.Client]:
    """A client logged in as ``operator``."""
    with console.client() as client:
        answer = log_in(client, *operator)
        assert answer.status_code == 303, answer.text
        yield client


def session_csrf(client: httpx.Client) -> str:
    return csrf_of(client.get("/console/"))


def make(repo: OrderRepository, site: str, **kw: Any) -> UUID:
    new = NewOrder(site=site, user_id="u1", money=Money(1234, "USD"), adapter="sandbox", **kw)
    return repo.create(new).order.id


def to_review(repo: OrderRepository, order_id: UUID, psp_id: str | None = None) -> None:
    repo.transition(order_id, S.NEW, S.SUBMITTING, actor="t")
    repo.transition(
        order_id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t", psp_id=psp_id or f"p-{order_id}"
    )
    repo.transition(
        order_id, S.AWAITING_PAYMENT, S.NEEDS_REVIEW, actor="t", detail={"reason": "mismatch"}
    )


def park_webhook(pool: Pool, order_id: UUID) -> UUID:
    """A billing webhook event of ``order_id`` that ran out of attempts."""
    event_id = uuid.uuid4()
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO billing_outbox (id, order_id, event_type, url, body, status, attempts,"
            " give_up_at, parked_at, last_status, last_error) VALUES (%s, %s, 'order.paid',"
            " 'http://127.0.0.1:9/hook', '{}', 'parked', 7, now() - interval '1 hour', now(),"
            " 500, 'HTTP 500')",
            (event_id, order_id),
        )
    return event_id


def actions_of(pool: Pool, order_id: UUID) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT operator, action, target, reason, detail FROM operator_actions"
            " WHERE order_id = %s ORDER BY id",
            (order_id,),
        ).fetchall()
    return [dict(row) for row in rows]


# -- credentials and sessions ---------------------------------------------------------------


def test_login_opens_the_dashboard_with_counts_needs_review_and_parked_webhooks(
    console: Console, browser: httpx.Client, repo: OrderRepository, site: str, pool: Pool
) -> None:
    # Given an order in review with a parked webhook event,
    order_id = make(repo, site)
    to_review(repo, order_id)
    event_id = park_webhook(pool, order_id)
    # when the logged-in operator opens the dashboard,
    page = browser.get("/console/")
    # then it shows the counts per adapter and status, the review count and the parked event.
    assert page.status_code == 200
    counts = repo.status_counts()
    review = sum(n for (_, s), n in counts.items() if s is S.NEEDS_REVIEW)
    assert re.search(rf"id=needs-review [^>]*>{review}</a>", page.text)
    assert 'href="/console/orders?adapter=sandbox&amp;status=needs_review"' in page.text
    assert f'action="/console/webhooks/{event_id}/replay"' in page.text
    assert str(order_id) in page.text


def test_wrong_password_and_unknown_name_answer_the_same_401(
    console: Console, operator: tuple[str, str]
) -> None:
    name, password = operator
    answers = []
    with console.client() as client:
        for who, secret in ((name, "not-the-password"), ("nobody-here", password), ("", "")):
            answer = log_in(client, who, secret)
            answers.append((answer.status_code, answer.text.count("The name or the password")))
            assert "pd_console=" not in answer.headers.get("set-cookie", "")
        # and no page opens without a session.
        assert client.get("/console/").status_code == 401
    assert answers == [(401, 1)] * 3


def test_pages_and_actions_without_a_session_answer_401_with_the_login_form(
    console: Console, repo: OrderRepository, site: str
) -> None:
    order_id = make(repo, site)
    to_review(repo, order_id)
    with console.client() as client:
        for path in ("/console/", f"/console/orders/{order_id}", "/console/search?q=1"):
            answer = client.get(path)
            assert answer.status_code == 401
            assert "id=login-form" in answer.text
        answer = client.post(
            f"/console/orders/{order_id}/resolve",
            data={"csrf": "x", "to": "paid", "reason": "r", "evidence": "e"},
        )
        assert answer.status_code == 401
        # A made-up session cookie is no session either.
        client.cookies.set("pd_console", "forged-token", path="/console")
        assert client.get("/console/").status_code == 401
    assert repo.get(order_id).status is S.NEEDS_REVIEW


def test_a_login_without_its_double_submit_token_is_refused(
    console: Console, operator: tuple[str, str]
) -> None:
    name, password = operator
    with console.client() as client:
        # No token from the login form (a cross-site form posting the right password):
        answer = client.post("/console/login", data={"name": name, "password": password})
        assert answer.status_code == 403
        # A token in the form that is not the one in the cookie:
        client.get("/console/login")
        answer = client.post(
            "/console/login", data={"csrf": "guessed", "name": name, "password": password}
        )
        assert answer.status_code == 403
        assert client.get("/console/").status_code == 401


def test_a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    browser: httpx.Client, repo: OrderRepository, site: str, pool: Pool
) -> None:
    order_id = make(repo, site)
    to_review(repo, order_id)
    event_id = park_webhook(pool, order_id)
    form = {"to": "paid", "reason": "r", "evidence": "e"}
    for csrf in (None, "", "another-sessions-token"):
        data = form if csrf is None else {**form, "csrf": csrf}
        answer = browser.post(f"/console/orders/{order_id}/resolve", data=data)
        assert answer.status_code == 403
        answer = browser.post(f"/console/webhooks/{event_id}/replay", data=data)
        assert answer.status_code == 403
        assert browser.post("/console/logout", data=data).status_code == 403
    assert repo.get(order_id).status is S.NEEDS_REVIEW
    assert actions_of(pool, order_id) == []
    assert browser.get("/console/").status_code == 200  # still logged in


def test_logout_ends_the_session(browser: httpx.Client) -> None:
    cookie = browser.cookies.get("pd_console", path="/console")
    assert cookie
    answer = browser.post("/console/logout", data={"csrf": session_csrf(browser)})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"
    # Even a copy of the old cookie no longer opens anything.
    browser.cookies.set("pd_console", cookie, path="/console")
    assert browser.get("/console/").status_code == 401


def test_a_login_ends_the_session_the_browser_held_before(
    console: Console, pool: Pool, operator: tuple[str, str]
) -> None:
    """A shared browser: whoever logs in next does not leave the previous session alive."""
    name, password = operator
    other = f"op-{uuid.uuid4().hex[:8]}"
    other_password = Operators(pool).add(other)
    with console.client() as client:
        assert log_in(client, name, password).status_code == 303
        earlier = client.cookies.get("pd_console", path="/console")
        assert earlier
        assert log_in(client, other, other_password).status_code == 303
        assert client.get("/console/").status_code == 200
        assert client.cookies.get("pd_console", path="/console") != earlier
    # A copy of the earlier cookie opens nothing any more.
    with console.client() as copy:
        copy.cookies.set("pd_console", earlier, path="/console")
        assert copy.get("/console/").status_code == 401


def test_disabling_or_resetting_an_operator_ends_their_sessions(
    console: Console, pool: Pool, operator: tuple[str, str]
) -> None:
    name, password = operator
    operators = Operators(pool)
    with console.client() as client:
        assert log_in(client, name, password).status_code == 303
        new_password = operators.reset(name)
        assert client.get("/console/").status_code == 401
        assert log_in(client, name, password).status_code == 401
        assert log_in(client, name, new_password).status_code == 303
        assert operators.disable(name)
        assert client.get("/console/").status_code == 401
        assert log_in(client, name, new_password).status_code == 401


def test_pages_are_not_cached_framed_or_scripted_and_the_cookie_is_strict(
    console: Console, operator: tuple[str, str]
) -> None:
    with console.client() as client:
        answer = log_in(client, *operator)
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/console" in cookie
        assert "secure" not in cookie  # the public URL is http here
        page = client.get("/console/")
    headers = page.headers
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "form-action 'self'" in csp
    assert "script-src" not in csp  # so default-src 'none' forbids every script
    assert "<script" not in page.text


def test_the_session_cookie_is_secure_behind_an_https_public_url(
    pool: Pool, operator: tuple[str, str]
) -> None:
    with running_console(pool) as running:
        running.ctx.public_url = "https://pay.example.org"
        with running.client() as client:
            form = client.get("/console/login")
            assert "secure" in form.headers["set-cookie"].lower()
            # (httpx keeps a Secure cookie away from http://, as a browser would.)
            token = csrf_of(form)
            answer = client.post(
                "/console/login",
                data={"csrf": token, "name": operator[0], "password": operator[1]},
                headers={"Cookie": f"pd_console_login={token}"},
            )
            assert answer.status_code == 303
            assert "secure" in answer.headers["set-cookie"].lower()


def test_the_console_can_be_turned_off(pool: Pool) -> None:
    assert config.load({"PAYDISPATCH_CONSOLE": "off"}).console is False
    assert config.load({}).console is True
    with running_console(pool, console=False) as running, running.client() as client:
        assert client.get("/console/login").status_code == 404
        assert client.get("/console/").status_code == 404


# -- reading ---------------------------------------------------------------------------------


def test_search_finds_an_order_by_id_number_payment_system_id_and_site_reference(
    browser: httpx.Client, repo: OrderRepository, site: str
) -> None:
    order_id = make(repo, site, site_ref="invoice-77")
    to_review(repo, order_id, psp_id=f"psp-{order_id.hex[:10]}")
    order = repo.get(order_id)
    place = f"/console/orders/{order_id}"
    for params in (
        {"q": str(order_id)},
        {"q": str(order.number)},
        {"q": f"psp-{order_id.hex[:10]}"},
        {"q": "invoice-77", "site": site},
    ):
        answer = browser.get("/console/search", params=params)
        assert (answer.status_code, answer.headers.get("location")) == (303, place), params
    # A site reference is the site's own: another site's search finds nothing.
    answer = browser.get("/console/search", params={"q": "invoice-77", "site": "other-site"})
    assert answer.status_code == 200
    assert "No order matches" in answer.text


def test_order_page_shows_details_and_the_whole_history(
    browser: httpx.Client, repo: OrderRepository, site: str
) -> None:
    order_id = make(repo, site, site_ref="<b>ref</b>")
    to_review(repo, order_id)
    page = browser.get(f"/console/orders/{order_id}")
    assert page.status_code == 200
    rows = re.findall(r"<tr><td>[^<]+</td><td>([^<]+)</td><td>([^<]+)</td>", page.text)
    assert rows == [
        ("-", "new"),
        ("new", "submitting"),
        ("submitting", "awaiting_payment"),
        ("awaiting_payment", "needs_review"),
    ]
    assert "&quot;mismatch&quot;" in page.text
    assert "&lt;b&gt;ref&lt;/b&gt;" in page.text  # site text is escaped, never markup
    assert "<b>ref</b>" not in page.text
    assert "id=resolve-form" in page.text
    assert browser.get(f"/console/orders/{uuid.uuid4()}").status_code == 404
    assert browser.get("/console/orders/not-an-id").status_code == 404


def test_order_list_filters_by_status_and_site(
    browser: httpx.Client, repo: OrderRepository, site: str
) -> None:
    review = make(repo, site)
    to_review(repo, review)
    other = make(repo, site)
    page = browser.get("/console/orders", params={"status": "needs_review", "site": site})
    assert page.status_code == 200
    assert str(review) in page.text
    assert str(other) not in page.text
    assert browser.get("/console/orders", params={"status": "bogus"}).status_code == 400


def test_a_nul_in_a_filter_or_site_reference_is_an_html_answer_not_the_apis_json_error(
    browser: httpx.Client,
) -> None:
    """PostgreSQL refuses NUL in text; the console must say so as a page, not as JSON."""
    for params in ({"adapter": "\x00"}, {"site": "a\x00"}):
        page = browser.get("/console/orders", params=params)
        assert page.status_code == 400
        assert page.headers["content-type"].startswith("text/html")
    page = browser.get("/console/search", params={"q": "ref-1", "site": "a\x00"})
    assert page.status_code == 200
    assert "id=message" in page.text  # no order matches


@pytest.mark.parametrize("text", ["ref\ud800", "\udfff"])
def test_a_lone_surrogate_in_a_search_finds_nothing_instead_of_failing_the_query(
    repo: OrderRepository, site: str, text: str
) -> None:
    """Not UTF-8, so PostgreSQL cannot be sent it: the search answers as for a NUL."""
    store = ConsoleStore(repo)
    assert store.search(text, site=site, adapters=["sandbox"]) == []
    assert store.search("ref-1", site=f"a{text}", adapters=["sandbox"]) == []


@pytest.mark.parametrize("field", ["reason", "evidence"])
def test_a_resolve_whose_reason_or_evidence_the_database_cannot_hold_is_invalid_input(
    repo: OrderRepository, site: str, pool: Pool, field: str
) -> None:
    order_id = make(repo, site)
    to_review(repo, order_id)
    text = {"reason": "checked", "evidence": "line 1\nline 2"}  # line breaks are kept
    with pytest.raises(InvalidInput, match=f"^{field}: must be valid Unicode text"):
        ConsoleStore(repo).resolve(
            None, order_id, "paid", by="carol", **(text | {field: "stmt \ud800"})
        )
    assert repo.get(order_id).status is S.NEEDS_REVIEW
    assert actions_of(pool, order_id) == []


def test_a_resolve_keeps_the_line_breaks_of_its_evidence(
    repo: OrderRepository, site: str, pool: Pool
) -> None:
    """Reason and evidence are typed in text areas: a line break is text, not an injection."""
    order_id = make(repo, site)
    to_review(repo, order_id)
    ConsoleStore(repo).resolve(
        None, order_id, "rejected", by="carol", reason="no money\r\narrived",
        evidence=" stmt line 1\nstmt line 2 ",
    )  # fmt: skip
    assert repo.get(order_id).status is S.REJECTED
    [action] = actions_of(pool, order_id)
    assert action["reason"] == "no money\r\narrived"
    assert action["detail"]["evidence"] == "stmt line 1\nstmt line 2"  # stripped, as before


def test_a_database_outage_is_a_503_page_even_while_finding_the_session(
    browser: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise TransientError("the database is unreachable")

    # The database fails in the page itself,
    monkeypatch.setattr(ConsoleStore, "overview", unreachable)
    page = browser.get("/console/")
    assert (page.status_code, page.headers["content-type"][:9]) == (503, "text/html")
    # or while the session is looked up, before the page runs.
    monkeypatch.setattr(Operators, "session", unreachable)
    for answer in (browser.get("/console/"), browser.post("/console/logout", data={})):
        assert (answer.status_code, answer.headers["content-type"][:9]) == (503, "text/html")
        assert "cannot be reached" in answer.text


# -- acting ----------------------------------------------------------------------------------


def test_resolve_to_paid_records_who_why_and_evidence_as_orders_resolve_does_and_credits(
    browser: httpx.Client, repo: OrderRepository, site: str, pool: Pool, operator: tuple[str, str]
) -> None:
    name = operator[0]
    order_id = make(repo, site)
    to_review(repo, order_id)
    # When the operator resolves the order to paid with a reason and the evidence,
    answer = browser.post(
        f"/console/orders/{order_id}/resolve",
        data={
            "csrf": session_csrf(browser),
            "to": "paid",
            "reason": "bank statement shows the full amount",
            "evidence": "stmt-2026-11-21 line 4",
        },
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/console/orders/{order_id}?done=resolved"
    # then the order is paid, with the event `orders resolve` writes,
    assert repo.get(order_id).status is S.PAID
    event = repo.events(order_id)[-1]
    assert (event.from_status, event.to_status, event.actor) == (
        S.NEEDS_REVIEW,
        S.PAID,
        f"ops:{name}",
    )
    assert event.detail["resolved_by"] == name
    assert event.detail["reason"] == "bank statement shows the full amount"
    assert event.detail["evidence"] == "stmt-2026-11-21 line 4"
    # the console's own record says the same,
    [action] = actions_of(pool, order_id)
    assert (action["operator"], action["action"], action["reason"]) == (
        name, "resolve", "bank statement shows the full amount",
    )  # fmt: skip
    # the wallet is credited like any other payment,
    assert [b.money for b in balances(pool, site, "u1")] == [Money(1234, "USD")]
    # and the order page shows it.
    page = browser.get(answer.headers["location"])
    assert "The order was resolved." in page.text
    assert f"ops:{name}" in page.text
    assert "id=resolve-form" not in page.text


def test_a_resolve_whose_console_record_fails_is_not_made_at_all(
    browser: httpx.Client,
    repo: OrderRepository,
    site: str,
    pool: Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an order in review, and a console record that cannot be written,
    order_id = make(repo, site)
    to_review(repo, order_id)
    written = ConsoleStore._arecord  # a resolve's record, in the paid transaction

    async def failing(tx: Any, by: str, action: str, **kw: Any) -> None:
        await written(tx, by, action, **kw)
        if action == "resolve":
            raise TransientError("the database went away after the record")

    monkeypatch.setattr(ConsoleStore, "_arecord", staticmethod(failing))
    # when the operator resolves it to paid,
    answer = browser.post(
        f"/console/orders/{order_id}/resolve",
        data={"csrf": session_csrf(browser), "to": "paid", "reason": "r", "evidence": "e"},
    )
    # then nothing of it stands: not the move, not the credit, not the record.
    assert answer.status_code >= 400
    assert repo.get(order_id).status is S.NEEDS_REVIEW
    assert balances(pool, site, "u1") == []
    assert actions_of(pool, order_id) == []


def test_resolve_to_rejected_credits_nothing(
    browser: httpx.Client, repo: OrderRepository, site: str, pool: Pool
) -> None:
    order_id = make(repo, site)
    to_review(repo, order_id)
    answer = browser.post(
        f"/console/orders/{order_id}/resolve",
        data={"csrf": session_csrf(browser), "to": "rejected", "reason": "no money arrived",
              "evidence": "PSP dashboard: payment cancelled"},
    )  # fmt: skip
    assert answer.status_code == 303
    assert repo.get(order_id).status is S.REJECTED
    assert balances(pool, site, "u1") == []


@pytest.mark.parametrize(
    "form",
    [
        {"to": "paid", "reason": "", "evidence": "e"},
        {"to": "paid", "reason": "r", "evidence": "   "},
        {"to": "paid", "reason": "r"},
        {"to": "expired", "reason": "r", "evidence": "e"},
        {"to": "paid", "reason": "r" * 1001, "evidence": "e"},
    ],
)
def test_resolve_needs_a_target_a_reason_and_evidence(
    browser: httpx.Client, repo: OrderRepository, site: str, pool: Pool, form: dict[str, str]
) -> None:
    order_id = make(repo, site)
    to_review(repo, order_id)
    answer = browser.post(
        f"/console/orders/{order_id}/resolve", data={"csrf": session_csrf(browser), **form}
    )
    assert answer.status_code == 400
    assert "Not resolved" in answer.text
    assert repo.get(order_id).status is S.NEEDS_REVIEW
    assert actions_of(pool, order_id) == []


def test_resolve_of_an_order_not_in_review_is_refused(
    browser: httpx.Client, repo: OrderRepository, site: str, pool: Pool
) -> None:
    order_id = make(repo, site)
    answer = browser.post(
        f"/console/orders/{order_id}/resolve",
        data={"csrf": session_csrf(browser), "to": "paid", "reason": "r", "evidence": "e"},
    )
    assert answer.status_code == 409
    assert repo.get(order_id).status is S.NEW
    assert actions_of(pool, order_id) == []


def test_replay_of_a_parked_webhook_queues_it_and_records_who_and_why(
    browser: httpx.Client, repo: OrderRepository, site: str, pool: Pool, operator: tuple[str, str]
) -> None:
    order_id = make(repo, site)
    event_id = park_webhook(pool, order_id)
    csrf = session_csrf(browser)
    # A replay needs a reason:
    refused = browser.post(f"/console/webhooks/{event_id}/replay", data={"csrf": csrf})
    assert refused.status_code == 400
    # When the operator replays the parked event saying why,
    answer = browser.post(
        f"/console/webhooks/{event_id}/replay",
        data={"csrf": csrf, "reason": "the site fixed its endpoint"},
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/console/orders/{order_id}?done=replayed"
    # then it is due for delivery again with a new window,
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT status, next_attempt_at <= now() AS due, give_up_at > now() + interval"
            " '2 days' AS window FROM billing_outbox WHERE id = %s",
            (event_id,),
        ).fetchone()
    assert row == {"status": "pending", "due": True, "window": True}
    # with who and why recorded, shown on the order's page,
    [action] = actions_of(pool, order_id)
    assert (action["operator"], action["action"], action["target"], action["reason"]) == (
        operator[0], "replay", str(event_id), "the site fixed its endpoint",
    )  # fmt: skip
    page = browser.get(answer.headers["location"])
    assert "the site fixed its endpoint" in page.text
    # and a second replay of the same event (no longer parked) changes nothing.
    again = browser.post(
        f"/console/webhooks/{event_id}/replay", data={"csrf": csrf, "reason": "again"}
    )
    assert again.status_code == 409
    assert len(actions_of(pool, order_id)) == 1


def test_recorded_actions_cannot_be_changed(pool: Pool, repo: OrderRepository, site: str) -> None:
    order_id = make(repo, site)
    event_id = park_webhook(pool, order_id)
    ConsoleStore(repo).replay(event_id, by="carol", reason="why", max_age=timedelta(days=1))
    with pytest.raises(psycopg.errors.InsufficientPrivilege), pool.connection() as conn:
        conn.execute(
            "UPDATE operator_actions SET reason = 'other' WHERE order_id = %s", (order_id,)
        )


# -- accounts --------------------------------------------------------------------------------


def test_operators_add_prints_the_password_once_and_stores_only_a_hash(
    database_url: str, pool: Pool, console: Console
) -> None:
    name = f"op-{uuid.uuid4().hex[:8]}"
    added = cli(database_url, "operators", "add", name)
    assert added.returncode == 0, added.stderr
    password = added.stdout.splitlines()[1]
    assert len(password) >= 24
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT password_hash FROM operators WHERE name = %s", (name,)
        ).fetchone()
    assert row is not None
    assert row["password_hash"].startswith("scrypt$")
    assert password not in row["password_hash"]
    with console.client() as client:
        assert log_in(client, name, password).status_code == 303
    again = cli(database_url, "operators", "add", name)
    assert again.returncode == 2
    assert "exists already" in again.stdout
    listed = cli(database_url, "operators", "list")
    assert name in listed.stdout
    assert password not in listed.stdout
    assert cli(database_url, "operators", "disable", name).returncode == 0
    assert not Operators(pool).disable(name)  # once is enough
    with pytest.raises(InvalidInput):
        Operators(pool).add("bad name!")


def test_a_password_matches_only_its_own_scrypt_hash() -> None:
    stored = hash_password("correct horse")
    assert check_password("correct horse", stored)
    assert not check_password("correct horse ", stored)
    kind, n, r, p, salt, _digest = stored.split("$")
    zeros = base64.b64encode(bytes(32)).decode()
    assert not check_password("correct horse", "$".join([kind, n, r, p, salt, zeros]))
    assert not check_password("correct horse", stored.replace("scrypt$", "bcrypt$", 1))
    assert not check_password("correct horse", "not a hash")
    assert hash_password("correct horse") != stored  # a salt of its own each time


def test_password_checks_beyond_the_concurrency_bound_are_refused_429_without_scrypt(
    console: Console, operator: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check costs scrypt's 16 MiB and ~50 ms in the threads that serve sites and buyers,
    and anyone who loads the login page may ask for one: a flood must not take them all."""
    name, password = operator
    checked: list[str] = []
    monkeypatch.setattr(
        operators_module, "check_password", lambda given, stored: checked.append(given) or False
    )
    # Given every password check slot taken (logins under way),
    for _ in range(console_module.LOGIN_CHECKS):
        assert console_module._checking.acquire(blocking=False)
    try:
        with console.client() as client:
            answer = log_in(client, name, password)
    finally:
        for _ in range(console_module.LOGIN_CHECKS):
            console_module._checking.release()
    # then one more is told to come back, with no password checked and no session opened,
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "1"
    assert "pd_console=" not in answer.headers.get("set-cookie", "")
    assert checked == []
    # and once a slot is free the same login is checked again.
    monkeypatch.undo()
    with console.client() as client:
        assert log_in(client, name, password).status_code == 303
