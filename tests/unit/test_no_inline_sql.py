"""Every statement lives in a named query (``orders/db/sql/*.sql``), never in a Python string.

The test reads the sources of ``orders/`` and ``dispatcher/`` for string literals handed to
``execute`` and for literals that start like a statement, and names each one by file and line.
Statements built around identifiers are named templates too, filled by ``psycopg.sql``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orders", "dispatcher")

KEYWORDS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH ", "LOCK ", "CREATE ", "ALTER ")


def _literal_text(node: ast.expr) -> str | None:
    """The text of a string literal or an f-string's literal parts; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    return None


def _looks_like_sql(text: str) -> bool:
    return text.lstrip().startswith(KEYWORDS)  # statements are written in capitals here


def inline_sql(path: Path) -> list[int]:
    """Lines of ``path`` with SQL in a string literal: passed to ``execute``/``SQL``, or a literal
    that reads like a statement (docstrings left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            text = _literal_text(node.args[0]) if node.args else None
            if text is not None and (
                (name in {"execute", "executemany"} and text.strip())
                or (name == "SQL" and _looks_like_sql(text))
            ):
                found.add(node.lineno)
        text = _literal_text(node) if isinstance(node, ast.expr) else None
        if text is not None and id(node) not in docstrings and _looks_like_sql(text):
            found.add(node.lineno)
    return sorted(found)


def _sources() -> dict[str, list[int]]:
    return {
        str(path.relative_to(ROOT)): lines
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (lines := inline_sql(path))
    }


def test_no_statement_is_written_inline_outside_the_named_queries() -> None:
    offenders = [f"{file}:{line}" for file, lines in _sources().items() for line in lines]
    assert not offenders, (
        "SQL in Python strings; move it into a named query in orders/db/sql/*.sql and call "
        "orders.db.query(name):\n" + "\n".join(offenders)
    )


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""SELECT in a docstring is prose."""\n'
        'conn.execute("SELECT 1")\n'
        'conn.execute(f"UPDATE orders SET x = {x}")\n'
        'SQL_TEXT = """\n  DELETE FROM orders\n"""\n'
        'conn.execute(query("get_order"))\n'
        'label = "selected"\n'
        'cols = sql.SQL(", ").join(names)\n'
        'conn.execute(sql.SQL(query("archive_copy")).format(into=x))\n'
        'conn.execute(sql.SQL("DELETE FROM {t}").format(t=x))\n',
        encoding="utf-8",
    )
    assert inline_sql(sample) == [2, 3, 4, 11]
