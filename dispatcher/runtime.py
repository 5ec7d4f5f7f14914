"""What a dispatcher process knows about each enabled payment system, resolved once at start.

Nothing of the broker: the API and the CLI build runtimes and load no dramatiq (each adapter's
queue is :func:`dispatcher.steps.queue_name` of its name, for the processes that use queues).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from adapters import registry
from adapters.base import Adapter, AdapterSettings, InvalidSettings
from dispatcher.config import ConfigError, Settings
from dispatcher.policy import DispatchPolicy, load_policy


@dataclass(frozen=True, slots=True)
class AdapterRuntime:
    adapter: Adapter
    settings: AdapterSettings
    policy: DispatchPolicy

    @property
    def name(self) -> str:
        return self.adapter.name


def build_adapters(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, AdapterRuntime]:
    """Load, configure and check every enabled adapter; a bad setting stops the process here."""
    installed = registry.available()
    runtimes: dict[str, AdapterRuntime] = {}
    for name in settings.enabled_adapters:
        if name not in installed:
            known = ", ".join(sorted(installed)) or "none"
            raise ConfigError(
                f"PAYDISPATCH_ADAPTERS: adapter {name!r} is not installed (installed: {known})"
            )
        adapter = installed[name]
        table = settings.adapter_config.get(name, {})
        try:
            resolved = registry.resolve_settings(adapter, table, environ)
        except InvalidSettings as exc:
            raise ConfigError(str(exc)) from None
        runtimes[name] = AdapterRuntime(adapter, resolved, load_policy(adapter, table, environ))
    return runtimes


def expiries(runtimes: Mapping[str, AdapterRuntime]) -> dict[str, timedelta]:
    """Default order lifetime per adapter, as the order repository wants it."""
    return {name: rt.adapter.capabilities.default_expiry for name, rt in runtimes.items()}
