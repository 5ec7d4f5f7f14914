"""orders.settings: the one reader of secrets (``..._FILE``), flags and numbers, and its users."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.base import InvalidSettings
from adapters.registry import resolve_settings
from adapters.sandbox import adapter as sandbox
from adapters.tbank import adapter as tbank
from dispatcher import config
from orders.errors import ConfigError
from orders.settings import flag, number, read_secret, seconds

# -- secrets -----------------------------------------------------------------------------------


def test_secret_from_the_variable_wins_over_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n", encoding="utf-8")
    environ = {"X": "from-env", "X_FILE": str(secret)}
    assert read_secret(environ, "X") == "from-env"


def test_secret_from_the_file_is_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  s3cret\n", encoding="utf-8")
    assert read_secret({"X_FILE": str(secret)}, "X") == "s3cret"


def test_empty_variable_gives_way_to_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret", encoding="utf-8")
    assert read_secret({"X": "", "X_FILE": str(secret)}, "X") == "s3cret"


def test_unset_secret_is_none_and_an_empty_one_stays_empty() -> None:
    assert read_secret({}, "X") is None
    assert read_secret({"X": ""}, "X") == ""


def test_unreadable_secret_file_names_the_variable_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=rf"^X_FILE: cannot read {missing}: No such file"):
        read_secret({"X_FILE": str(missing)}, "X")


def test_secret_file_that_is_not_utf8_is_refused_naming_the_variable(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"^X_FILE: .* is not UTF-8 text"):
        read_secret({"X_FILE": str(secret)}, "X")


def test_secret_errors_take_the_callers_class(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings, match="X_FILE"):
        read_secret({"X_FILE": str(tmp_path / "nope")}, "X", error=InvalidSettings)


# -- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "On", True])
def test_flag_on(raw: object) -> None:
    assert flag("X", raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off ", "", False])
def test_flag_off(raw: object) -> None:
    assert flag("X", raw) is False


@pytest.mark.parametrize("raw", ["2", "enabled", 2])
def test_flag_refuses_anything_else_naming_the_variable_and_the_value(raw: object) -> None:
    with pytest.raises(
        InvalidSettings, match=rf"^X must be true or false \(1 or 0, on or off\), not {raw!r}"
    ):
        flag("X", raw, error=InvalidSettings)


# -- numbers -----------------------------------------------------------------------------------


def test_number_parses_floats_and_whole_numbers() -> None:
    assert number("X", "2.5") == 2.5
    assert number("X", " 7 ", kind=int) == 7
    assert number("X", 8000, kind=int) == 8000


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        ("abc", float, "X must be a number, not 'abc'"),
        ("1.5", int, "X must be a whole number, not '1.5'"),
    ],
)
def test_number_that_does_not_parse_is_refused(raw: str, kind: type, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        number("X", raw, kind=kind)


@pytest.mark.parametrize("raw", ["0", "-1"])
def test_positive_number_refuses_zero_and_below(raw: str) -> None:
    with pytest.raises(ConfigError, match=f"^X must be positive, got '{raw}'$"):
        number("X", raw, positive=True)


def test_number_bounds_are_inclusive_and_named() -> None:
    assert number("X", "0", kind=int, low=0, high=10) == 0
    assert number("X", "10", kind=int, low=0, high=10) == 10
    with pytest.raises(ConfigError, match=r"^X must be between 0 and 10, got '11'$"):
        number("X", "11", kind=int, low=0, high=10)
    with pytest.raises(ConfigError, match=r"^X must be at least 0, got '-1'$"):
        number("X", "-1", kind=int, low=0)
    with pytest.raises(ConfigError, match=r"^X must be at most 3, got '4'$"):
        number("X", "4", kind=int, high=3)


def test_seconds_are_positive_fractions() -> None:
    assert seconds("X", "0.5") == 0.5
    with pytest.raises(ConfigError, match=r"^X must be positive"):
        seconds("X", "0")


# -- its users say the same thing --------------------------------------------------------------


def _no_file(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    return {"PAYDISPATCH_CONFIG": str(empty)}


def test_process_and_adapter_secret_files_fail_in_the_same_words(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as process:
        config.load({"PAYDISPATCH_DATABASE_URL_FILE": str(missing), **_no_file(tmp_path)})
    with pytest.raises(InvalidSettings) as adapter:
        resolve_settings(sandbox, environ={"PAYDISPATCH_SANDBOX_API_KEY_FILE": str(missing)})
    assert str(process.value) == f"PAYDISPATCH_DATABASE_URL_FILE: cannot read {missing}: " + (
        "No such file or directory"
    )
    assert str(adapter.value) == f"PAYDISPATCH_SANDBOX_API_KEY_FILE: cannot read {missing}: " + (
        "No such file or directory"
    )


def test_process_and_adapter_flags_fail_in_the_same_words(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as process:
        config.load({"PAYDISPATCH_DEV": "maybe", **_no_file(tmp_path)})
    environ = {
        "PAYDISPATCH_TBANK_TERMINAL_KEY": "k",
        "PAYDISPATCH_TBANK_PASSWORD": "p",
        "PAYDISPATCH_TBANK_TWO_STAGE": "maybe",
    }
    with pytest.raises(InvalidSettings) as adapter:
        tbank.two_stage(resolve_settings(tbank, environ=environ))
    assert (
        str(process.value)
        == "PAYDISPATCH_DEV must be true or false (1 or 0, on or off), not 'maybe'"
    )
    assert str(adapter.value) == (
        "PAYDISPATCH_TBANK_TWO_STAGE must be true or false (1 or 0, on or off), not 'maybe'"
    )
