"""The example configuration the README's single-host steps install must load as it says."""

from __future__ import annotations

from pathlib import Path

from adapters import registry
from dispatcher import config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "paydispatch.toml.example"


def test_the_example_configuration_loads_with_its_secret_from_a_file(tmp_path: Path) -> None:
    # Given the example file and the secret key as the units hand it over (a credential file),
    secret = tmp_path / "yookassa_secret_key"
    secret.write_text("live_secret_key_from_a_file\n")
    environ = {
        "PAYDISPATCH_CONFIG": str(EXAMPLE),
        "PAYDISPATCH_DATABASE_URL": "postgresql://paydispatch@127.0.0.1/paydispatch",
        "PAYDISPATCH_BROKER_URL": "redis://127.0.0.1:6379/0",
        "PAYDISPATCH_YOOKASSA_SECRET_KEY_FILE": str(secret),
    }
    # when it is loaded,
    settings = config.load(environ)
    # then it enables YooKassa with the shop id from the file and the key from the credential.
    assert settings.enabled_adapters == ("yookassa",)
    assert settings.public_url == "https://pay.example"
    assert settings.billing.hooks == ("wallet", "webhook")
    table = settings.adapter_config["yookassa"]
    resolved = registry.resolve_settings(registry.get("yookassa"), table, environ)
    assert resolved.get("SHOP_ID") == "123456"
    assert resolved.get("SECRET_KEY") == "live_secret_key_from_a_file"
