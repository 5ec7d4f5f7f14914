"""The named queries: every ``orders/db/sql/*.sql`` file in one namespace, each name once."""

from __future__ import annotations

import pytest

from orders.db import load_queries, queries, query


def test_every_sql_file_is_read_into_one_namespace() -> None:
    # The order repository's, billing's and the console's statements all answer to query().
    assert query("write_many").startswith("WITH v AS")
    assert "wallets" in query("ensure_wallet")
    assert "operators" in query("insert_operator")
    assert all(text and not text.startswith("--") for text in queries().values())


def test_a_name_defined_in_two_files_is_an_error_naming_both() -> None:
    files = {
        "a.sql": "-- first --\nSELECT 1\n\n-- shared --\nSELECT 2\n",
        "b.sql": "-- shared --\nSELECT 3\n",
    }
    with pytest.raises(RuntimeError, match=r"'shared' is defined twice: in a\.sql and in b\.sql"):
        load_queries(files)


def test_a_name_defined_twice_in_one_file_is_an_error_too() -> None:
    with pytest.raises(RuntimeError, match=r"'twice' is defined twice: in a\.sql and in a\.sql"):
        load_queries({"a.sql": "-- twice --\nSELECT 1\n-- twice --\nSELECT 2\n"})


def test_comment_lines_are_left_out_and_an_unknown_name_says_where_it_looked() -> None:
    found = load_queries({"x.sql": "-- one --\n-- why it is so\nSELECT 1\n  -- and more\n"})
    assert found == {"one": "SELECT 1"}
    with pytest.raises(KeyError, match="no query named 'nothing_here'"):
        query("nothing_here")
