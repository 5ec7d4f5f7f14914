"""Configuration: the file, the environment over it, secrets from files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.config import ConfigError, load


def test_defaults_with_nothing_configured(tmp_path: Path) -> None:
    settings = load({"PAYDISPATCH_HOME": str(tmp_path)})
    assert settings.database_url is None
    assert settings.broker_url is None
    assert settings.enabled_adapters == ()  # the sandbox only explicitly or with PAYDISPATCH_DEV
    assert settings.home == tmp_path


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "paydispatch.toml"
    path.write_text(
        'database_url = "postgresql://file/db"\nbroker_url = "redis://file"\n'
        '[adapters]\nenabled = ["sandbox", "yookassa"]\n[adapters.yookassa]\nshop_id = "42"\n'
    )
    settings = load({"PAYDISPATCH_CONFIG": str(path), "PAYDISPATCH_BROKER_URL": "redis://env"})
    assert settings.database_url == "postgresql://file/db"
    assert settings.broker_url == "redis://env"
    assert settings.enabled_adapters == ("sandbox", "yookassa")
    assert settings.adapter_config["yookassa"] == {"shop_id": "42"}


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "db-url"
    secret.write_text("postgresql://app:pw@db/pay\n")
    settings = load({"PAYDISPATCH_DATABASE_URL_FILE": str(secret)})
    assert settings.database_url == "postgresql://app:pw@db/pay"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PAYDISPATCH_CONFIG": "/nonexistent/pd.toml"}, "PAYDISPATCH_CONFIG"),
        ({"PAYDISPATCH_DATABASE_URL_FILE": "/nonexistent/secret"}, "PAYDISPATCH_DATABASE_URL_FILE"),
        ({"PAYDISPATCH_ADAPTERS": " , "}, "PAYDISPATCH_ADAPTERS"),
        ({"PAYDISPATCH_LOG_FORMAT": "xml"}, "PAYDISPATCH_LOG_FORMAT"),
    ],
)
def test_bad_configuration_names_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(environ)


def test_invalid_toml_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("database_url = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({"PAYDISPATCH_CONFIG": str(path)})
