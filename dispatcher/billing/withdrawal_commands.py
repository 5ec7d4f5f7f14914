"""``paydispatch withdrawals list|approve|cancel``: the operators' side of wallet withdrawals.

``approve`` requests the payout of a withdrawal awaiting approval (``PAYDISPATCH_WITHDRAWALS_
APPROVAL=on``); ``cancel`` releases the hold of one whose payout was not sent. Both record who
did it (``--by``). Exit codes: 0 done (or already so), 1 refused (not found, already sent), 2
bad input.
"""

from __future__ import annotations

import argparse
from typing import Any
from uuid import UUID

from dispatcher import config
from dispatcher.billing.withdrawals import SyncWithdrawals, Withdrawal, WithdrawalStatus
from dispatcher.compose import Root
from orders.errors import DispatchError, InvalidInput


def _withdrawals() -> SyncWithdrawals:
    settings = config.load()
    url = Root(settings).services.database_url
    return SyncWithdrawals(url, settings.withdrawals, max_size=1, name="cli")


def _line(w: Withdrawal) -> str:
    parts = [
        str(w.id),
        w.created_at.isoformat(timespec="seconds"),
        f"{w.status:<17}",
        f"{w.site}/{w.user_id}",
        f"{w.money} (fee {w.fee})",
        f"via {w.adapter}",
    ]
    if w.approved_by:
        parts.append(f"approved by {w.approved_by}")
    if w.reason:
        parts.append(f"({w.reason})")
    return "  ".join(parts)


def _id(raw: str) -> UUID | None:
    try:
        return UUID(raw)
    except ValueError:
        print(f"paydispatch: {raw!r} is not a withdrawal id")
        return None


def _fail(exc: DispatchError) -> int:
    print(f"paydispatch: {exc}")
    return 2 if isinstance(exc, InvalidInput) else 1


def cmd_list(args: argparse.Namespace) -> int:
    with _withdrawals() as withdrawals:
        try:
            items, cursor = withdrawals.list(
                site=args.site, user_id=args.user, status=args.status, limit=args.limit,
                cursor=args.cursor,
            )  # fmt: skip
        except DispatchError as exc:
            return _fail(exc)
    for w in items:
        print(_line(w))
    if cursor:
        print(f"more: --cursor {cursor}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    withdrawal_id = _id(args.id)
    if withdrawal_id is None:
        return 2
    with _withdrawals() as withdrawals:
        try:
            if args.action == "approve":
                w = withdrawals.approve(withdrawal_id, by=args.by)
            else:
                w = withdrawals.cancel(withdrawal_id, by=args.by)
        except DispatchError as exc:
            return _fail(exc)
    note = " (already so: nothing changed)" if w.replayed else ""
    print(_line(w) + note)
    return 0


def register(sub: Any) -> None:
    """Add ``withdrawals`` to the ``paydispatch`` command's subparsers."""
    parser = sub.add_parser(
        "withdrawals", help="wallet withdrawals: list, approve (when required), cancel"
    )
    actions = parser.add_subparsers(dest="withdrawals_command", required=True)

    listing = actions.add_parser("list", help="withdrawals, newest first")
    listing.add_argument("--site", help="one site only (default: all)")
    listing.add_argument("--user", help="one user only")
    listing.add_argument(
        "--status", choices=[str(s) for s in WithdrawalStatus], help="one status only"
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor", help="continue where the previous page ended")
    listing.set_defaults(func=cmd_list)

    for name, what in (
        ("approve", "send the payout of a withdrawal awaiting approval"),
        ("cancel", "cancel a withdrawal whose payout was not sent (its hold is released)"),
    ):
        decide = actions.add_parser(name, help=what)
        decide.add_argument("id", help="the withdrawal's id")
        decide.add_argument("--by", required=True, help="who decides (recorded)")
        decide.set_defaults(func=cmd_decide, action=name)
