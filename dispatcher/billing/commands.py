"""``paydispatch wallet ...``, ``paydispatch hooks replay`` and ``paydispatch sites ...``.

The site comes from ``--site``, else ``PAYDISPATCH_SITE``; with neither, commands that act on one
user's wallet stop and ask for it (a site's user ids are its own, so guessing would be wrong).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import Any
from uuid import UUID

from dispatcher import config
from dispatcher.billing.audit import audit
from dispatcher.billing.bonus import SyncReferrals
from dispatcher.billing.face import Face
from dispatcher.billing.sites import DEFAULT_OVERLAP, SiteWebhook, SyncSiteWebhooks
from dispatcher.billing.wallet import Balance, Entry, EntryKind, SyncWallets, parse_amount
from dispatcher.billing.webhook import SyncOutbox
from dispatcher.compose import Root
from orders.errors import DispatchError, InvalidInput


def _database() -> tuple[config.Settings, str]:
    """The settings and the database URL (the database started first, if it is ours to start)."""
    settings = config.load()
    return settings, Root(settings).services.database_url


def _wallets() -> SyncWallets:
    return SyncWallets(_database()[1], max_size=1, name="cli")


def _sites() -> SyncSiteWebhooks:
    return SyncSiteWebhooks(_database()[1], max_size=1, name="cli")


def _site(args: argparse.Namespace) -> str:
    site: str | None = args.site or os.environ.get("PAYDISPATCH_SITE")
    if not site:
        raise SystemExit("paydispatch: give --site SITE (or set PAYDISPATCH_SITE)")
    return site


def _entry_line(entry: Entry) -> str:
    sign = "+" if entry.money.amount > 0 else "-"
    amount = entry.money.__class__(abs(entry.money.amount), entry.money.currency)
    parts = [
        f"{entry.id:>8}",
        entry.created_at.isoformat(timespec="seconds"),
        f"{entry.kind:<10}",
        f"{sign}{amount}",
        f"= {entry.balance_after}",
    ]
    if entry.order_id:
        parts.append(f"order {entry.order_id}")
    if entry.key:
        parts.append(f"key {entry.key}")
    if entry.description:
        parts.append(f"({entry.description})")
    return "  ".join(parts)


def _fail(exc: DispatchError) -> int:
    print(f"paydispatch: {exc}")
    return 2 if isinstance(exc, InvalidInput) else 1


def cmd_balance(args: argparse.Namespace) -> int:
    site = _site(args)
    with _wallets() as wallets:
        balances = wallets.balances(site, args.user)
    if not balances:
        print(f"user {args.user!r} of site {site!r} has no wallet")
        return 1
    for balance in balances:
        print(_balance_line(balance))
    return 0


def _balance_line(balance: Balance) -> str:
    """The balance, what can be spent of it, what holds keep out of it, and any debt a refund
    left: ``10.00 USD  (available 10.00 USD, held 6.06 USD)``."""
    value = balance.money
    available = value.__class__(max(value.amount, 0), value.currency)
    parts = [f"available {available}", f"held {balance.held}"]
    if balance.overdrawn:
        debt = value.__class__(max(-value.amount, 0), value.currency)
        parts.append(f"overdrawn by {debt}: a refund took more than the balance")
    return f"{value}  ({', '.join(parts)})"


def cmd_history(args: argparse.Namespace) -> int:
    site = _site(args)
    with _wallets() as wallets:
        try:
            page = wallets.history(
                site, args.user, currency=args.currency, limit=args.limit, cursor=args.cursor
            )
        except DispatchError as exc:
            return _fail(exc)
    for entry in page.items:
        print(_entry_line(entry))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    site = _site(args)
    with _wallets() as wallets:
        try:
            value = parse_amount(args.amount, args.currency)
            if args.action == "credit":
                entry = wallets.credit(
                    site, args.user, value, kind=EntryKind.ADJUSTMENT, key=args.key,
                    description=args.reason,
                )  # fmt: skip
            else:
                entry = wallets.debit(site, args.user, value, key=args.key, description=args.reason)
        except DispatchError as exc:
            return _fail(exc)
    note = " (replay: already done)" if entry.replayed else ""
    print(_entry_line(entry) + note)
    return 0


RETIRED_REFUND = (
    "paydispatch: `wallet refund` is retired: it wrote a ledger entry no refund knew of, so a "
    "refund the payment system also reported was taken back twice. Record a refund made at the "
    "payment system with\n  paydispatch orders refund ORDER_ID --record --psp-refund-id ID "
    "[--amount 5.00] --by NAME --reason WHY\n(counted against what is left to refund and "
    "reversed in the wallet once, whoever records it first), or send one with `orders refund`."
)


def cmd_refund(args: argparse.Namespace) -> int:
    """``wallet refund``, retired: says what to use instead and changes nothing."""
    print(RETIRED_REFUND, file=sys.stderr)
    return 2


def cmd_refer(args: argparse.Namespace) -> int:
    site = _site(args)
    with SyncReferrals(_database()[1], max_size=1, name="cli") as referrals:
        try:
            inviter = referrals.invite(site, args.user, args.invited_by)
        except DispatchError as exc:
            return _fail(exc)
    print(f"{args.user} was invited by {inviter}")
    return 0 if inviter == args.invited_by else 1


def cmd_audit(args: argparse.Namespace) -> int:
    settings, url = _database()
    hooks = settings.billing.hooks
    with Face(url, max_size=1, name="cli") as database:
        report = database.run(
            lambda pool: audit(
                pool, site=args.site, wallet_hook="wallet" in hooks, webhook_hook="webhook" in hooks
            )
        )
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        ids = [UUID(i) for i in args.event] if args.event else None
    except ValueError:
        print("paydispatch: --event takes event ids (UUIDs)")
        return 2
    if ids is None and not args.all:
        print("paydispatch: give --event ID (repeatable) or --all")
        return 2
    settings, url = _database()
    max_age = timedelta(seconds=settings.billing.webhook_max_age)
    with SyncOutbox(url, max_age=max_age, max_size=1, name="cli") as outbox:
        replayed = outbox.replay(ids)
    for event_id in replayed:
        print(f"replaying {event_id}")
    print(f"{len(replayed)} parked event(s) queued for delivery again")
    return 0


def _webhook_line(hook: SiteWebhook) -> str:
    rotation = (
        f"  previous secret signs too until {hook.previous_until.isoformat(timespec='seconds')}"
        if hook.previous_until is not None
        else ""
    )
    since = hook.updated_at.isoformat(timespec="seconds")
    return f"{hook.site}  {hook.url}  since {since}{rotation}"


def _show_secret(site: str, secret: str, note: str) -> None:
    print(secret)
    print(f"# webhook secret of site {site!r}: shown once; {note}", flush=True)


def cmd_set_webhook(args: argparse.Namespace) -> int:
    with _sites() as sites:
        try:
            hook, secret = sites.set(args.site, args.url)
        except DispatchError as exc:
            return _fail(exc)
    if secret is not None:
        _show_secret(hook.site, secret, "give it to the site to check each event's signature")
    print(f"site {hook.site!r}: events go to {hook.url}")
    return 0


def cmd_rotate_secret(args: argparse.Namespace) -> int:
    with _sites() as sites:
        try:
            rotated = sites.rotate(args.site, timedelta(hours=args.overlap))
        except DispatchError as exc:
            return _fail(exc)
    if rotated is None:
        print(f"site {args.site!r} has no webhook: paydispatch sites set-webhook SITE URL")
        return 1
    hook, secret = rotated
    until = hook.previous_until
    _show_secret(
        hook.site,
        secret,
        "the previous secret signs every event too until "
        + (until.isoformat(timespec="seconds") if until else "now: it no longer does"),
    )
    return 0


def cmd_list_webhooks(args: argparse.Namespace) -> int:
    with _sites() as sites:
        hooks = sites.list(args.site)
    for hook in hooks:
        print(_webhook_line(hook))
    if not hooks:
        print("no site has a webhook" if args.site is None else f"{args.site!r} has no webhook")
    return 0 if hooks or args.site is None else 1


def cmd_remove_webhook(args: argparse.Namespace) -> int:
    with _sites() as sites:
        removed = sites.remove(args.site)
    if not removed:
        print(f"site {args.site!r} has no webhook")
        return 1
    print(f"site {args.site!r}: webhook removed; its events wait (and park) until one is set")
    return 0


def register(sub: Any) -> None:
    """Add ``wallet``, ``hooks`` and ``sites`` to the ``paydispatch`` command's subparsers."""
    wallet = sub.add_parser("wallet", help="wallet balances, history, credits, debits, audit")
    actions = wallet.add_subparsers(dest="wallet_command", required=True)

    def with_site(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--site", help="the site the user belongs to (default $PAYDISPATCH_SITE)"
        )
        return parser

    balance = with_site(
        actions.add_parser("balance", help="a user's balances: available, held, overdrawn")
    )
    balance.add_argument("user")
    balance.set_defaults(func=cmd_balance)

    history = with_site(actions.add_parser("history", help="a user's entries, newest first"))
    history.add_argument("user")
    history.add_argument("--currency", help="one currency (or points) only")
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--cursor", help="continue where the previous page ended")
    history.set_defaults(func=cmd_history)

    for name, what in (("credit", "add money (a manual adjustment)"), ("debit", "take money")):
        move = with_site(actions.add_parser(name, help=what))
        move.add_argument("user")
        move.add_argument("amount", help="major units, e.g. 12.50 (whole numbers for points)")
        move.add_argument("currency", help="ISO 4217 code, or points")
        move.add_argument("--reason", required=True, help="recorded as the entry's description")
        move.add_argument("--key", required=True, help="idempotency key: a repeat does nothing")
        move.set_defaults(func=cmd_move, action=name)

    refund = actions.add_parser(
        "refund", help="retired: record a refund with `orders refund ID --record`", add_help=False
    )
    refund.add_argument("rest", nargs=argparse.REMAINDER)
    refund.set_defaults(func=cmd_refund)

    refer = with_site(actions.add_parser("refer", help="record who invited a user"))
    refer.add_argument("user")
    refer.add_argument("invited_by")
    refer.set_defaults(func=cmd_refer)

    check = actions.add_parser("audit", help="recompute balances; exit 1 on any discrepancy")
    check.add_argument("--site", help="one site only (default: all)")
    check.set_defaults(func=cmd_audit)

    hooks = sub.add_parser("hooks", help="billing webhook events")
    hook_actions = hooks.add_subparsers(dest="hooks_command", required=True)
    replay = hook_actions.add_parser("replay", help="send parked webhook events again")
    replay.add_argument("--event", action="append", help="an event id (repeatable)")
    replay.add_argument("--all", action="store_true", help="every parked event")
    replay.set_defaults(func=cmd_replay)
    register_sites(sub)


def register_sites(sub: Any) -> None:
    """``paydispatch sites``: each site's webhook URL and secret (issue #12, item 6)."""
    sites = sub.add_parser("sites", help="each site's billing webhook: URL and signing secret")
    site_actions = sites.add_subparsers(dest="sites_command", required=True)
    set_hook = site_actions.add_parser(
        "set-webhook", help="send SITE's events to URL (a new site's secret is printed once)"
    )
    set_hook.add_argument("site")
    set_hook.add_argument("url", help="https://... (http:// is accepted: use it for tests only)")
    set_hook.set_defaults(func=cmd_set_webhook)
    rotate = site_actions.add_parser(
        "rotate-secret", help="a new signing secret for SITE, printed once"
    )
    rotate.add_argument("site")
    rotate.add_argument(
        "--overlap",
        type=float,
        default=DEFAULT_OVERLAP.total_seconds() / 3600,
        help="hours the previous secret keeps signing next to the new one (default 24; 0: none)",
    )
    rotate.set_defaults(func=cmd_rotate_secret)
    listing = site_actions.add_parser("list", help="sites' webhooks (never their secrets)")
    listing.add_argument("site", nargs="?")
    listing.set_defaults(func=cmd_list_webhooks)
    remove = site_actions.add_parser("remove-webhook", help="stop sending SITE's events")
    remove.add_argument("site")
    remove.set_defaults(func=cmd_remove_webhook)
