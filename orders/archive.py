"""Retention: finished orders leave the hot tables for the archive tables after a while.

``paydispatch db archive --older-than 90d [--batch N]`` moves each finished order (paid,
rejected, expired, cancelled or failed) that has not changed for the retention period, is no
longer watched for a late payment (``next_run_at`` is NULL) and that nothing else refers to,
from ``orders`` to ``orders_archive``, with its events from ``order_events`` to
``order_events_archive``, in the same database.

Why archive tables, and why only unreferenced orders: the hot queries do not grow with the table
(``bench/long_table.py``), so retention is about disk, vacuum and backup time, not speed. Rows
kept in the same database stay one query away for an audit and can be dumped and dropped on the
operator's own schedule (``pg_dump -t orders_archive -t order_events_archive``); partitioning
would need the partition key in every unique key of ``orders`` (its id, the sites' keys, the
payment systems' ids), which those keys cannot have. The wallet ledger is append-only and its
entries name their orders by foreign key, as do billing webhook events, the operators' record
and a buyer's switch; an order any of them names stays, so no reference ever dangles and the
ledger's audit still finds every order it credited. (With the wallet hook on, paid orders stay
with the ledger, which grows at the same pace; expired, rejected and cancelled ones leave.)

The walk goes through the orders in ``number`` order (the order they were created in) from the
first, ``batch`` numbers at a time, each batch in its own transaction; it stops at the first
order created after the cut-off, which no later order can precede. An interrupted run loses
nothing (each batch moved whole or not at all) and the next run simply walks again. Orders are
locked with ``SKIP LOCKED``, so a worker holding one is never waited for: that order is left for
the next run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from orders.db import query
from orders.errors import InvalidInput
from orders.status import TERMINAL

# The buyer's status page and a payment system's late notification must still find an order
# that has just finished: a shorter retention is refused.
MIN_AGE = timedelta(days=1)
DEFAULT_BATCH = 1000
_AGE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run is: orders looked at, orders moved, the last order number looked at."""

    checked: int = 0
    archived: int = 0
    events: int = 0
    last_number: int = 0


def parse_age(text: str) -> timedelta:
    """``90d``, ``36h`` or ``600m``; at least :data:`MIN_AGE`."""
    match = _AGE.match(text)
    if match is None:
        raise InvalidInput("older_than", f"expected a number of days, hours or minutes: {text!r}")
    age = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if age < MIN_AGE:
        raise InvalidInput("older_than", f"must be at least {MIN_AGE.days} day, got {text!r}")
    return age


def _columns(conn: psycopg.Connection[Any], table: str) -> sql.Composed:
    rows = conn.execute(query("archive_columns"), {"table": table}).fetchall()
    return sql.SQL(", ").join(sql.Identifier(row[0]) for row in rows)


def _move(conn: psycopg.Connection[Any], table: str, into: str, key: str, ids: list[Any]) -> int:
    """Copy the rows of ``table`` whose ``key`` is one of ``ids`` into ``into``, then delete
    them; the number moved. Columns go by name, so the archive's own columns keep defaults."""
    columns = _columns(conn, table)
    names = {"table": sql.Identifier(table), "key": sql.Identifier(key)}
    copy = sql.SQL(query("archive_copy")).format(into=sql.Identifier(into), cols=columns, **names)
    conn.execute(copy, {"ids": ids})
    deleted = conn.execute(sql.SQL(query("archive_delete")).format(**names), {"ids": ids})
    return deleted.rowcount


def archive(
    conn: psycopg.Connection[Any],
    older_than: timedelta,
    *,
    batch: int = DEFAULT_BATCH,
    on_batch: Callable[[Progress], None] | None = None,
) -> Progress:
    """Move the finished orders older than ``older_than`` and their events; see the module.

    ``conn`` must be in autocommit mode: each batch is its own transaction. ``on_batch`` is
    called after each one with the progress so far.
    """
    if older_than < MIN_AGE:
        raise InvalidInput("older_than", f"must be at least {MIN_AGE}, got {older_than}")
    if batch < 1:
        raise InvalidInput("batch", f"must be positive, got {batch}")
    if not conn.autocommit:
        raise ValueError("archive() needs an autocommit connection: each batch commits")
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(query("archive_cutoff"), {"age": older_than}).fetchone()
    cutoff = row["cutoff"] if row else None
    finished = sorted(str(s) for s in TERMINAL)
    progress = Progress()
    while True:
        window = cur.execute(
            query("archive_window"),
            {"after": progress.last_number, "batch": batch, "cutoff": cutoff},
        ).fetchall()
        old = [r["number"] for r in window if not r["too_new"]]
        if not old:
            return progress
        last = old[-1]  # a too-new order ends the walk: every later one is newer still
        params = {"after": progress.last_number, "last": last, "cutoff": cutoff}
        with conn.transaction():
            ids = [
                r["id"]
                for r in cur.execute(query("archive_candidates"), {**params, "finished": finished})
            ]
            events = moved = 0
            if ids:
                events = _move(conn, "order_events", "order_events_archive", "order_id", ids)
                moved = _move(conn, "orders", "orders_archive", "id", ids)
        progress = Progress(
            checked=progress.checked + len(old),
            archived=progress.archived + moved,
            events=progress.events + events,
            last_number=last,
        )
        if on_batch is not None:
            on_batch(progress)
        if len(old) < len(window):
            return progress


def run(url: str, older_than: str | None, batch: int, out: Callable[[str], None] = print) -> int:
    """``paydispatch db archive``: the walk with a line of progress per batch; an exit status."""
    if older_than is None:
        out("paydispatch db archive: give the retention, e.g. --older-than 90d")
        return 2
    try:
        age = parse_age(older_than)
        with psycopg.connect(url, autocommit=True) as conn:
            done = archive(
                conn,
                age,
                batch=batch,
                on_batch=lambda p: out(
                    f"checked {p.checked:,} orders (up to number {p.last_number}), "
                    f"archived {p.archived:,} with {p.events:,} events"
                ),
            )
    except InvalidInput as exc:
        out(f"paydispatch db archive: {exc}")
        return 2
    out(
        f"done: {done.archived:,} finished orders older than {older_than} and their "
        f"{done.events:,} events moved to orders_archive and order_events_archive"
    )
    return 0
