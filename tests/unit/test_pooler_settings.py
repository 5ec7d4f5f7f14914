"""The settings a deployment behind PgBouncer in transaction mode needs (issue #15, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.config import ConfigError, load


def test_by_default_statements_are_prepared_and_listeners_use_the_database_url(
    tmp_path: Path,
) -> None:
    settings = load({"PAYDISPATCH_HOME": str(tmp_path)})
    assert settings.database_prepare is True
    assert settings.listen_database_url is None


def test_prepared_statements_can_be_turned_off_for_a_pooler(tmp_path: Path) -> None:
    settings = load({"PAYDISPATCH_HOME": str(tmp_path), "PAYDISPATCH_DATABASE_PREPARE": "off"})
    assert settings.database_prepare is False


def test_the_file_can_turn_prepared_statements_off(tmp_path: Path) -> None:
    path = tmp_path / "paydispatch.toml"
    path.write_text('database_prepare = false\nlisten_database_url = "postgresql://db:5432/pay"\n')
    settings = load({"PAYDISPATCH_CONFIG": str(path)})
    assert settings.database_prepare is False
    assert settings.listen_database_url == "postgresql://db:5432/pay"


def test_the_listeners_url_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "listen"
    secret.write_text("postgresql://app:pw@db:5432/pay\n")
    settings = load({"PAYDISPATCH_LISTEN_DATABASE_URL_FILE": str(secret)})
    assert settings.listen_database_url == "postgresql://app:pw@db:5432/pay"


def test_a_bad_prepare_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PAYDISPATCH_DATABASE_PREPARE"):
        load({"PAYDISPATCH_HOME": str(tmp_path), "PAYDISPATCH_DATABASE_PREPARE": "sometimes"})
