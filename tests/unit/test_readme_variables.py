"""README.md's configuration table names every ``PAYDISPATCH_*`` variable the code reads, and
none that it does not (issue #16).

What the code reads is found two ways: every ``"PAYDISPATCH_..."`` string in the source of
``orders/``, ``adapters/`` and ``dispatcher/`` (names in messages included, since a message that
names a variable tells the operator to set it), and every key ``config.load`` looks up in the
environment it is given, which also enumerates the names it builds in f-strings
(``PAYDISPATCH_API_{key}``). An f-string that builds a name from a prefix is a family; the
table covers one with a row such as ``PAYDISPATCH_<ADAPTER>_<KEY>``. ``<VARIABLE>_FILE``
variants are covered by the sentence above the table.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters import registry
from dispatcher import config

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orders", "adapters", "dispatcher")
PREFIX = "PAYDISPATCH_"
HOLE = "\x00"  # where an f-string puts a value
_NAME = re.compile(rf"{PREFIX}[A-Z0-9_]*")
_PLACEHOLDER = re.compile(r"<([A-Z]+)>")


@dataclass
class Found:
    """Names the code reads, and prefixes it builds names from (with where each was seen)."""

    names: dict[str, str] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)

    def scan(self, text: str, where: str) -> None:
        for match in _NAME.finditer(text):
            token, after = match.group(0), text[match.end() : match.end() + 1]
            if token.endswith("_") or after in {HOLE, "<", "*", "{"}:
                self.families.setdefault(token if token.endswith("_") else token + "_", where)
            else:
                self.names.setdefault(token.removesuffix("_FILE"), where)


def _strings(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every string literal with its line; an f-string as one text with HOLE for each value."""
    inside_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inside_fstrings.add(id(value))
                is_text = isinstance(value, ast.Constant) and isinstance(value.value, str)
                parts.append(value.value if is_text else HOLE)  # type: ignore[union-attr]
            yield "".join(parts), node.lineno
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in inside_fstrings
        ):
            yield node.value, node.lineno


def source_variables() -> Found:
    found = Found()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for text, line in _strings(tree):
                found.scan(text, f"{path.relative_to(ROOT)}:{line}")
    return found


class _Recording(Mapping[str, str]):
    """An empty environment that remembers every key asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def config_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> set[str]:
    """Every variable ``config.load`` looks up (no config file, so nothing else decides)."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    environ = _Recording()
    config.load(environ)
    return {name.removesuffix("_FILE") for name in environ.asked if name.startswith(PREFIX)}


def readme_rows() -> list[str]:
    """The variable names (with placeholders) in README.md's "## Configuration" table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            names += re.findall(rf"`({PREFIX}[A-Z0-9_<>]*)`", first_cell)
    return names


def _pattern(row: str, adapters: list[str]) -> re.Pattern[str]:
    """A row as a regular expression: ``<ADAPTER>`` is an installed adapter's name."""
    parts = []
    for i, piece in enumerate(_PLACEHOLDER.split(row)):
        if i % 2 == 0:
            parts.append(re.escape(piece))
        elif piece == "ADAPTER":
            parts.append("(?:" + "|".join(re.escape(a.upper()) for a in adapters) + ")")
        else:
            parts.append("[A-Z0-9_]+")
    return re.compile("".join(parts))


def test_readme_configuration_table_lists_every_variable_the_code_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    adapters = sorted(registry.available())
    found = source_variables()
    from_config = config_variables(monkeypatch, tmp_path)
    code = dict.fromkeys(from_config, "dispatcher/config.py (config.load)") | found.names
    rows = readme_rows()
    plain = {row for row in rows if "<" not in row}
    patterns = {row: _pattern(row, adapters) for row in rows if "<" in row}

    def covered(name: str) -> bool:
        return name in plain or any(p.fullmatch(name) for p in patterns.values())

    def family_covered(prefix: str) -> bool:
        adapter = prefix.removeprefix(PREFIX).removesuffix("_").lower()
        if adapter in adapters or adapter == "":
            return covered(f"{PREFIX}{(adapter or adapters[0]).upper()}_API_URL")
        row_for_it = any(row.startswith(prefix + "<") for row in patterns)
        return row_for_it or any(name.startswith(prefix) for name in from_config)

    missing = sorted(f"{name} ({where})" for name, where in code.items() if not covered(name))
    families = sorted(
        f"{prefix}... ({where})"
        for prefix, where in found.families.items()
        if not family_covered(prefix)
    )
    unread = sorted(plain - set(code))
    unused_rows = sorted(
        row
        for row, pattern in patterns.items()
        if not any(pattern.fullmatch(name) for name in code)
    )
    assert not missing, f"README's configuration table lacks: {', '.join(missing)}"
    assert not families, f"README's table has no row for names built from: {families}"
    assert not unread, f"README's configuration table names variables no code reads: {unread}"
    assert not unused_rows, (
        f"README's table rows that match no variable the code reads: {unused_rows}"
    )


def test_the_scan_sees_names_in_plain_strings_fstrings_and_messages() -> None:
    found = Found()
    tree = ast.parse(
        'a = "PAYDISPATCH_HOME"\n'
        'b = f"PAYDISPATCH_BILLING_{key.upper()}"\n'
        'c = f"{text}; check PAYDISPATCH_STRIPE_SECRET_KEY"\n'
        'd = "set PAYDISPATCH_YOOKASSA_SECRET_KEY_FILE"\n'
        'e = "``PAYDISPATCH_<ADAPTER>_<KEY>``"\n'
    )
    for text, line in _strings(tree):
        found.scan(text, str(line))

    assert set(found.names) == {
        "PAYDISPATCH_HOME",
        "PAYDISPATCH_STRIPE_SECRET_KEY",
        "PAYDISPATCH_YOOKASSA_SECRET_KEY",
    }
    assert set(found.families) == {"PAYDISPATCH_BILLING_", "PAYDISPATCH_"}
