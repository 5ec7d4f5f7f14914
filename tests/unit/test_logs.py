"""Log redaction: secret keys, registered secrets, card numbers never reach a log line."""

from __future__ import annotations

import pytest

from dispatcher.logs import MASK, Redactor


@pytest.fixture
def redactor() -> Redactor:
    r = Redactor()
    r.add("shop-secret-123456")
    r.add_url_password("postgresql://app:db-pass-987654@db.example/pay")
    return r


def test_values_under_secret_keys_are_masked(redactor: Redactor) -> None:
    event = redactor(None, "info", {"event": "x", "Authorization": "Basic abc", "api_key": "k"})
    assert event == {"event": "x", "Authorization": MASK, "api_key": MASK}


def test_registered_secrets_are_masked_anywhere(redactor: Redactor) -> None:
    event = redactor(
        None,
        "info",
        {
            "event": "call failed: shop-secret-123456 refused",
            "nested": {"url": "postgresql://app:db-pass-987654@db/pay", "password": "pw"},
            "items": ["x shop-secret-123456"],
        },
    )
    assert "shop-secret-123456" not in repr(event)
    assert "db-pass-987654" not in repr(event)
    assert event["nested"]["password"] == MASK


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 declined", "card ****1111 declined"),
        ("pan=5500-0000-0000-0004", "pan=****0004"),
        ("order 1234567890123456 (not luhn)", "order 1234567890123456 (not luhn)"),
        ("amount 1500", "amount 1500"),
    ],
)
def test_card_like_numbers_are_masked(redactor: Redactor, text: str, expected: str) -> None:
    assert redactor.scrub(text) == expected


def test_short_values_are_not_registered_as_secrets() -> None:
    r = Redactor()
    r.add("abc", None, "")
    assert r.secrets == set()
