"""Several hosts: two sets of the daemon's processes sharing PostgreSQL and the broker.

    .venv/bin/python -m bench.hosts [--brokers redis,amqp://guest:guest@127.0.0.1:5672/vhost]

A "host" is its own ``paydispatch api``, ``paydispatch sweeper`` and ``paydispatch worker``
(each with its metrics port); the hosts share one database, one broker and one sandbox payment
system (issue #15, item 5). For each broker, each phase on a fresh database:

one
    Host A alone; ``--orders`` orders created through its API by ``--clients`` connections at
    once (sandbox scenario ``pay_after:0``): orders/s from the first create to the last paid.
two
    Hosts A and B, the same orders split between their APIs: orders/s, and every host's
    ``/metrics`` scraped once all are paid, their sums set beside the database's counts.
kill
    Both hosts under a steady ``--rate`` orders/s (half through each API) for ``--seconds``;
    halfway, every process of host B is SIGKILLed. A create that fails at B's API is sent to
    A's with the same Idempotency-Key, as a site behind a load balancer would. At the end:
    every order final, one ``new -> submitting`` and one paid event per order, one invoice at
    the sandbox per order, one wallet credit per paid order.
pgbouncer (with ``--pgbouncer``)
    Phase ``two`` again with every pool through PgBouncer in transaction mode
    (``PAYDISPATCH_DATABASE_PREPARE=off``; the LISTEN sessions straight to PostgreSQL).

The sweepers' lease is ``--lease`` (15 s here, 120 s by default in the daemon), so host B's
orders in flight come back within the run. Every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psycopg

from adapters.sandbox import SCENARIO_METADATA_KEY
from bench import common
from bench.recovery import (
    daemon_env,
    invoices,
    metric_sum,
    scrape,
    site_key,
    spawn_api,
    spawn_sweeper,
    spawn_worker,
    wait_final,
    wait_http,
)
from dispatcher import services
from tests import pgbouncer_support


@dataclass
class Host:
    name: str
    api: common.Child
    api_url: str
    sweeper: common.Child
    sweeper_port: int
    worker: common.Child
    worker_port: int

    def kill(self) -> None:
        for child in (self.api, self.sweeper, self.worker):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGKILL)
                child.proc.wait(timeout=10)

    def metrics(self) -> dict[str, dict[str, float]]:
        return {
            "api": scrape(f"{self.api_url}/metrics"),
            "sweeper": scrape(self.sweeper_port),
            "worker": scrape(self.worker_port),
        }


def start_host(
    children: common.Children, env: dict[str, str], name: str, args: argparse.Namespace
) -> Host:
    sweeper, sweeper_port = spawn_sweeper(
        children, env, f"{name}-sweeper", "--lease", str(args.lease)
    )
    worker, worker_port = spawn_worker(children, env, f"{name}-worker")
    api, api_url = spawn_api(children, env, f"{name}-api")
    children.wait_log(sweeper, "sweeper started", timeout=120)
    children.wait_log(worker, "worker started", timeout=120)
    wait_http(api, f"{api_url}/healthz", timeout=120)
    return Host(name, api, api_url, sweeper, sweeper_port, worker, worker_port)


@dataclass
class Creator:
    """Creates orders through the hosts' APIs; a failure goes to the next host, same key."""

    key: str
    urls: list[str]
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    created: dict[str, str] = field(default_factory=dict)  # idempotency key -> order id
    moved: int = 0  # creates that failed at their host and went to another
    lock: threading.Lock = field(default_factory=threading.Lock)
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, url: str) -> httpx.Client:
        name = f"{threading.get_ident()}:{url}"
        if name not in self.clients:
            headers = {"Authorization": f"Bearer {self.key}"}
            self.clients[name] = httpx.Client(base_url=url, headers=headers, timeout=10)
        return self.clients[name]

    def create(self, n: int) -> None:
        key = f"{self.run}-{n}"
        body = {
            "user_id": f"user-{n % 50}",
            "amount": 1000 + n % 500,
            "currency": "USD",
            "adapter": "sandbox",
            "metadata": {SCENARIO_METADATA_KEY: "pay_after:0"},
        }
        for attempt in range(len(self.urls) * 3):
            url = self.urls[(n + attempt) % len(self.urls)]
            try:
                answer = self.client(url).post(
                    "/v1/orders", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code in (200, 201):
                with self.lock:
                    self.created[key] = answer.json()["id"]
                    self.moved += attempt > 0
                return
            time.sleep(0.05)
        raise RuntimeError(f"no host created order {key}")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def throughput(db_url: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT count(*), extract(epoch FROM max(paid_at) - min(created_at))
               FROM orders WHERE status = 'paid'"""
        ).fetchone()
    paid, span = (int(row[0]), float(row[1] or 0)) if row else (0, 0.0)
    return {
        "paid": paid,
        "seconds": round(span, 2),
        "orders_per_second": round(paid / span, 1) if span else None,
    }


def burst(hosts: list[Host], db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    creator = Creator(site_key(db_url, "bench"), [h.api_url for h in hosts])
    named = {c.pid: c.name for h in hosts for c in (h.api, h.sweeper, h.worker)}
    meter = common.CpuMeter(named, postmaster=common.postmaster_pid(db_url))
    meter.start()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(creator.create, range(args.orders)))
    finally:
        creator.close()
    statuses = wait_final(db_url, args.orders, timeout=300)
    meter.stop()
    return {
        "hosts": len(hosts),
        "statuses": statuses,
        **throughput(db_url),
        "cpu_seconds": {k: round(v, 1) for k, v in meter.result.items()},
        "cpu_wall": round(meter.wall, 1),
    }


def metrics_against_database(hosts: list[Host], db_url: str) -> dict[str, Any]:
    """Each host's counters, their sums, and what the database counts."""
    time.sleep(2.5)  # the sweepers' database gauges refresh every second (STATS_INTERVAL=1)
    scraped = {h.name: h.metrics() for h in hosts}
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE status = 'paid'),
                      (SELECT count(*) FROM order_events WHERE to_status = 'paid')
               FROM orders"""
        ).fetchone()
    assert row is not None
    with psycopg.connect(db_url, autocommit=True) as conn:
        connections: dict[Any, Any] = dict(
            conn.execute(
                """SELECT application_name, count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()
                   GROUP BY 1 ORDER BY 1"""
            ).fetchall()
        )
    created = {
        n: metric_sum(m["api"], "paydispatch_orders_created_total") for n, m in scraped.items()
    }
    paid = {
        n: metric_sum(m["worker"], "paydispatch_transitions_total", to_status="paid")
        for n, m in scraped.items()
    }
    claimed = {
        n: metric_sum(m["sweeper"], "paydispatch_sweeper_claimed_total") for n, m in scraped.items()
    }
    gauge = {
        n: metric_sum(m["sweeper"], "paydispatch_orders", status="paid") for n, m in scraped.items()
    }
    return {
        "database": {"orders": row[0], "paid": row[1], "paid_events": row[2]},
        "api_orders_created_total": {**created, "sum": sum(created.values())},
        "worker_transitions_to_paid_total": {**paid, "sum": sum(paid.values())},
        "sweeper_claimed_total": {**claimed, "sum": sum(claimed.values())},
        "sweeper_gauge_orders_paid (each reads the database)": gauge,
        "connections_by_application_name (both hosts)": connections,
        "created_sum_equals_database": sum(created.values()) == row[0],
        "paid_sum_equals_database": sum(paid.values()) == row[1],
    }


def steady_with_kill(
    hosts: list[Host], db_url: str, sandbox_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    creator = Creator(site_key(db_url, "bench"), [h.api_url for h in hosts])
    total = int(args.rate * args.seconds)
    killed_at = None
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            futures = []
            for n in range(total):
                due = start + n / args.rate
                time.sleep(max(0.0, due - time.monotonic()))
                if killed_at is None and n >= total // 2:
                    hosts[1].kill()
                    killed_at = time.monotonic() - start
                futures.append(pool.submit(creator.create, n))
            for future in futures:
                future.result()
    finally:
        creator.close()
    created_for = time.monotonic() - start
    statuses = wait_final(db_url, len(creator.created), timeout=args.lease * 3 + 120)
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT
                 (SELECT count(*) FROM orders),
                 (SELECT max(n) FROM (SELECT count(*) AS n FROM order_events
                   WHERE from_status = 'new' AND to_status = 'submitting' GROUP BY order_id) s),
                 (SELECT max(n) FROM (SELECT count(*) AS n FROM order_events
                   WHERE to_status = 'paid' GROUP BY order_id) p),
                 (SELECT count(*) FROM wallet_entries WHERE kind = 'topup'),
                 (SELECT count(DISTINCT order_id) FROM wallet_entries WHERE kind = 'topup'),
                 (SELECT extract(epoch FROM max(paid_at) - min(created_at)) FROM orders)"""
        ).fetchone()
    assert row is not None
    return {
        "rate": args.rate,
        "creates_asked": total,
        "orders_created": len(creator.created),
        "creates_sent_to_the_other_host": creator.moved,
        "host_b_killed_after_s": round(killed_at or 0.0, 1),
        "creating_took_s": round(created_for, 1),
        "statuses": statuses,
        "orders_in_database": row[0],
        "max_submissions_started_per_order": row[1],
        "max_paid_events_per_order": row[2],
        "wallet_topups": row[3],
        "orders_credited": row[4],
        "first_create_to_last_paid_s": round(float(row[5] or 0), 1),
        "sandbox": invoices(sandbox_url),
    }


def run_broker(
    found: services.Services, broker_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {"broker": services.redact(broker_url)}
    phases = ["one", "two", "kill"] + (["pgbouncer"] if args.pgbouncer else [])
    for phase in phases:
        children = common.Children()
        try:
            _, sandbox_url = common.start_sandbox(children)
            with common.fresh_database(found, f"hosts_{phase}") as db_url:
                env = daemon_env(
                    db_url, broker_url, sandbox_url, PAYDISPATCH_BILLING_HOOKS="wallet"
                )
                if phase == "pgbouncer":
                    with pgbouncer_support.running_pgbouncer(
                        db_url, pool_size=args.pgbouncer_pool
                    ) as via:
                        env |= {
                            "PAYDISPATCH_DATABASE_URL": via,
                            "PAYDISPATCH_DATABASE_PREPARE": "off",
                            "PAYDISPATCH_LISTEN_DATABASE_URL": db_url,
                        }
                        hosts = [start_host(children, env, n, args) for n in ("A", "B")]
                        result[phase] = burst(hosts, db_url, args)
                        result[phase]["pgbouncer_stats"] = pgbouncer_support.admin_stats(via)
                        children.stop_all()
                    print(f"{phase}: {json.dumps(result[phase], default=str)}", flush=True)
                    continue
                hosts = [start_host(children, env, "A", args)]
                if phase != "one":
                    hosts.append(start_host(children, env, "B", args))
                time.sleep(0.5)  # dramatiq's consumers connect
                if phase == "kill":
                    result[phase] = steady_with_kill(hosts, db_url, sandbox_url, args)
                else:
                    result[phase] = burst(hosts, db_url, args)
                    result[phase]["sandbox"] = invoices(sandbox_url)
                    if phase == "two":
                        result[phase]["metrics"] = metrics_against_database(hosts, db_url)
        finally:
            children.stop_all()
        print(f"{phase}: {json.dumps(result[phase], default=str)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--brokers",
        default="redis,amqp://guest:guest@127.0.0.1:5672/pd-bench",
        help="'redis' (PAYDISPATCH_BROKER_URL or the embedded one) and/or amqp:// URLs",
    )
    parser.add_argument("--orders", type=int, default=1000, help="orders per throughput phase")
    parser.add_argument("--clients", type=int, default=16, help="concurrent API connections")
    parser.add_argument("--rate", type=float, default=40.0, help="kill phase: orders/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="kill phase: how long")
    parser.add_argument("--lease", type=float, default=15.0, help="the sweepers' --lease")
    parser.add_argument("--pgbouncer", action="store_true", help="also through PgBouncer")
    parser.add_argument("--pgbouncer-pool", type=int, default=20, help="its default_pool_size")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()
    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    print(f"uptime before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    for broker in args.brokers.split(","):
        url = found.broker_url if broker == "redis" else broker
        if url.startswith("amqp"):
            vhost = url.rsplit("/", 1)[-1]
            subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, check=False)
            subprocess.run(
                ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                capture_output=True, check=False,
            )  # fmt: skip
        results[broker] = run_broker(found, url, args)
    print(f"uptime after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
