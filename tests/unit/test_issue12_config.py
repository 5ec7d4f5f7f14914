"""Issue #12, item 2: the sandbox is enabled only explicitly, and its published credentials
only in a development setup. Also the broker namespace (item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import registry
from adapters.sandbox import adapter as sandbox_adapter
from adapters.sandbox.protocol import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET
from dispatcher.compose import check_adapters
from dispatcher.config import ConfigError, Settings, load
from dispatcher.runtime import AdapterRuntime
from tests.dispatch_support import FAST

OWN_KEY = "sbx-own-key-0123456789abcdef"
OWN_SECRET = "sbx-own-webhook-secret-0123456789"


def sandbox(**values: str) -> dict[str, AdapterRuntime]:
    settings = registry.resolve_settings(sandbox_adapter, values, environ={})
    return {"sandbox": AdapterRuntime(sandbox_adapter, settings, FAST)}


def settings(tmp_path: Path, **environ: str) -> Settings:
    return load({"PAYDISPATCH_HOME": str(tmp_path), **environ})


def test_issue12_item2_sandbox_is_not_enabled_by_default(tmp_path: Path) -> None:
    assert settings(tmp_path).enabled_adapters == ()
    with pytest.raises(ConfigError, match="PAYDISPATCH_ADAPTERS"):
        check_adapters(settings(tmp_path), {})


def test_issue12_item2_development_setup_enables_the_sandbox_by_default(tmp_path: Path) -> None:
    assert settings(tmp_path, PAYDISPATCH_DEV="1").enabled_adapters == ("sandbox",)
    path = tmp_path / "paydispatch.toml"
    path.write_text("dev = true\n")
    assert settings(tmp_path, PAYDISPATCH_CONFIG=str(path)).dev is True


def test_issue12_item2_explicitly_enabled_sandbox_is_enabled(tmp_path: Path) -> None:
    explicit = settings(tmp_path, PAYDISPATCH_ADAPTERS="sandbox")
    assert explicit.enabled_adapters == ("sandbox",)
    assert explicit.dev is False


@pytest.mark.parametrize(
    ("values", "culprit"),
    [
        ({}, "PAYDISPATCH_SANDBOX_API_KEY"),
        ({"API_KEY": OWN_KEY}, "PAYDISPATCH_SANDBOX_WEBHOOK_SECRET"),
        ({"WEBHOOK_SECRET": OWN_SECRET}, "PAYDISPATCH_SANDBOX_API_KEY"),
    ],
)
def test_issue12_item2_published_secrets_are_refused_outside_development(
    tmp_path: Path, values: dict[str, str], culprit: str
) -> None:
    production = settings(tmp_path, PAYDISPATCH_ADAPTERS="sandbox")
    with pytest.raises(ConfigError, match=culprit):
        check_adapters(production, sandbox(**values))


def test_issue12_item2_published_secrets_are_accepted_in_development(tmp_path: Path) -> None:
    runtimes = sandbox()
    assert runtimes["sandbox"].settings.get("WEBHOOK_SECRET") == DEFAULT_WEBHOOK_SECRET
    assert runtimes["sandbox"].settings.get("API_KEY") == DEFAULT_API_KEY
    check_adapters(settings(tmp_path, PAYDISPATCH_DEV="1"), runtimes)


def test_issue12_item2_own_secrets_start_outside_development(tmp_path: Path) -> None:
    production = settings(tmp_path, PAYDISPATCH_ADAPTERS="sandbox")
    check_adapters(production, sandbox(API_KEY=OWN_KEY, WEBHOOK_SECRET=OWN_SECRET))


@pytest.mark.parametrize("raw", ["maybe", "2"])
def test_dev_flag_takes_only_yes_or_no(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match="PAYDISPATCH_DEV"):
        settings(tmp_path, PAYDISPATCH_DEV=raw)


def test_broker_namespace_is_configurable_and_checked(tmp_path: Path) -> None:
    assert settings(tmp_path).broker_namespace == "paydispatch"
    assert settings(tmp_path, PAYDISPATCH_BROKER_NAMESPACE="shop-2").broker_namespace == "shop-2"
    with pytest.raises(ConfigError, match="PAYDISPATCH_BROKER_NAMESPACE"):
        settings(tmp_path, PAYDISPATCH_BROKER_NAMESPACE="a b:*")


@pytest.mark.parametrize(
    ("table", "environ", "culprit"),
    [
        ('webhook_url = "https://all-sites.example/hook"\n', {}, "WEBHOOK_URL"),
        ("", {"PAYDISPATCH_BILLING_WEBHOOK_SECRET": "one-secret-for-all"}, "WEBHOOK_SECRET"),
    ],
)
def test_issue12_item6_one_webhook_for_every_site_is_refused(
    tmp_path: Path, table: str, environ: dict[str, str], culprit: str
) -> None:
    path = tmp_path / "paydispatch.toml"
    path.write_text('[billing]\nhooks = ["webhook"]\n' + table)
    with pytest.raises(ConfigError, match=f"{culprit}: .*per site.*paydispatch sites"):
        settings(tmp_path, PAYDISPATCH_CONFIG=str(path), **environ)
