"""Polls per second with thousands of awaiting orders and a payment system answering in 200 ms.

    .venv/bin/python -m bench.polls            # or: .venv/bin/python bench/polls.py

The sandbox (its own process) delays every ``status`` answer by ``--latency-ms`` (a latency
fault at rate 1.0); ``--orders`` orders with the scenario ``never`` and a long expiry are
submitted by the real daemon (``paydispatch sweeper`` + ``--workers`` ``paydispatch worker``
processes). The poll policy has a fixed ceiling: POLL_FIRST = POLL_CAP = ``--cap`` and
POLL_FACTOR = 1, so after its first poll an order waits U(0.2 s, cap) — on average about
cap / 2 — between polls (full jitter). A poll cycle also holds the answer's latency, so the
demand — polls/s if every poll ran exactly when due — is ``orders / (cap / 2 + latency)``.

Once every order is awaiting payment and the first polls are under way, it samples for
``--duration`` seconds, every second: status calls the sandbox served (polls/s achieved), the
overdue orders nobody has claimed yet and how late they are (``now() - next_run_at``), the
orders claimed but not finished, and the broker queue's length. It reports whether the load is
kept on schedule — p95 lateness under a second in every minute, and not growing — with the
lateness minute by minute, which process used the CPU (and how much per poll), the ceiling
that CPU sets on this machine (the daemon's own share and the sandbox's, and the cores the
demand needs), and each process's resident memory. Any lateness lengthens each cycle, so the
polls/s achieved is below the demand by about the mean lateness over the cycle length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psycopg
import redis

from adapters.sandbox import SCENARIO_METADATA_KEY
from bench import common
from dispatcher.steps import queue_name
from orders import Money, NewOrder
from orders.db import open_pool
from orders.repository import OrderRepository

MIN_DELAY = 0.2  # dispatcher.policy.MIN_DELAY
LEASE = 120.0  # paydispatch sweeper --lease default

# "late": how long a due poll has been waiting. Unclaimed: now() - next_run_at. Claimed (in the
# broker, in a worker, or in its HTTP call): now() - claim time (= lease_until - lease), since the
# sweeper claims a row within one sweep of it falling due.
SAMPLE_SQL = """
WITH a AS (
    SELECT lease_token IS NOT NULL AS claimed,
           lease_token IS NULL AND next_run_at <= now() AS overdue,
           CASE WHEN lease_token IS NOT NULL
                THEN extract(epoch FROM now() - (lease_until - %(lease)s * interval '1 second'))
                WHEN next_run_at <= now() THEN extract(epoch FROM now() - next_run_at)
           END AS late,
           polls
    FROM orders WHERE status = 'awaiting_payment'
)
SELECT
    count(*) AS awaiting,
    count(*) FILTER (WHERE overdue) AS overdue,
    coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY late) FILTER (WHERE overdue), 0),
    coalesce(max(late) FILTER (WHERE overdue), 0),
    count(*) FILTER (WHERE claimed) AS claimed,
    coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY late), 0) AS late_p50,
    coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY late), 0) AS late_p95,
    coalesce(max(late), 0) AS late_max,
    sum(polls) AS polls
FROM a
"""


def mean_gap(cap: float) -> float:
    """Mean of max(U(0, cap), MIN_DELAY): the average wait between two polls of one order."""
    return (cap * cap + MIN_DELAY * MIN_DELAY) / (2 * cap)


def _create_all(repo: OrderRepository, n: int, creators: int, run_id: str) -> None:
    new_orders = [
        NewOrder(
            site="bench",
            site_ref=f"{run_id}-{i}",
            user_id=f"user-{i % 50}",
            money=Money(1000 + i % 500, "USD"),
            adapter="sandbox",
            description=f"Top-up #{i}",
            expires_in=timedelta(hours=2),
            metadata={SCENARIO_METADATA_KEY: "never"},
        )
        for i in range(n)
    ]
    with ThreadPoolExecutor(creators) as creating:
        list(creating.map(repo.create, new_orders))


def _third(values: list[float], which: int) -> float:
    size = max(1, len(values) // 3)
    part = values[which * size : (which + 1) * size] or values
    return statistics.fmean(part) if part else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:  # noqa: PLR0915 - one flat script
    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    broker_url = common.redis_db_url(found.broker_url, args.redis_db)
    demand = args.orders / (mean_gap(args.cap) + args.latency_ms / 1000)
    policy = {
        "poll_first": str(args.cap),
        "poll_factor": "1",
        "poll_cap": str(args.cap),
        "rate": str(args.rate),
        "concurrency": str(args.concurrency),
        "timeout": "10",
    }
    print(
        f"\n{args.orders} orders awaiting payment, sandbox status answers after "
        f"{args.latency_ms} ms; poll every U({MIN_DELAY}, {args.cap}) s -> demand "
        f"{demand:.0f} polls/s; {args.workers} worker(s) x {args.threads} threads, "
        f"in-flight {args.in_flight}, PAYDISPATCH_SANDBOX_* {policy}"
    )
    result: dict[str, Any] = {"machine": info, "argv": sys.argv, "demand": demand}
    children = common.Children()
    sandbox_children = common.Children()
    rconn = redis.Redis.from_url(broker_url)
    try:
        sandbox, sandbox_url = common.start_sandbox(sandbox_children)
        control = httpx.Client(base_url=sandbox_url, timeout=10)
        control.post(
            "/_control/faults/status",
            json={"rate": 1.0, "choices": [{"kind": "latency", "ms": args.latency_ms}]},
        ).raise_for_status()
        with common.fresh_database(found, "polls") as db_url:
            common.flush_redis(broker_url)
            env = common.daemon_env(db_url, broker_url, sandbox_url, **policy)
            _sweeper, workers = common.spawn_daemon(
                children,
                env,
                workers=args.workers,
                threads=args.threads,
                in_flight=args.in_flight,
                sweeper_args=["--interval", str(args.interval), "--batch", str(args.batch),
                              "--lease", str(LEASE)],
            )  # fmt: skip
            pool = open_pool(db_url, max_size=args.creators + 1, name="bench-polls")
            conn = psycopg.connect(db_url, autocommit=True)
            repo = OrderRepository(pool, {"sandbox": timedelta(hours=2)})
            try:
                t0 = time.monotonic()
                _create_all(repo, args.orders, args.creators, f"polls{int(time.time())}")
                print(f"created {args.orders} orders in {time.monotonic() - t0:.1f}s")
                while True:
                    row = conn.execute(
                        "SELECT count(*) FROM orders WHERE status = 'awaiting_payment'"
                    ).fetchone()
                    if row and row[0] >= args.orders * args.awaiting_share:
                        break
                    if time.monotonic() - t0 > args.setup_timeout:
                        raise RuntimeError(f"only {row} orders awaiting after setup timeout")
                    time.sleep(0.2)
                result["awaiting_at_start"] = row[0] if row else 0
                submitted = time.monotonic() - t0
                print(f"all awaiting payment after {submitted:.1f}s; warming up {args.warmup}s")
                result["submit_seconds"] = round(submitted, 1)
                time.sleep(args.warmup)
                named = {c.pid: c.name for c in children.items} | {sandbox.pid: "sandbox"}
                postmaster = common.postmaster_pid(db_url)
                if postmaster is not None:  # the backend is a process of this machine
                    # The sampling query reads every awaiting row each second: the bench's own.
                    named[conn.info.backend_pid] = "bench's sampling query (its PostgreSQL backend)"
                spy = common.start_profile(children, workers[0]) if args.profile else None
                meter = common.CpuMeter(named, postmaster=postmaster)
                meter.start()
                samples = _sample(conn, control, rconn, args.duration)
                meter.stop()
                if spy is not None:
                    result["profile"] = common.stop_profile(children, *spy)
                result["cpu_seconds"] = {k: round(v, 2) for k, v in meter.result.items()}
                result["cpu_wall"] = round(meter.wall, 2)
                result["cpu_lines"] = meter.describe()
                result["rss_mib"] = {k: [round(v, 1) for v in m] for k, m in meter.rss.items()}
            finally:
                conn.close()
                repo.close()
                pool.close()
                children.stop_all(grace=15)
        control.close()
    finally:
        children.stop_all(grace=15)
        sandbox_children.stop_all(grace=15)
        rconn.close()
    result["samples"] = samples
    return _summarise(result, args)


def _sample(
    conn: psycopg.Connection[Any], control: httpx.Client, rconn: redis.Redis, duration: float
) -> list[dict[str, Any]]:
    """One row a second: polls/s at the sandbox, overdue lag, claimed, broker queue length."""
    queue_key = f"paydispatch:{queue_name('sandbox')}"
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    last_calls = control.get("/_control/calls").json()["status"]
    last_t = start
    print(
        " t(s)  polls/s | unclaimed overdue: n   p95   max | claimed  queue | "
        "late (all due): p50   p95   max"
    )
    while time.monotonic() - start < duration:
        time.sleep(max(0.0, 1.0 - (time.monotonic() - last_t)))
        calls = control.get("/_control/calls").json()["status"]
        now = time.monotonic()
        row = conn.execute(SAMPLE_SQL, {"lease": LEASE}).fetchone()
        queued = int(rconn.llen(queue_key))  # type: ignore[arg-type]
        assert row is not None
        sample = {
            "t": round(now - start, 1),
            "polls_per_second": round((calls - last_calls) / (now - last_t), 1),
            "awaiting": int(row[0]),
            "overdue": int(row[1]),
            "overdue_p95": round(float(row[2]), 3),
            "overdue_max": round(float(row[3]), 3),
            "claimed": int(row[4]),
            "late_p50": round(float(row[5]), 3),
            "late_p95": round(float(row[6]), 3),
            "late_max": round(float(row[7]), 3),
            "queue": queued,
            "status_calls": calls,
        }
        samples.append(sample)
        print(
            f"{sample['t']:5.0f} {sample['polls_per_second']:8.0f} | {sample['overdue']:20d} "
            f"{sample['overdue_p95']:5.2f} {sample['overdue_max']:5.2f} | "
            f"{sample['claimed']:7d} {queued:6d} | {sample['late_p50']:19.2f} "
            f"{sample['late_p95']:5.2f} {sample['late_max']:5.2f}"
        )
        last_calls, last_t = calls, now
    return samples


def _per_minute(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each minute of the run: polls/s, lateness p95 (mean and worst of its samples), max."""
    minutes: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        minutes.setdefault(int(sample["t"] // 60), []).append(sample)
    rows = []
    for minute, part in sorted(minutes.items()):
        rows.append(
            {
                "minute": minute + 1,
                "samples": len(part),
                "polls_per_second": round(statistics.fmean(s["polls_per_second"] for s in part)),
                "late_p95_mean": round(statistics.fmean(s["late_p95"] for s in part), 2),
                "late_p95_worst": max(s["late_p95"] for s in part),
                "late_max": max(s["late_max"] for s in part),
            }
        )
    return rows


def _ceiling(cpu_ms_per_poll: dict[str, float], demand: float, cores: int) -> dict[str, float]:
    """What the demand needs and what this machine can give, from each process's CPU a poll:
    the daemon's own (workers, sweeper, PostgreSQL, Redis) and the payment system's (the
    sandbox, on the same cores here); the bench's own process and sampling query left out."""
    sandbox = cpu_ms_per_poll.get("sandbox", 0.0)
    daemon = sum(
        ms
        for name, ms in cpu_ms_per_poll.items()
        if name != "sandbox" and not name.startswith("bench")
    )
    return {
        "daemon_ms": round(daemon, 3),
        "sandbox_ms": round(sandbox, 3),
        "cores_for_demand_daemon": round(demand * daemon / 1000, 2),
        "cores_for_demand_with_sandbox": round(demand * (daemon + sandbox) / 1000, 2),
        "ceiling_polls_per_second": round(1000 * cores / (daemon + sandbox)) if daemon else 0,
    }


def _summarise(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    samples = result["samples"]
    span = samples[-1]["t"] if samples else 0
    first_calls = samples[0]["status_calls"] - samples[0]["polls_per_second"] if samples else 0
    achieved = (samples[-1]["status_calls"] - first_calls) / span if span else 0.0
    p95 = [s["late_p95"] for s in samples]
    worst = [s["late_max"] for s in samples]
    overdue_p95 = [s["overdue_p95"] for s in samples]
    demand = result["demand"]
    summary = {
        "polls_per_second": round(achieved, 1),
        "demand_per_second": round(demand, 1),
        "achieved_share": round(achieved / demand, 3) if demand else None,
        "late_p95_first_third": round(_third(p95, 0), 2),
        "late_p95_last_third": round(_third(p95, 2), 2),
        "late_max_over_run": max(worst, default=0.0),
        "unclaimed_overdue_p95_mean": round(statistics.fmean(overdue_p95), 2) if samples else 0,
        "claimed_mean": round(statistics.fmean(s["claimed"] for s in samples)) if samples else 0,
        "queue_mean": round(statistics.fmean(s["queue"] for s in samples)) if samples else 0,
    }
    minutes = _per_minute(samples)
    summary["per_minute"] = minutes
    growing = summary["late_p95_last_third"] > max(1.0, 1.5 * summary["late_p95_first_third"])
    on_schedule = not growing and summary["late_p95_last_third"] < 1.0
    on_schedule = on_schedule and all(m["late_p95_mean"] < 1.0 for m in minutes)
    polls = achieved * result["cpu_wall"]
    summary["cpu_ms_per_poll"] = {
        k: round(1000 * v / polls, 3) for k, v in result["cpu_seconds"].items() if polls
    }
    cores = len(os.sched_getaffinity(0))
    summary["ceiling"] = ceiling = _ceiling(summary["cpu_ms_per_poll"], demand, cores)
    summary["lag_growing"] = growing
    summary["on_schedule"] = on_schedule
    result["summary"] = summary
    print(
        f"\npolls/s achieved {achieved:.0f} of {demand:.0f} demanded "
        f"({100 * achieved / demand:.0f}%); lateness of due polls p95 "
        f"{summary['late_p95_first_third']}s (first third) -> {summary['late_p95_last_third']}s "
        f"(last third), max {summary['late_max_over_run']}s; of that, waiting to be claimed: "
        f"p95 ~{summary['unclaimed_overdue_p95_mean']}s; claimed (in the broker or a worker) "
        f"~{summary['claimed_mean']}, of which in the broker queue ~{summary['queue_mean']}"
    )
    print(" minute  polls/s  late p95 (mean, worst of its samples)  late max")
    for m in minutes:
        print(
            f"{m['minute']:7d} {m['polls_per_second']:8d} {m['late_p95_mean']:10.2f} "
            f"{m['late_p95_worst']:6.2f} {m['late_max']:31.2f}"
        )
    print(
        "load kept on schedule (p95 lateness under 1 s in every minute, not growing): "
        + ("YES" if on_schedule else "NO")
        + ("; lag is GROWING over the run" if growing else "")
    )
    for line in result["cpu_lines"]:
        print(line)
    print(
        "CPU ms per poll: "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary["cpu_ms_per_poll"].items())
    )
    print(
        f"ceiling on these {cores} cores: {ceiling['ceiling_polls_per_second']} polls/s at "
        f"{ceiling['daemon_ms']:.3f} ms a poll for the daemon (workers, sweeper, PostgreSQL, "
        f"Redis) + {ceiling['sandbox_ms']:.3f} ms for the sandbox's answer; the demand of "
        f"{demand:.0f} polls/s needs {ceiling['cores_for_demand_daemon']} cores for the daemon, "
        f"{ceiling['cores_for_demand_with_sandbox']} with the sandbox beside it"
    )
    print(
        "resident memory (now, peak) MiB: "
        + ", ".join(f"{k} {now:.0f}/{peak:.0f}" for k, (now, peak) in result["rss_mib"].items())
    )
    for line in result.get("profile", []):
        print(f"  {line}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--latency-ms", type=int, default=200, help="sandbox status latency")
    parser.add_argument("--cap", type=float, default=10.0, help="POLL_FIRST = POLL_CAP, s")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=200, help="HTTP calls in flight")
    parser.add_argument("--rate", type=float, default=5000.0, help="PSP calls/s per worker")
    parser.add_argument("--interval", type=float, default=0.2, help="sweeper interval, s")
    parser.add_argument("--batch", type=int, default=500, help="sweeper batch")
    parser.add_argument("--creators", type=int, default=4)
    parser.add_argument("--setup-timeout", type=float, default=90.0)
    parser.add_argument(
        "--awaiting-share",
        type=float,
        default=1.0,
        help="start measuring once this share of the orders awaits payment (default: all)",
    )
    parser.add_argument("--redis-db", type=int, default=7, help="Redis database (flushed)")
    parser.add_argument("--profile", action="store_true", help="py-spy the first worker")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
