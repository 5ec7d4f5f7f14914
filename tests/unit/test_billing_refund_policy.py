"""The refund billing's pure parts: the overdraft setting and the proportional bonus reversal."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.billing import hooks
from dispatcher.billing.refunds import RefundHold, RefundOverdraft, RefundWalletHook, proportion
from dispatcher.config import BillingSettings, ConfigError, load


def test_refund_overdraft_defaults_to_refuse_and_reads_env_and_file(tmp_path: Path) -> None:
    assert load({"PAYDISPATCH_HOME": str(tmp_path)}).billing.refund_overdraft == "refuse"
    env = {"PAYDISPATCH_HOME": str(tmp_path), "PAYDISPATCH_BILLING_REFUND_OVERDRAFT": "Allow"}
    assert load(env).billing.refund_overdraft == "allow"
    path = tmp_path / "paydispatch.toml"
    path.write_text('[billing]\nrefund_overdraft = "allow"\n')
    assert load({"PAYDISPATCH_CONFIG": str(path)}).billing.refund_overdraft == "allow"


def test_an_unknown_refund_overdraft_stops_at_start_naming_the_variable(tmp_path: Path) -> None:
    env = {"PAYDISPATCH_HOME": str(tmp_path), "PAYDISPATCH_BILLING_REFUND_OVERDRAFT": "maybe"}
    with pytest.raises(ConfigError, match="PAYDISPATCH_BILLING_REFUND_OVERDRAFT"):
        load(env)


@pytest.mark.parametrize(
    ("bonus", "refunded", "paid", "back"),
    [
        (29, 499, 999, 14),  # 14.48: rounded down
        (29, 999, 999, 29),  # all of it
        (250, 5000, 10_000, 125),
        (1, 1, 3, 0),
        (10, 2000, 1000, 10),  # never more than the bonus
        (10, 100, 0, 0),  # nothing paid, nothing to take back
    ],
)
def test_proportion_rounds_down_and_never_exceeds_the_bonus(
    bonus: int, refunded: int, paid: int, back: int
) -> None:
    assert proportion(bonus, refunded, paid) == back


def test_the_policy_builds_the_request_time_hold_and_the_refund_hook() -> None:
    assert isinstance(hooks.build_refund_hold(BillingSettings()), RefundHold)
    assert hooks.build_refund_hold(BillingSettings(refund_overdraft="allow")) is None
    assert hooks.build_refund_hold(BillingSettings(hooks=("webhook",))) is None
    hook = hooks.build_transfer_hook(BillingSettings(refund_overdraft="allow"))
    assert isinstance(hook, RefundWalletHook)
    assert hook.policy is RefundOverdraft.ALLOW
    chained = hooks.build_transfer_hook(BillingSettings(hooks=("wallet", "webhook")))
    assert isinstance(chained, hooks.TransferChain)
    assert len(chained.hooks) == 2
