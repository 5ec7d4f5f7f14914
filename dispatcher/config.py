"""Configuration, read in one place: the TOML file, then the environment over it.

``PAYDISPATCH_CONFIG`` names the file (default ``/etc/paydispatch/paydispatch.toml``; a missing
default file is fine, a missing named file is an error). Every value can be overridden by an
environment variable, and every secret can come from a file (``..._FILE``), which is how systemd's
``LoadCredential=`` hands them over. Adapter settings are resolved by ``adapters.registry``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/paydispatch/paydispatch.toml")


class ConfigError(ValueError):
    """The configuration is unusable; the message names the setting to fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon reads from its environment, resolved once at start."""

    database_url: str | None  # None: start the embedded PostgreSQL
    broker_url: str | None  # None: start the embedded Redis
    home: Path  # where embedded services keep their data
    enabled_adapters: tuple[str, ...] = ("sandbox",)
    adapter_config: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    log_format: str = "console"
    config_file: Path | None = None


def _read_secret(environ: Mapping[str, str], name: str) -> str | None:
    if name in environ and environ[name] != "":
        return environ[name]
    path = environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return None


def _load_file(environ: Mapping[str, str]) -> tuple[dict[str, Any], Path | None]:
    named = environ.get("PAYDISPATCH_CONFIG")
    path = Path(named) if named else DEFAULT_CONFIG
    if not path.exists():
        if named:
            raise ConfigError(f"PAYDISPATCH_CONFIG: {path} does not exist")
        return {}, None
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh), path
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the one :class:`Settings` of this process."""
    environ = os.environ if environ is None else environ
    data, path = _load_file(environ)
    adapters_table = data.get("adapters", {})
    if not isinstance(adapters_table, dict):
        raise ConfigError("[adapters] must be a table")
    enabled_raw = environ.get("PAYDISPATCH_ADAPTERS")
    if enabled_raw is not None:
        enabled = tuple(name.strip() for name in enabled_raw.split(",") if name.strip())
    else:
        enabled = tuple(adapters_table.get("enabled", ("sandbox",)))
    if not enabled:
        raise ConfigError("PAYDISPATCH_ADAPTERS (or adapters.enabled): enable at least one")
    adapter_config = {
        name: {str(k): str(v) for k, v in table.items()}
        for name, table in adapters_table.items()
        if isinstance(table, dict)
    }
    log_format = environ.get("PAYDISPATCH_LOG_FORMAT", data.get("log_format", "console"))
    if log_format not in {"console", "json"}:
        raise ConfigError(f"PAYDISPATCH_LOG_FORMAT must be console or json, not {log_format!r}")
    home = Path(environ.get("PAYDISPATCH_HOME", data.get("home", ".paydispatch"))).resolve()
    return Settings(
        database_url=_read_secret(environ, "PAYDISPATCH_DATABASE_URL") or data.get("database_url"),
        broker_url=_read_secret(environ, "PAYDISPATCH_BROKER_URL") or data.get("broker_url"),
        home=home,
        enabled_adapters=enabled,
        adapter_config=adapter_config,
        log_format=log_format,
        config_file=path,
    )
