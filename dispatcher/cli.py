"""The ``paydispatch`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from dispatcher import config, logs, services
from orders import schema


def _settings() -> config.Settings:
    try:
        return config.load()
    except config.ConfigError as exc:
        raise SystemExit(f"paydispatch: configuration error: {exc}") from None


def _services(settings: config.Settings) -> services.Services:
    try:
        return services.ensure(settings)
    except services.ServiceError as exc:
        raise SystemExit(f"paydispatch: {exc}") from None


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings()
    found = _services(settings)
    with psycopg.connect(found.database_url, autocommit=True) as conn:
        if args.action == "init":
            done = schema.init(conn)
            for line in done or [f"schema is up to date (version {schema.latest_version()})"]:
                print(line)
            return 0
        result = schema.check(conn)
    if result.ok:
        print(f"database matches schema.sql (version {result.version})")
        return 0
    print(f"database does NOT match schema.sql: version {result.version}, expected {result.latest}")
    for line in result.missing:
        print(f"  missing:    {line}")
    for line in result.unexpected:
        print(f"  unexpected: {line}")
    print("run `paydispatch db init` to apply pending migrations")
    return 1


def cmd_services(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.action == "stop":
        stopped = services.stop(settings.home)
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    found = _services(settings)
    print(found.describe())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dispatcher import demo

    return demo.run(_settings(), orders=args.orders)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paydispatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="create, upgrade or check the database schema")
    db.add_argument("action", choices=["init", "check"])
    db.set_defaults(func=cmd_db)

    svc = sub.add_parser("services", help="start, show or stop the embedded PostgreSQL and Redis")
    svc.add_argument("action", choices=["start", "status", "stop"])
    svc.set_defaults(func=cmd_services)

    demo = sub.add_parser("demo", help="run the demo on embedded (or configured) services")
    demo.add_argument("--orders", type=int, default=6, help="how many orders to create")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(_settings().log_format)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
