"""Lifecycle throughput: the real daemon end to end, the PostgreSQL limit, the dramatiq limit.

    .venv/bin/python -m bench.lifecycle            # or: .venv/bin/python bench/lifecycle.py

In one run, on the embedded services (or PAYDISPATCH_DATABASE_URL / PAYDISPATCH_BROKER_URL):

a. end-to-end orders/s: N orders created through ``OrderRepository.create`` with the sandbox
   scenario ``pay_after:0``, taken to ``paid`` by the real daemon (``paydispatch sweeper`` and
   ``paydispatch worker`` processes) against ``paydispatch sandbox`` in its own process; timed
   from the first create to the last ``paid_at``. Each setting gets a fresh database. The orders
   are created all at once, or with ``--arrival N`` at a steady N orders/s (a site's buyers,
   not a burst); CPU per order is reported for each process.
b. the PostgreSQL limit for the same lifecycle: ``bench/lifecycle.pgbench.sql`` under pgbench
   on the same server, fresh database (one script run = one lifecycle, so tps = lifecycles/s).
c. raw dramatiq: M no-op messages through a RedisBroker on the same Redis, consumed by a
   dramatiq Worker with the daemon's thread count.
d. the ratio a / b (target: at least 30 %).

Every process started here is stopped on exit, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dramatiq
import httpx
import psycopg

from adapters.sandbox import SCENARIO_METADATA_KEY
from bench import common
from dispatcher.steps import make_broker
from orders import Money, NewOrder
from orders.db import open_pool
from orders.repository import OrderRepository

PGBENCH_SCRIPT = Path(__file__).resolve().parent / "lifecycle.pgbench.sql"
TARGET_RATIO = 0.30


@dataclass(frozen=True)
class Setting:
    workers: int = 1
    threads: int = 2
    poll_first: float = 0.2
    interval: float = 0.2
    batch: int = 500
    rate: float = 5000.0
    concurrency: int = 200  # PAYDISPATCH_SANDBOX_CONCURRENCY, the daemon's default
    in_flight: int = 500  # worker --in-flight, the daemon's default

    def label(self) -> str:
        return (
            f"workers={self.workers} threads={self.threads} poll_first={self.poll_first}s "
            f"sweeper_interval={self.interval}s batch={self.batch} rate={self.rate:g}/s "
            f"concurrency={self.concurrency} in_flight={self.in_flight}"
        )


def parse_settings(text: str, base: Setting) -> list[Setting]:
    """``"1:0.2,2:0.5:20"`` -> workers:poll_first[:concurrency] on top of ``base``."""
    found = []
    for item in text.split(","):
        parts = item.strip().split(":")
        found.append(
            replace(
                base,
                workers=int(parts[0]),
                poll_first=float(parts[1]) if len(parts) > 1 else base.poll_first,
                concurrency=int(parts[2]) if len(parts) > 2 else base.concurrency,
            )
        )
    return found


def _create_paced(
    repo: OrderRepository, new_orders: list[NewOrder], creators: int, rate: float, start: float
) -> None:
    """Create order i at ``start + i / rate`` (``creators`` threads take the next one each):
    a steady arrival, as a site's buyers make, not a burst."""
    lock = threading.Lock()
    following = iter(enumerate(new_orders))

    def creating() -> None:
        while True:
            with lock:
                item = next(following, None)
            if item is None:
                return
            i, new = item
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            repo.create(new)

    threads = [threading.Thread(target=creating) for _ in range(creators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- a. end to end ----------------------------------------------------------------------------


def _orders(n: int, run_id: str) -> list[NewOrder]:
    return [
        NewOrder(
            site="bench",
            site_ref=f"{run_id}-{i}",
            user_id=f"user-{i % 50}",
            money=Money(1000 + i % 500, "USD"),
            adapter="sandbox",
            description=f"Top-up #{i}",
            return_url="https://shop.example/balance",
            metadata={SCENARIO_METADATA_KEY: "pay_after:0"},
        )
        for i in range(n)
    ]


def run_e2e(
    found: Any,
    sandbox: common.Child,
    sandbox_url: str,
    broker_url: str,
    setting: Setting,
    *,
    n: int,
    creators: int,
    timeout: float,
    profile: bool = False,
    arrival: float | None = None,
) -> dict[str, Any]:
    """``arrival``: orders created at that steady rate (orders/s); None: all at once."""
    children = common.Children()
    result: dict[str, Any] = {"setting": asdict(setting), "orders": n, "arrival": arrival}
    with common.fresh_database(found, "e2e") as db_url:
        common.flush_redis(broker_url)
        httpx.post(f"{sandbox_url}/_control/reset", timeout=10).raise_for_status()
        env = common.daemon_env(
            db_url,
            broker_url,
            sandbox_url,
            poll_first=str(setting.poll_first),
            rate=str(setting.rate),
            concurrency=str(setting.concurrency),
        )
        pool = open_pool(db_url, max_size=creators + 1, name="bench-create")
        repo = OrderRepository(pool, {"sandbox": timedelta(minutes=15)})
        try:
            _sweeper, workers = common.spawn_daemon(
                children,
                env,
                workers=setting.workers,
                threads=setting.threads,
                in_flight=setting.in_flight,
                sweeper_args=["--batch", str(setting.batch), "--interval", str(setting.interval)],
            )
            time.sleep(0.5)  # let dramatiq's consumers connect
            new_orders = _orders(n, f"e2e{int(time.time())}")
            named = {c.pid: c.name for c in children.items} | {sandbox.pid: "sandbox"}
            meter = common.CpuMeter(named, postmaster=common.postmaster_pid(db_url))
            spy = common.start_profile(children, workers[0]) if profile else None
            meter.start()
            started = time.monotonic()
            if arrival:
                _create_paced(repo, new_orders, creators, arrival, started)
            else:
                with ThreadPoolExecutor(creators) as creating:
                    list(creating.map(repo.create, new_orders))
            created = time.monotonic()
            paid = 0
            with psycopg.connect(db_url, autocommit=True) as conn:
                while time.monotonic() - started < timeout:
                    row = conn.execute(
                        "SELECT count(*) FROM orders WHERE status = 'paid'"
                    ).fetchone()
                    paid = int(row[0]) if row else 0
                    if paid >= n:
                        break
                    time.sleep(0.05)
                done = time.monotonic()
                meter.stop()
                row = conn.execute(
                    """SELECT extract(epoch FROM max(paid_at) - min(created_at)),
                              percentile_cont(0.5) WITHIN GROUP (ORDER BY
                                  extract(epoch FROM paid_at - created_at)),
                              percentile_cont(0.95) WITHIN GROUP (ORDER BY
                                  extract(epoch FROM paid_at - created_at)),
                              max(extract(epoch FROM paid_at - created_at))
                       FROM orders WHERE status = 'paid'"""
                ).fetchone()
                statuses = dict(
                    conn.execute("SELECT status, count(*) FROM orders GROUP BY 1").fetchall()
                )
            stats = httpx.get(f"{sandbox_url}/_control/stats", timeout=10).json()
            if spy is not None:
                result["profile"] = common.stop_profile(children, *spy)
        finally:
            repo.close()
            pool.close()
            children.stop_all(grace=20)
    span, p50, p95, worst = (float(v) if v is not None else None for v in (row or (None,) * 4))
    result.update(
        {
            "paid": paid,
            "statuses": statuses,
            "create_seconds": round(created - started, 3),
            "create_rate": round(n / (created - started), 1),
            "wall_seconds": round(done - started, 3),
            "wall_rate": round(paid / (done - started), 1),
            "db_seconds": None if span is None else round(span, 3),
            "orders_per_second": None if not span else round(paid / span, 1),
            "time_to_paid_p50": p50,
            "time_to_paid_p95": p95,
            "time_to_paid_max": worst,
            "cpu_ms_per_order": {
                k: round(1000 * v / paid, 3) for k, v in meter.result.items() if paid
            },
            "rss_mib": {k: [round(v, 1) for v in m] for k, m in meter.rss.items()},
            "sandbox_create_calls": stats.get("create_calls"),
            "sandbox_status_calls": stats.get("status_calls"),
            "cpu_seconds": {k: round(v, 2) for k, v in meter.result.items()},
            "cpu_wall": round(meter.wall, 2),
        }
    )
    return result


# -- b. pgbench ---------------------------------------------------------------------------------


def run_pgbench(
    found: Any, *, clients: int, threads: int, duration: int, extra_poll: int
) -> dict[str, Any]:
    with common.fresh_database(found, "pgbench") as db_url:
        argv, report = common.pgbench(
            db_url,
            PGBENCH_SCRIPT,
            clients=clients,
            threads=threads,
            seconds=duration,
            defines={"extra_poll": extra_poll},
        )
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", report)
        latency = re.search(r"latency average = ([\d.]+) ms", report)
        failed = re.search(r"number of failed transactions: (\d+)", report)
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'paid'), count(*) FROM orders"
            ).fetchone()
            events = conn.execute("SELECT count(*) FROM order_events").fetchone()
    return {
        "command": " ".join(argv),
        "clients": clients,
        "threads": threads,
        "duration": duration,
        "extra_poll": extra_poll,
        "lifecycles_per_second": float(tps.group(1)) if tps else None,
        "latency_ms": float(latency.group(1)) if latency else None,
        "failed": int(failed.group(1)) if failed else None,
        "orders_paid": row[0] if row else None,
        "orders_total": row[1] if row else None,
        "events": events[0] if events else None,
    }


# -- c. dramatiq no-op ----------------------------------------------------------------------------


def run_noop(broker_url: str, *, messages: int, threads: int, timeout: float) -> dict[str, Any]:
    common.flush_redis(broker_url)
    broker = make_broker(broker_url, namespace="pd-bench-noop")
    lock = threading.Lock()
    count = [0]
    finished = threading.Event()

    def noop(i: int) -> None:
        with lock:
            count[0] += 1
            if count[0] >= messages:
                finished.set()

    actor = dramatiq.Actor(
        noop,
        broker=broker,
        actor_name="noop",
        queue_name="bench.noop",
        priority=0,
        options={"max_retries": 0},
    )
    worker: dramatiq.Worker | None = None
    try:
        started = time.monotonic()
        for i in range(messages):
            actor.send(i)
        enqueued = time.monotonic()
        worker = dramatiq.Worker(
            broker, queues={"bench.noop"}, worker_threads=threads, worker_timeout=100
        )
        consume_start = time.monotonic()
        worker.start()
        finished.wait(timeout)
        consumed = time.monotonic()
    finally:
        if worker is not None:
            worker.stop(timeout=10_000)
        broker.close()
        common.flush_redis(broker_url)
    return {
        "messages": messages,
        "threads": threads,
        "consumed": count[0],
        "enqueue_per_second": round(messages / (enqueued - started), 1),
        "consume_per_second": round(count[0] / (consumed - consume_start), 1),
    }


# -- main ---------------------------------------------------------------------------------------


def _print_e2e(res: dict[str, Any]) -> None:
    s = Setting(**res["setting"])
    print(f"  [{s.label()}]")
    print(
        f"    {res['paid']}/{res['orders']} paid; {res['orders_per_second']} orders/s "
        f"(first create -> last paid_at {res['db_seconds']}s); wall {res['wall_rate']}/s; "
        f"creates alone {res['create_rate']}/s; time to paid p50 "
        f"{res['time_to_paid_p50']:.2f}s p95 {res['time_to_paid_p95']:.2f}s; "
        f"sandbox create/status calls {res['sandbox_create_calls']}/"
        f"{res['sandbox_status_calls']}"
    )
    parts = ", ".join(
        f"{k} {v:.1f}s ({100 * v / res['cpu_wall']:.0f}%)" for k, v in res["cpu_seconds"].items()
    )
    print(f"    CPU over {res['cpu_wall']}s: {parts}")
    per_order = ", ".join(f"{k} {v:.2f}" for k, v in res["cpu_ms_per_order"].items())
    print(f"    CPU ms per order: {per_order}")
    if res.get("arrival"):
        print(f"    arrival: {res['arrival']:g} orders/s, created at {res['create_rate']}/s")
    for line in res.get("profile", []):
        print(f"    {line}")
    if res["paid"] < res["orders"]:
        print(f"    NOT ALL PAID: {res['statuses']}")


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one flat script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2000, help="orders per end-to-end run")
    parser.add_argument(
        "--settings",
        default="1:0.2,1:0.5,2:0.2,2:0.5",
        help="end-to-end runs as workers:poll_first[:http_concurrency], comma-separated",
    )
    parser.add_argument("--threads", type=int, default=2, help="dramatiq threads per worker")
    parser.add_argument("--interval", type=float, default=0.2, help="sweeper interval, s")
    parser.add_argument("--batch", type=int, default=500, help="sweeper batch")
    parser.add_argument(
        "--rate", type=float, default=5000.0, help="PAYDISPATCH_SANDBOX_RATE (default 100)"
    )
    parser.add_argument("--in-flight", type=int, default=500, help="worker --in-flight")
    parser.add_argument("--creators", type=int, default=4, help="threads calling create")
    parser.add_argument(
        "--arrival",
        type=float,
        help="orders/s: create the orders at this steady rate instead of all at once",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per end-to-end run, s")
    parser.add_argument("--pgbench-clients", type=int, default=8)
    parser.add_argument("--pgbench-threads", type=int, default=2)
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument(
        "--pgbench-extra-poll",
        action="store_true",
        help="also run the script with one extra (pending) poll per lifecycle",
    )
    parser.add_argument("--noop-messages", type=int, default=20_000)
    parser.add_argument("--redis-db", type=int, default=7, help="Redis database to use (flushed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the first worker during each run"
    )
    parser.add_argument("--skip", default="", help="parts to skip: e2e,pgbench,noop")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    base = Setting(
        threads=args.threads, interval=args.interval, batch=args.batch, rate=args.rate,
        in_flight=args.in_flight,
    )  # fmt: skip
    settings = parse_settings(args.settings, base)

    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    broker_url = common.redis_db_url(found.broker_url, args.redis_db)
    results: dict[str, Any] = {"machine": info, "argv": sys.argv, "e2e": []}

    if "e2e" not in skip:
        arrival = f"arriving at {args.arrival:g}/s" if args.arrival else "created at once"
        print(f"\na. end to end, {args.orders} orders {arrival}, scenario pay_after:0")
        sandbox_children = common.Children()
        try:
            sandbox, sandbox_url = common.start_sandbox(sandbox_children)
            for setting in settings:
                res = run_e2e(
                    found, sandbox, sandbox_url, broker_url, setting,
                    n=args.orders, creators=args.creators, timeout=args.timeout,
                    profile=args.profile, arrival=args.arrival,
                )  # fmt: skip
                results["e2e"].append(res)
                _print_e2e(res)
        finally:
            sandbox_children.stop_all()
        complete = [r for r in results["e2e"] if r["paid"] >= r["orders"]]
        if complete:
            best = max(complete, key=lambda r: r["orders_per_second"] or 0)
            results["best_e2e"] = best
            print(f"  best: {best['orders_per_second']} orders/s with "
                  f"{Setting(**best['setting']).label()}")  # fmt: skip

    if "pgbench" not in skip:
        print(f"\nb. pgbench lifecycle ({PGBENCH_SCRIPT.name}), same server, fresh database")
        results["pgbench"] = []
        for extra_poll in (0, 1) if args.pgbench_extra_poll else (0,):
            res = run_pgbench(
                found, clients=args.pgbench_clients, threads=args.pgbench_threads,
                duration=args.pgbench_seconds, extra_poll=extra_poll,
            )  # fmt: skip
            results["pgbench"].append(res)
            print(
                f"  extra_poll={extra_poll}: {res['lifecycles_per_second']:.1f} lifecycles/s "
                f"(latency {res['latency_ms']} ms, failed {res['failed']}, "
                f"{res['orders_paid']}/{res['orders_total']} paid, {res['events']} events)"
            )
        print(f"  command: {results['pgbench'][0]['command']}")

    if "noop" not in skip:
        print(f"\nc. dramatiq no-op, {args.noop_messages} messages, {args.threads} threads")
        res = run_noop(broker_url, messages=args.noop_messages, threads=args.threads, timeout=120)
        results["noop"] = res
        print(
            f"  enqueue {res['enqueue_per_second']}/s (one send per message, as the sweeper), "
            f"consume {res['consume_per_second']}/s ({res['consumed']} consumed)"
        )

    best = results.get("best_e2e")
    if best and results.get("pgbench"):
        which = min(
            results["pgbench"],
            key=lambda r: abs(
                r["extra_poll"] - max(0, round(best["sandbox_status_calls"] / best["orders"]) - 1)
            ),
        )
        ratio = best["orders_per_second"] / which["lifecycles_per_second"]
        results["ratio"] = ratio
        verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
        print(
            f"\nd. end-to-end / pgbench (extra_poll={which['extra_poll']}): "
            f"{best['orders_per_second']} / {which['lifecycles_per_second']:.1f} = "
            f"{100 * ratio:.1f}% (target >= {100 * TARGET_RATIO:.0f}%: {verdict})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
