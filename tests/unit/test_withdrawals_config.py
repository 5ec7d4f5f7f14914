"""The ``[withdrawals]`` settings (issue #14): the TOML table, the environment over it, the
defaults (withdrawals refused until a payout adapter is set), and refusals that name the
variable to fix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from dispatcher import config
from dispatcher.config import ConfigError, WithdrawalSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "paydispatch.toml.example"


def load(tmp_path: Path, toml: str = "", **env: str) -> WithdrawalSettings:
    path = tmp_path / "paydispatch.toml"
    path.write_text(toml)
    return config.load({"PAYDISPATCH_CONFIG": str(path), **env}).withdrawals


def test_by_default_no_adapter_pays_out_and_nothing_is_limited(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings == WithdrawalSettings()
    assert settings.adapter is None
    assert settings.daily_limit is None
    assert settings.approval is False


def test_the_table_and_the_environment_over_it(tmp_path: Path) -> None:
    toml = (
        '[withdrawals]\nadapter = "yookassa"\nmin = "100"\nfee_fixed = "0.30"\n'
        'fee_percent = 1.5\ndaily_limit = "50000"\napproval = true\n'
    )
    settings = load(tmp_path, toml)
    assert settings == WithdrawalSettings(
        minimum=Decimal(100),
        fee_fixed=Decimal("0.30"),
        fee_percent=Decimal("1.5"),
        daily_limit=Decimal(50000),
        approval=True,
        adapter="yookassa",
    )
    overridden = load(
        tmp_path,
        toml,
        PAYDISPATCH_WITHDRAWALS_ADAPTER="sandbox",
        PAYDISPATCH_WITHDRAWALS_APPROVAL="off",
        PAYDISPATCH_WITHDRAWALS_DAILY_LIMIT="",
    )
    assert (overridden.adapter, overridden.approval) == ("sandbox", False)
    assert overridden.daily_limit is None  # set empty: no limit


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PAYDISPATCH_WITHDRAWALS_MIN", "-1"),
        ("PAYDISPATCH_WITHDRAWALS_FEE_FIXED", "lots"),
        ("PAYDISPATCH_WITHDRAWALS_FEE_PERCENT", "101"),
        ("PAYDISPATCH_WITHDRAWALS_DAILY_LIMIT", "NaN"),
        ("PAYDISPATCH_WITHDRAWALS_APPROVAL", "maybe"),
    ],
)
def test_a_malformed_value_stops_the_process_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        load(tmp_path, **{variable: value})


def test_the_example_configuration_pays_out_through_yookassa_with_approval() -> None:
    settings = config.load({"PAYDISPATCH_CONFIG": str(EXAMPLE)}).withdrawals
    assert settings.adapter == "yookassa"
    assert settings.approval is True
    assert settings.minimum == Decimal(100)
    assert settings.fee_percent == Decimal("1.5")
