"""The CLI commands of the API: ``paydispatch api`` and ``paydispatch keys create|list|revoke``."""

from __future__ import annotations

import argparse
from typing import Any

from dispatcher import config
from dispatcher.api.keys import ApiKeys


def _settings() -> config.Settings:
    try:
        return config.load()
    except config.ConfigError as exc:
        raise SystemExit(f"paydispatch: configuration error: {exc}") from None


def cmd_api(args: argparse.Namespace) -> int:
    from dispatcher.api.server import serve

    settings = _settings()
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    return serve(settings, host=host, port=port, workers=args.workers)


def _keys() -> ApiKeys:
    from dispatcher.compose import Root

    return ApiKeys(Root(_settings(), name="keys").pool(1))


def cmd_keys(args: argparse.Namespace) -> int:
    from psycopg import errors as pg_errors

    keys = _keys()
    try:
        return _keys_action(keys, args)
    except pg_errors.UndefinedTable:
        raise SystemExit(
            "paydispatch keys: the database has no api_keys table: run `paydispatch db init`"
        ) from None
    finally:
        keys.pool.close()


def _keys_action(keys: ApiKeys, args: argparse.Namespace) -> int:
    from orders.errors import InvalidInput

    if args.action == "create":
        try:
            record, key = keys.create(args.site, args.description)
        except InvalidInput as exc:
            raise SystemExit(f"paydispatch keys create: {exc}") from None
        print(key)
        print(
            f"# key {record.prefix} for site {record.site!r}: shown once, only its hash is stored",
            flush=True,
        )
        return 0
    if args.action == "list":
        for record in keys.list(args.site):
            state = "revoked" if record.revoked_at else "active"
            used = record.last_used_at.isoformat() if record.last_used_at else "never"
            print(
                f"{record.prefix}  {record.site}  {state}  created "
                f"{record.created_at.isoformat()}  last used {used}  {record.description}"
            )
        return 0
    revoked = keys.revoke(args.prefix)
    if revoked is None:
        print(f"no active key with prefix {args.prefix}")
        return 1
    print(f"revoked key {revoked.prefix} of site {revoked.site!r}")
    return 0


def register(sub: Any) -> None:
    """Add ``api`` and ``keys`` to the ``paydispatch`` command's subparsers."""
    api = sub.add_parser("api", help="serve the HTTP API, the status pages and callbacks")
    api.add_argument("--host", help="address to listen on (default PAYDISPATCH_API_HOST)")
    api.add_argument("--port", type=int, help="port (default PAYDISPATCH_API_PORT or 8000)")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(func=cmd_api)

    keys = sub.add_parser("keys", help="create, list or revoke site API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key for SITE and print it once")
    create.add_argument("site")
    create.add_argument("--description", default="", help="what the key is for")
    listing = actions.add_parser("list", help="list keys (prefix, site, state)")
    listing.add_argument("site", nargs="?")
    revoke = actions.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    keys.set_defaults(func=cmd_keys)
