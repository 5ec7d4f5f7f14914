"""Configuration, read in one place: the TOML file, then the environment over it.

``PAYDISPATCH_CONFIG`` names the file (default ``/etc/paydispatch/paydispatch.toml``; a missing
default file is fine, a missing named file is an error). Every value can be overridden by an
environment variable, and every secret can come from a file (``..._FILE``), which is how systemd's
``LoadCredential=`` hands them over. Adapter settings are resolved by ``adapters.registry``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

# On the one error tree (a PermanentError), and still found here by its callers: "as" makes
# this a re-export for mypy.
from orders.errors import ConfigError as ConfigError  # noqa: PLC0414
from orders.settings import flag, number, read_secret, seconds

DEFAULT_CONFIG = Path("/etc/paydispatch/paydispatch.toml")
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")


# What billing does with a refund the balance cannot cover (docs/billing.md).
REFUND_OVERDRAFT_POLICIES = ("refuse", "allow")


@dataclass(frozen=True, slots=True)
class BillingSettings:
    """What happens when an order is paid (``[billing]``, ``PAYDISPATCH_BILLING_*``)."""

    # "wallet", "webhook", an entry point of paydispatch.billing_hooks, or "module:callable".
    hooks: tuple[str, ...] = ("wallet",)
    cashback_percent: Decimal = Decimal(0)  # of each top-up, credited as points
    referral_percents: tuple[Decimal, ...] = ()  # level 1, 2, ... inviters' share of a top-up
    # The webhook's URL and secret are per site, in the database (`paydispatch sites`).
    webhook_timeout: float = 10.0
    webhook_max_age: float = 3 * 24 * 3600.0  # seconds of retries before an event is parked
    # A refund the user's balance cannot cover (issue #14): "refuse" it at request time (and
    # hold its amount until it is final), or "allow" the balance to go negative, flagged.
    refund_overdraft: str = "refuse"


@dataclass(frozen=True, slots=True)
class WithdrawalSettings:
    """Wallet withdrawals (``[withdrawals]``, ``PAYDISPATCH_WITHDRAWALS_*``; docs/billing.md).

    Amounts are major units of the withdrawal's currency (``"100"`` is 100.00 RUB, 100 JPY)."""

    minimum: Decimal = Decimal(0)  # the smallest amount a user may withdraw (0: any)
    fee_fixed: Decimal = Decimal(0)  # added to every withdrawal's fee
    fee_percent: Decimal = Decimal(0)  # of the amount; the fee is rounded up to a minor unit
    # Per user and currency: withdrawals of the last 24 hours that did not fail and were not
    # cancelled may add up to this (amounts without fees); None: no limit.
    daily_limit: Decimal | None = None
    approval: bool = False  # each withdrawal waits for `paydispatch withdrawals approve`
    adapter: str | None = None  # the payment system that pays out; None: withdrawals refused


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon reads from its environment, resolved once at start."""

    database_url: str | None  # None: start the embedded PostgreSQL
    broker_url: str | None  # None: start the embedded Redis
    home: Path  # where embedded services keep their data
    # Behind PgBouncer in transaction mode: psycopg's prepared statements off (before 1.21), and
    # the sessions that LISTEN (the sweeper's wake-ups, the API's key revocations) straight to
    # PostgreSQL, since a pooler in transaction mode does not carry notifications.
    database_prepare: bool = True
    listen_database_url: str | None = None  # None: database_url
    # Nothing is enabled unless configured; a development setup (PAYDISPATCH_DEV) gets the
    # sandbox by default (issue #12, item 2).
    enabled_adapters: tuple[str, ...] = ()
    adapters_configured: bool = False  # PAYDISPATCH_ADAPTERS or adapters.enabled was given
    # A development setup (the demo, the tests, a developer's machine): the sandbox is enabled
    # by default and the adapters' published default credentials are accepted.
    dev: bool = False
    # Prefix of every broker key (Redis) of this installation, so several installations (or
    # test runs) can share one Redis database without touching each other's queues.
    broker_namespace: str = "paydispatch"
    adapter_config: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    log_format: str = "console"
    config_file: Path | None = None
    billing: BillingSettings = field(default_factory=BillingSettings)
    withdrawals: WithdrawalSettings = field(default_factory=WithdrawalSettings)
    # The HTTP API: where buyers reach it (status pages, return URLs), where it listens, and the
    # largest request body it reads.
    public_url: str = "http://127.0.0.1:8000"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_body_limit: int = 64 * 1024
    api_docs: bool = True  # the browsable /docs; PAYDISPATCH_API_DOCS=0 turns it off
    stats_interval: float = 15.0  # seconds between the sweeper's database-derived gauges
    console: bool = True  # the operators' console under /console/ (PAYDISPATCH_CONSOLE)


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
    dev = flag("PAYDISPATCH_DEV", environ.get("PAYDISPATCH_DEV", data.get("dev", False)))
    enabled_raw = environ.get("PAYDISPATCH_ADAPTERS")
    configured = enabled_raw is not None or "enabled" in adapters_table
    if enabled_raw is not None:
        enabled = tuple(name.strip() for name in enabled_raw.split(",") if name.strip())
    elif configured:
        enabled = tuple(str(name) for name in _items(adapters_table["enabled"]))
    else:
        enabled = ("sandbox",) if dev else ()
    if configured and not enabled:
        raise ConfigError("PAYDISPATCH_ADAPTERS (or adapters.enabled): enable at least one")
    namespace = str(
        environ.get("PAYDISPATCH_BROKER_NAMESPACE") or data.get("broker_namespace") or "paydispatch"
    )
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(
            "PAYDISPATCH_BROKER_NAMESPACE: 1-64 letters, digits, '.', '_' or '-', "
            f"not {namespace!r}"
        )
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
        database_url=read_secret(environ, "PAYDISPATCH_DATABASE_URL") or data.get("database_url"),
        broker_url=read_secret(environ, "PAYDISPATCH_BROKER_URL") or data.get("broker_url"),
        home=home,
        database_prepare=flag(
            "PAYDISPATCH_DATABASE_PREPARE",
            environ.get("PAYDISPATCH_DATABASE_PREPARE") or data.get("database_prepare", True),
        ),
        listen_database_url=read_secret(environ, "PAYDISPATCH_LISTEN_DATABASE_URL")
        or data.get("listen_database_url"),
        enabled_adapters=enabled,
        adapters_configured=configured,
        dev=dev,
        broker_namespace=namespace,
        adapter_config=adapter_config,
        log_format=log_format,
        config_file=path,
        billing=load_billing(environ, data),
        withdrawals=load_withdrawals(environ, data),
        stats_interval=seconds(
            "PAYDISPATCH_STATS_INTERVAL",
            environ.get("PAYDISPATCH_STATS_INTERVAL", data.get("stats_interval", 15.0)),
        ),
        **_api_settings(environ, data),
    )


def _percent(name: str, raw: object) -> Decimal:
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if not value.is_finite() or not 0 <= value <= 100:
        raise ConfigError(f"{name}: must be a percentage between 0 and 100, got {raw!r}")
    return value


def _items(raw: object) -> list[str]:
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(raw, list | tuple):
        return [str(item).strip() for item in raw if str(item).strip()]
    return [str(raw)]


def load_billing(environ: Mapping[str, str], data: Mapping[str, Any]) -> BillingSettings:
    """The ``[billing]`` table, each key overridable as ``PAYDISPATCH_BILLING_<KEY>``."""
    table = data.get("billing", {})
    if not isinstance(table, dict):
        raise ConfigError("[billing] must be a table")

    def get(key: str, default: object = None) -> object:
        value = environ.get(f"PAYDISPATCH_BILLING_{key.upper()}")
        return value if value is not None else table.get(key, default)

    hooks = tuple(_items(get("hooks", ["wallet"])))
    if hooks == ("none",):
        hooks = ()
    cashback = _percent("PAYDISPATCH_BILLING_CASHBACK_PERCENT", get("cashback_percent", 0))
    referrals = tuple(
        _percent("PAYDISPATCH_BILLING_REFERRAL_PERCENTS", item)
        for item in _items(get("referral_percents", []))
    )
    if len(referrals) > 10:
        raise ConfigError("PAYDISPATCH_BILLING_REFERRAL_PERCENTS: at most 10 levels")
    for key in ("webhook_url", "webhook_secret"):
        var = f"PAYDISPATCH_BILLING_{key.upper()}"
        if get(key) is not None or environ.get(f"{var}_FILE"):
            # One URL and one secret for every site let sites read and forge each other's
            # events (issue #12, item 6); a setting silently ignored would be worse.
            raise ConfigError(
                f"{var}: the webhook's URL and secret are per site now: set them with "
                "`paydispatch sites set-webhook SITE URL` (it prints the site's secret once) "
                "and remove this setting"
            )
    durations = {
        key: seconds(f"PAYDISPATCH_BILLING_{key.upper()}", get(key, default))
        for key, default in (("webhook_timeout", 10.0), ("webhook_max_age", 3 * 24 * 3600.0))
    }
    overdraft = str(get("refund_overdraft", "refuse")).strip().lower()
    if overdraft not in REFUND_OVERDRAFT_POLICIES:
        raise ConfigError(
            f"PAYDISPATCH_BILLING_REFUND_OVERDRAFT: {overdraft!r} is not one of "
            + ", ".join(REFUND_OVERDRAFT_POLICIES)
        )
    return BillingSettings(
        hooks=hooks,
        refund_overdraft=overdraft,
        cashback_percent=cashback,
        referral_percents=referrals,
        webhook_timeout=durations["webhook_timeout"],
        webhook_max_age=durations["webhook_max_age"],
    )


def _major(name: str, raw: object) -> Decimal:
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ConfigError(f"{name}: {raw!r} is not a decimal amount") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{name}: must be an amount of 0 or more, got {raw!r}")
    return value


def load_withdrawals(environ: Mapping[str, str], data: Mapping[str, Any]) -> WithdrawalSettings:
    """The ``[withdrawals]`` table, each key overridable as ``PAYDISPATCH_WITHDRAWALS_<KEY>``."""
    table = data.get("withdrawals", {})
    if not isinstance(table, dict):
        raise ConfigError("[withdrawals] must be a table")

    def get(key: str, default: object) -> object:
        value = environ.get(f"PAYDISPATCH_WITHDRAWALS_{key.upper()}")
        return value if value is not None else table.get(key, default)

    limit = str(get("daily_limit", "")).strip()
    adapter = str(get("adapter", "")).strip()
    return WithdrawalSettings(
        minimum=_major("PAYDISPATCH_WITHDRAWALS_MIN", get("min", 0)),
        fee_fixed=_major("PAYDISPATCH_WITHDRAWALS_FEE_FIXED", get("fee_fixed", 0)),
        fee_percent=_percent("PAYDISPATCH_WITHDRAWALS_FEE_PERCENT", get("fee_percent", 0)),
        daily_limit=_major("PAYDISPATCH_WITHDRAWALS_DAILY_LIMIT", limit) if limit else None,
        approval=flag("PAYDISPATCH_WITHDRAWALS_APPROVAL", get("approval", False)),
        adapter=adapter or None,
    )


def _api_settings(environ: Mapping[str, str], data: Mapping[str, Any]) -> dict[str, Any]:
    """``PAYDISPATCH_PUBLIC_URL`` and ``PAYDISPATCH_API_*`` over ``public_url`` and ``[api]``."""
    table = data.get("api", {})
    if not isinstance(table, dict):
        raise ConfigError("[api] must be a table")
    public_url = str(environ.get("PAYDISPATCH_PUBLIC_URL") or data.get("public_url") or "")
    public_url = public_url.rstrip("/") or "http://127.0.0.1:8000"
    if not public_url.startswith(("http://", "https://")) or len(public_url) < 10:
        raise ConfigError(f"PAYDISPATCH_PUBLIC_URL must be an http(s) URL, not {public_url!r}")
    values: dict[str, Any] = {
        "public_url": public_url,
        "api_host": str(environ.get("PAYDISPATCH_API_HOST") or table.get("host", "127.0.0.1")),
    }
    for key, default, low, high in (("port", 8000, 0, 65535), ("body_limit", 65536, 1024, 2**30)):
        var = f"PAYDISPATCH_API_{key.upper()}"
        raw = environ.get(var) or table.get(key, default)
        values[f"api_{key}"] = number(var, raw, kind=int, low=low, high=high)
    # An empty PAYDISPATCH_API_DOCS leaves the file's value (or the default, on) in place.
    values["api_docs"] = flag(
        "PAYDISPATCH_API_DOCS", environ.get("PAYDISPATCH_API_DOCS") or table.get("docs", True)
    )
    values["console"] = flag(
        "PAYDISPATCH_CONSOLE", environ.get("PAYDISPATCH_CONSOLE", table.get("console", True))
    )
    return values
