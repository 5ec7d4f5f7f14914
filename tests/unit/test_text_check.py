"""orders.model.check_text: the one check of the text paydispatch keeps (orders, wallets, refs)."""

from __future__ import annotations

import re

import pytest

from orders.errors import FieldTooLong, InvalidInput
from orders.model import check_text, storable_problem, text_problem
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
