"""Find adapters through the entry-point group ``paydispatch.adapters``; ``register`` for tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points

from adapters.base import Adapter, AdapterSettings, InvalidSettings, Secret
from orders.settings import read_secret

GROUP = "paydispatch.adapters"

_registered: dict[str, Adapter] = {}


def register(adapter: Adapter) -> None:
    """Make an adapter available without an entry point (tests, embedding applications)."""
    _registered[adapter.name] = adapter


def unregister(name: str) -> None:
    _registered.pop(name, None)


def available() -> dict[str, Adapter]:
    """Every installed adapter by name: entry points first, then registered ones."""
    found: dict[str, Adapter] = {}
    for ep in entry_points(group=GROUP):
        adapter = ep.load()
        if not isinstance(adapter, Adapter):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not an Adapter instance")
        found[ep.name] = adapter
    found.update(_registered)
    return found


def get(name: str) -> Adapter:
    adapters = available()
    try:
        return adapters[name]
    except KeyError:
        known = ", ".join(sorted(adapters)) or "none"
        raise KeyError(f"unknown adapter {name!r} (installed: {known})") from None


def env_name(adapter: str, key: str) -> str:
    return f"PAYDISPATCH_{adapter.upper()}_{key.upper()}"


def resolve_settings(
    adapter: Adapter,
    configured: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AdapterSettings:
    """Settings from the config file's table, overridden by the environment.

    ``PAYDISPATCH_<ADAPTER>_<KEY>_FILE`` names a file holding the value (systemd
    ``LoadCredential=``). A required setting that is missing raises :class:`InvalidSettings`
    naming the environment variable.
    """
    environ = os.environ if environ is None else environ
    configured = {k.upper(): v for k, v in (configured or {}).items()}
    values: dict[str, str | Secret] = {}
    for spec in adapter.settings_spec:
        var = env_name(adapter.name, spec.key)
        value = read_secret(environ, var, error=InvalidSettings)
        if value is None:
            value = str(configured[spec.key]) if spec.key in configured else spec.default
        # An empty default makes a setting optional (YooKassa's payout gateway, Robokassa's
        # Password #3): empty means "not configured", and the operation needing it says so.
        if value is None or (value == "" and spec.default != ""):
            raise InvalidSettings(
                f"adapter {adapter.name!r} needs setting {spec.key}: set {var} "
                f"(or {var}_FILE, or {spec.key.lower()} in [adapters.{adapter.name}])"
            )
        values[spec.key] = Secret(value) if spec.secret else value
    return AdapterSettings(adapter=adapter.name, values=values)
