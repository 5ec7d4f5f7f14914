"""The ``paydispatch`` command.

Each command imports what it runs when it runs: ``paydispatch worker`` loads the worker's
modules, ``paydispatch sweeper`` the sweeper's, and ``paydispatch orders list`` neither, nor the
API's. The families of commands that live beside their concern (ops, billing, the API's keys
and operators, reconcile) are registered only when one of their commands is asked for, or all
of them for ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import psycopg

from dispatcher import config, logs, services
from dispatcher.compose import Root
from orders.db import schema

# The module of each family of commands and the top-level commands its ``register`` adds.
FAMILIES: dict[str, tuple[str, ...]] = {
    "dispatcher.ops.orders": ("status", "orders"),
    "dispatcher.billing.commands": ("wallet", "hooks", "sites"),
    "dispatcher.api.commands": ("api", "keys"),
    "dispatcher.api.operator_commands": ("operators",),  # issue #16: the console's accounts
    "dispatcher.ops.reconcile": ("reconcile",),  # issue #16
    "dispatcher.billing.withdrawal_commands": ("withdrawals",),  # issue #14
}


def _settings() -> config.Settings:
    try:
        return config.load()
    except config.ConfigError as exc:
        raise SystemExit(f"paydispatch: configuration error: {exc}") from None


def _services(settings: config.Settings) -> services.Services:
    try:
        return Root(settings).services
    except services.ServiceError as exc:
        raise SystemExit(f"paydispatch: {exc}") from None


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings()
    found = _services(settings)
    if args.action == "archive":
        from orders import archive

        return archive.run(found.database_url, args.older_than, args.batch)
    with psycopg.connect(found.database_url, autocommit=True) as conn:
        if args.action == "init":
            done = schema.init(conn)
            for line in done or [f"schema is up to date (version {schema.latest_version()})"]:
                print(line)
            return 0
        result = schema.check(conn)
        for warning in schema.server_warnings(conn):
            print(f"warning: {warning}", file=sys.stderr)
    if result.ok:
        print(f"database matches schema.sql (version {result.version})")
        return 0
    if result.no_schema:
        print("no schema yet: run `paydispatch db init`")
        return 1
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
    if args.action == "status":  # only reports: starts nothing, creates nothing (issue #16)
        states = services.status(settings)
        for state in states:
            print(state.describe())
        if any(state.embedded and not state.running for state in states):
            print("`paydispatch services start` starts the embedded ones")
        return 0 if all(state.running for state in states) else 3
    found = _services(settings)
    print(found.describe())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dispatcher import demo

    return demo.run(_settings(), orders=args.orders, adapter=args.adapter)


def cmd_worker(args: argparse.Namespace) -> int:
    from dispatcher.worker.main import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return run_worker(
        _settings(),
        queues=queues,
        threads=args.threads,
        in_flight=args.in_flight,
        metrics_port=args.metrics_port,
        db_connections=args.db_connections,
    )


def cmd_sweeper(args: argparse.Namespace) -> int:
    from dispatcher.sweeper.main import run_sweeper

    return run_sweeper(
        _settings(),
        batch=args.batch,
        interval=args.interval,
        lease=args.lease,
        metrics_port=args.metrics_port,
        stats_interval=args.stats_interval,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from dispatcher.supervisor import run_all

    return run_all(
        _settings(),
        workers=args.workers,
        metrics_base=args.metrics_base,
        api_host=args.api_host,
        api_port=args.api_port,
    )


def cmd_sandbox(args: argparse.Namespace) -> int:
    from adapters.sandbox.runner import serve

    serve(args.host, args.port, access_log=args.access_log)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; with ``command``, only the family of commands it belongs to is
    imported and registered besides the built-in ones (all of them without)."""
    parser = argparse.ArgumentParser(
        prog="paydispatch",
        description="paydispatch: a payment dispatcher daemon and its operations tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser(
        "db", help="create, upgrade or check the database schema; archive finished orders"
    )
    db.add_argument("action", choices=["init", "check", "archive"])
    db.add_argument("--older-than", help="archive: the retention, e.g. 90d (see orders/archive.py)")
    db.add_argument("--batch", type=int, default=1000, help="archive: orders per transaction")
    db.set_defaults(func=cmd_db)

    svc = sub.add_parser(
        "services",
        help="start, report on or stop the embedded PostgreSQL and Redis",
        description="start: start the embedded services where none is configured and print "
        "where they are; status: report whether each service answers, starting nothing (exit 3 "
        "when one does not); stop: stop the embedded ones",
    )
    svc.add_argument("action", choices=["start", "status", "stop"])
    svc.set_defaults(func=cmd_services)

    demo = sub.add_parser("demo", help="run the demo on embedded (or configured) services")
    demo.add_argument("--orders", type=int, default=30, help="how many orders to create")
    demo.add_argument(
        "--adapter",
        default="sandbox",
        choices=["sandbox", "stripe", "paypal", "robokassa", "tbank"],
        help="the payment system: the sandbox, or the local fake of a real one",
    )
    demo.set_defaults(func=cmd_demo)
    worker = sub.add_parser("worker", help="run dramatiq workers that submit and poll orders")
    worker.add_argument("--queues", help="adapters to serve, comma-separated (default: all)")
    worker.add_argument(
        "--threads",
        type=int,
        default=2,
        help="dramatiq threads (they only hand steps to the engine: a few are enough)",
    )
    worker.add_argument(
        "--in-flight", type=int, default=500, help="steps in flight at once in this process"
    )
    worker.add_argument(
        "--db-connections",
        type=int,
        default=8,
        help="connections of the engine's async database pool",
    )
    worker.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    worker.set_defaults(func=cmd_worker)

    sweeper = sub.add_parser("sweeper", help="claim due orders and queue their next step")
    sweeper.add_argument("--batch", type=int, default=500, help="orders claimed per statement")
    sweeper.add_argument("--interval", type=float, default=1.0, help="seconds between sweeps")
    sweeper.add_argument("--lease", type=float, default=120.0, help="lease length in seconds")
    sweeper.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    sweeper.add_argument(
        "--stats-interval",
        type=float,
        help="seconds between database gauges (default PAYDISPATCH_STATS_INTERVAL or 15)",
    )
    sweeper.set_defaults(func=cmd_sweeper)

    run = sub.add_parser("run", help="the API, a sweeper and workers in one supervisor")
    run.add_argument("--workers", type=int, default=1, help="worker processes")
    run.add_argument(
        "--metrics-base",
        type=int,
        help="metrics ports: the sweeper on this one, worker n on base + n",
    )
    run.add_argument("--api-host", help="the API's address (default PAYDISPATCH_API_HOST)")
    run.add_argument(
        "--api-port", type=int, help="the API's port (default PAYDISPATCH_API_PORT or 8000)"
    )
    run.set_defaults(func=cmd_run)

    sandbox = sub.add_parser("sandbox", help="serve the sandbox payment system")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a line per request (default); --no-access-log under a load test",
    )
    sandbox.set_defaults(func=cmd_sandbox)
    family = next((m for m, names in FAMILIES.items() if command in names), None)
    for module in FAMILIES:
        # an unknown command (or none): every family, so the usage lists every command
        if module == family or (family is None and command not in sub.choices):
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    logs.configure(_settings().log_format)
    try:
        code: int = args.func(args)
    except config.ConfigError as exc:
        raise SystemExit(f"paydispatch: configuration error: {exc}") from None
    except services.ServiceError as exc:
        raise SystemExit(f"paydispatch: {exc}") from None
    except psycopg.OperationalError as exc:
        raise SystemExit(f"paydispatch: cannot reach the database: {exc}") from None
    return code


if __name__ == "__main__":
    sys.exit(main())
