"""Reading one setting: a secret from the environment or a ``..._FILE``, a flag, a number.

The process settings (:mod:`dispatcher.config`), each adapter's settings
(:func:`adapters.registry.resolve_settings`), the dispatch policy (:mod:`dispatcher.policy`) and
the adapters' own flags all read their values here, so every one accepts the same spellings and
every refusal names the variable to fix in the same words. ``error`` is the class raised:
:class:`~orders.errors.ConfigError`, or its subclass ``adapters.base.InvalidSettings`` for an
adapter's settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import overload

from orders.errors import ConfigError

TRUE = frozenset({"1", "true", "yes", "on"})
# An empty value is off: ``Environment=PAYDISPATCH_DEV=`` in a unit file reads as "not set".
FALSE = frozenset({"", "0", "false", "no", "off"})


def read_secret(
    environ: Mapping[str, str], name: str, *, error: type[ConfigError] = ConfigError
) -> str | None:
    """``environ[name]``, else the stripped content of the file ``environ[name + "_FILE"]``
    names (systemd's ``LoadCredential=``, Docker and Kubernetes secrets), else None.

    A variable set to an empty string gives way to its ``_FILE``; with no file it is returned
    as it is, so the caller can tell "set empty" (a mistake to report) from "not set".
    """
    value = environ.get(name)
    if value:
        return value
    path = environ.get(f"{name}_FILE")
    if not path:
        return value
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise error(f"{name}_FILE: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{name}_FILE: {path} is not UTF-8 text") from None


def flag(name: str, raw: object, *, error: type[ConfigError] = ConfigError) -> bool:
    """A boolean setting: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` in any
    case (empty is off); a TOML boolean as it is."""
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise error(f"{name} must be true or false (1 or 0, on or off), not {raw!r}")


@overload
def number(
    name: str,
    raw: object,
    *,
    kind: type[int],
    positive: bool = ...,
    low: float | None = ...,
    high: float | None = ...,
    error: type[ConfigError] = ...,
) -> int: ...
@overload
def number(
    name: str,
    raw: object,
    *,
    kind: type[float] = ...,
    positive: bool = ...,
    low: float | None = ...,
    high: float | None = ...,
    error: type[ConfigError] = ...,
) -> float: ...
def number(
    name: str,
    raw: object,
    *,
    kind: type[int] | type[float] = float,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
    error: type[ConfigError] = ConfigError,
) -> int | float:
    """A number setting (``kind`` int for a whole number), above 0 if ``positive``, within
    ``low``..``high`` where given."""
    try:
        value = kind(str(raw))
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise error(f"{name} must be {what}, not {raw!r}") from None
    if positive and value <= 0:
        raise error(f"{name} must be positive, got {raw!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise error(f"{name} must be at least {low}, got {raw!r}")
        if low is None:
            raise error(f"{name} must be at most {high}, got {raw!r}")
        raise error(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def seconds(name: str, raw: object, *, error: type[ConfigError] = ConfigError) -> float:
    """A duration in seconds: a positive number (fractions allowed)."""
    return number(name, raw, positive=True, error=error)
