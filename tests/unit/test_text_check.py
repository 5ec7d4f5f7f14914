"""orders.model.check_text: the one check of the text paydispatch keeps (orders, wallets, refs)."""

from __future__ import annotations

import re

import pytest

from dispatcher.api.keys import ApiKeys
from dispatcher.billing.sites import check_site
from orders.errors import FieldTooLong, InvalidInput
from orders.model import check_text, label_problem, storable_problem, text_problem
from orders.repository import check_ref


def test_text_within_the_limit_passes() -> None:
    check_text("site", "shop", limit=4)
    check_text("description", "", limit=10, required=False)
    check_text("site_ref", None, limit=10, required=False)


def test_required_text_must_be_given_and_not_blank() -> None:
    with pytest.raises(InvalidInput, match=r"^site: is required$"):
        check_text("site", None, limit=64)
    with pytest.raises(InvalidInput, match=r"^site: must not be empty$"):
        check_text("site", "  ", limit=64)


def test_text_must_be_a_string() -> None:
    with pytest.raises(InvalidInput, match=r"^user_id: must be a string, got int$"):
        check_text("user_id", 42, limit=64)


def test_text_past_the_limit_is_field_too_long() -> None:
    with pytest.raises(FieldTooLong, match=r"^site: is 5 characters long; the limit is 4$") as info:
        check_text("site", "shops", limit=4)
    assert info.value.field == "site"


@pytest.mark.parametrize("controls", [False, True])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\x00b", "must not contain NUL characters"),
        ("a\ud800b", "must be valid Unicode text (it holds a lone surrogate)"),
    ],
)
def test_text_the_database_cannot_hold_is_refused_always(
    value: str, message: str, controls: bool
) -> None:
    with pytest.raises(InvalidInput, match=f"^description: {re.escape(message)}$"):
        check_text("description", value, limit=100, controls=controls)


def test_control_characters_are_refused_unless_the_text_is_only_stored() -> None:
    with pytest.raises(InvalidInput, match=r"control characters \(found U\+000A\)"):
        check_text("description", "line\nbreak", limit=100)
    check_text("description", "line\nbreak", limit=100, controls=True)


def test_storable_problem_is_the_part_of_text_problem_the_database_needs() -> None:
    for value in ("plain", "tab\there", "a\x00", "\udfff"):
        if storable_problem(value) is not None:
            assert text_problem(value) == storable_problem(value)
    assert storable_problem("tab\there") is None
    assert text_problem("tab\there") is not None


@pytest.mark.parametrize(
    ("psp_id", "text"), [("inv\x00", ""), ("inv\ud800", ""), (None, "x\x00"), (None, "\udfff")]
)
def test_reference_no_order_can_hold_is_invalid_input(psp_id: str | None, text: str) -> None:
    with pytest.raises(InvalidInput, match="is not text an order can hold"):
        check_ref(psp_id=psp_id, text=text)


def test_reference_with_control_characters_is_still_looked_up() -> None:
    check_ref(psp_id="inv\t1", text="order\n")


def test_a_label_has_no_surrounding_whitespace_and_no_invisible_characters() -> None:
    check_text("site", "Café shop 2", limit=64, label=True)
    for value, message in [
        (" shop", "must not begin or end with whitespace"),
        ("shop\u00a0", "must not begin or end with whitespace"),
        ("sh\u200bop", "must be printable characters only (found U+200B)"),
        ("a\u2028b", "must be printable characters only (found U+2028)"),
        ("a\nb", "must not contain control characters (found U+000A)"),
    ]:
        assert label_problem(value) is not None or text_problem(value) is not None
        with pytest.raises(InvalidInput, match=f"^site: {re.escape(message)}$"):
            check_text("site", value, limit=64, label=True)
    check_text("description", "a\u2028b", limit=64)  # only a label refuses it


@pytest.mark.parametrize(
    "site", ["", "   ", " shop", "shop\t", "sh\u200bop", "a\x00", "a\ud800", "s" * 65]
)
def test_a_site_a_webhook_or_key_is_refused_for_is_invalid_input(site: str) -> None:
    with pytest.raises(InvalidInput, match=r"^site: "):
        check_site(site)


def test_a_site_name_may_hold_inner_spaces_and_any_script() -> None:
    assert check_site("My shop") == "My shop"
    assert check_site("магазин-1") == "магазин-1"
    assert check_site("s" * 64) == "s" * 64


class _NoDatabase:
    """A pool that must not be reached: the key is refused before anything is written."""

    def connection(self) -> None:
        raise AssertionError("the database was reached")


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("d" * 201, "is 201 characters long; the limit is 200"),
        ("ops \x00", "must not contain NUL characters"),
        ("ops \udc80", "must be valid Unicode text (it holds a lone surrogate)"),
    ],
)
def test_a_key_description_the_database_cannot_hold_is_refused_before_the_insert(
    description: str, message: str
) -> None:
    # A NUL or a lone surrogate used to reach the INSERT and fail there (a traceback from
    # `paydispatch keys create`, not its "description: ..." message).
    keys = ApiKeys(_NoDatabase())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=f"^description: {re.escape(message)}$"):
        keys.create("shop", description)
    with pytest.raises(InvalidInput, match=r"^site: must not begin or end with whitespace$"):
        keys.create("shop ", "")
