"""docs/design.md is held to the code: its state table is ``orders.status.TRANSITIONS``, and
every file and test it cites exists.

The page describes the design as built; a commit that changes a transition, or moves or renames
a file or test the page names, fails here until the page says the same (issue #13, item 8).
"""

from __future__ import annotations

import re
from pathlib import Path

from orders.status import TRANSITIONS, OrderStatus

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
START, END = "<!-- state-table:start -->", "<!-- state-table:end -->"
FINAL = "— (final)"
_CODE = re.compile(r"`([^`\n]+)`")
_FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# A path the page cites: under one of the repository's top-level folders, or schema.sql; a
# test may follow as ``::name``.
_CITED = re.compile(
    r"^(?P<path>(?:orders|adapters|dispatcher|tests|docs|deploy|bench|systemd|clients)/"
    r"[\w./-]*|schema\.sql)(?:::(?P<test>\w+))?$"
)


def state_table(text: str) -> dict[str, set[str]]:
    """The table between the markers: each row's status and the statuses it may move to."""
    start, end = text.index(START), text.index(END)
    rows = [line for line in text[start + len(START) : end].splitlines() if line.startswith("|")]
    table: dict[str, set[str]] = {}
    for row in rows[2:]:  # after the header and its separator
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        (status,) = _CODE.findall(cells[0])
        assert status not in table, f"docs/design.md: {status} has two rows in the state table"
        targets = cells[-1]
        table[status] = set() if targets == FINAL else set(_CODE.findall(targets))
    return table


def expected_cell(status: OrderStatus) -> str:
    """The last column of ``status``'s row as the code has it (statuses in declaration order)."""
    order = list(OrderStatus)
    targets = sorted(TRANSITIONS[status], key=order.index)
    return ", ".join(f"`{target}`" for target in targets) or FINAL


def cited(text: str) -> set[tuple[str, str | None]]:
    """Every (path, test name or None) the page names in backquotes."""
    found = set()
    for code in _CODE.findall(_FENCED.sub("", text)):
        match = _CITED.match(code)
        if match is not None:
            found.add((match["path"], match["test"]))
    return found


def test_the_state_table_in_the_design_doc_is_the_code_s_transitions() -> None:
    table = state_table(DESIGN.read_text(encoding="utf-8"))
    expected = {str(status): {str(t) for t in TRANSITIONS[status]} for status in OrderStatus}
    wrong = sorted(
        status
        for status in expected.keys() | table.keys()
        if table.get(status) != expected.get(status)
    )
    fixes = "\n".join(
        f"| `{status}` | ... | {expected_cell(OrderStatus(status))} |"
        if status in expected
        else f"remove the row of `{status}`: no such status"
        for status in wrong
    )
    assert not wrong, f"docs/design.md's state table differs from orders/status.py:\n{fixes}"


def test_the_state_table_lists_the_statuses_in_their_declared_order() -> None:
    table = state_table(DESIGN.read_text(encoding="utf-8"))
    assert list(table) == [str(status) for status in OrderStatus]


def test_the_state_table_parser_reads_moves_and_final_rows() -> None:
    # Given a table in the page's format, with a moving row and a final row
    text = "\n".join(
        [
            START,
            "| status | meaning | may move to |",
            "|---|---|---|",
            "| `new` | saved, `not` a target | `submitting`, `cancelled` |",
            f"| `paid` | done | {FINAL} |",
            END,
        ]
    )
    # Then only the last column's statuses are its moves
    assert state_table(text) == {"new": {"submitting", "cancelled"}, "paid": set()}


def test_every_file_and_test_the_design_doc_cites_exists() -> None:
    missing = []
    citations = cited(DESIGN.read_text(encoding="utf-8"))
    for path, test in sorted(citations, key=lambda c: (c[0], c[1] or "")):
        target = ROOT / path
        if not target.exists():
            missing.append(f"{path}: no such file or folder")
        elif test is not None and not re.search(
            rf"^(async )?def {test}\(", target.read_text(encoding="utf-8"), re.MULTILINE
        ):
            missing.append(f"{path}::{test}: no such test")
    assert citations, "docs/design.md cites no file: the pattern no longer matches the page"
    assert not missing, "docs/design.md cites what is not there:\n" + "\n".join(missing)
