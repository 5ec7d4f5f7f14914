"""``paydispatch operators add|list|reset|disable``: the web console's accounts.

A password is printed once, by ``add`` and ``reset``, and never stored (only its scrypt hash).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dispatcher import config
from dispatcher.api.operators import Operators
from dispatcher.compose import Root
from orders.errors import DispatchError, InvalidInput


@contextmanager
def _operators() -> Iterator[Operators]:
    with Root(config.load(), name="cli") as root:
        yield Operators(root.pool(1))


def cmd_operators(args: argparse.Namespace) -> int:
    try:
        with _operators() as operators:
            if args.operators_command == "list":
                for op in operators.list():
                    state = f"disabled {op.disabled_at:%Y-%m-%d}" if op.disabled_at else "enabled"
                    seen = f"{op.last_login_at:%Y-%m-%d %H:%M}" if op.last_login_at else "never"
                    print(f"{op.name:<32} {state:<20} last login: {seen}")
                return 0
            if args.operators_command == "disable":
                if not operators.disable(args.name):
                    print(f"paydispatch: no enabled operator {args.name!r}")
                    return 1
                print(f"operator {args.name} disabled; their sessions ended")
                return 0
            add = args.operators_command == "add"
            password = operators.add(args.name) if add else operators.reset(args.name)
    except InvalidInput as exc:
        print(f"paydispatch: {exc}")
        return 2
    except DispatchError as exc:
        print(f"paydispatch: {exc}")
        return 1
    done = "added" if add else "has a new password (their sessions ended)"
    print(f"operator {args.name} {done}; log in at /console/ with the password:")
    print(password)
    print("It is shown only this once.")
    return 0


def register(sub: Any) -> None:
    """Add ``operators`` to the ``paydispatch`` command's subparsers."""
    parser = sub.add_parser("operators", help="accounts of the web console (/console/)")
    actions = parser.add_subparsers(dest="operators_command", required=True)
    for name, what in (
        ("add", "a new operator; prints their password once"),
        ("reset", "a new password for an operator; prints it once"),
        ("disable", "an operator can no longer log in (their recorded actions stay)"),
    ):
        action = actions.add_parser(name, help=what)
        action.add_argument("name", help="the operator's name, recorded with what they do")
        action.set_defaults(func=cmd_operators)
    actions.add_parser("list", help="every operator").set_defaults(func=cmd_operators)
