"""HTTP API throughput: ``POST /v1/orders`` and ``GET /pay/{id}/status`` at 32 connections, beside
the same server's trivial ``/healthz`` and pgbench doing the single insert, in one run.

    .venv/bin/python -m bench.api [--seconds 10] [--connections 32] [--workers 2]

Starts ``paydispatch api`` as a real process on a fresh database (embedded PostgreSQL and Redis
unless PAYDISPATCH_DATABASE_URL / PAYDISPATCH_BROKER_URL are set), drives it from a small
asyncio HTTP/1.1 keep-alive client (one process, so the load generator costs little CPU), and
runs pgbench on the same PostgreSQL. All traffic stays on 127.0.0.1. Not a test: it prints a
Markdown report (``--write FILE`` also saves it; docs/benchmarks.md section 4 holds the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import common
from dispatcher.api.keys import ApiKeys
from orders.repository import open_pool

# What OrderRepository.create runs for POST /v1/orders, as one pgbench transaction; and the
# bare single-row insert.
CREATE_SQL = """\\set ref random(1, 1000000000000000)
BEGIN;
INSERT INTO orders (site, user_id, amount, currency, adapter, description, metadata,
    expires_at, idempotency_key, request_hash, next_run_at, return_url)
VALUES ('pgbench', 'u1', 1999, 'USD', 'sandbox', '', '{}'::jsonb, now() + interval '15 minutes',
    'pgb-' || :client_id || '-' || :ref, md5(:ref::text), now(), 'http://127.0.0.1/pay/x')
ON CONFLICT DO NOTHING RETURNING id AS order_id \\gset
INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
VALUES (:order_id, NULL, 'new', 'site', '{}'::jsonb);
SELECT pg_notify('paydispatch_orders', 'sandbox');
COMMIT;
"""
INSERT_SQL = """\\set ref random(1, 1000000000000000)
INSERT INTO orders (site, user_id, amount, currency, adapter, description, metadata,
    expires_at, idempotency_key, request_hash, next_run_at)
VALUES ('pgbench', 'u1', 1999, 'USD', 'sandbox', '', '{}'::jsonb, now() + interval '15 minutes',
    'pgi-' || :client_id || '-' || :ref, md5(:ref::text), now())
ON CONFLICT DO NOTHING;
"""


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: str = ""  # CPU per request by process group, for the notes under the table

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        return (
            f"| {self.name} | {self.rate:,.0f} | {self.pct(0.50):.1f} | {self.pct(0.99):.1f} "
            f"| {self.requests:,} | {self.errors} |"
        )


async def _connection(
    *,
    host: str,
    port: int,
    make: Callable[[], bytes],
    expect: int,
    until: float,
    latencies: list[float],
    errors: list[int],
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    done = 0
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(make())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != expect:
                errors.append(status)
            done += 1
    finally:
        writer.close()
    return done


async def _load(
    url: str, make: Callable[[], bytes], expect: int, connections: int, seconds: float
) -> tuple[int, list[float], list[int], float]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    until = started + seconds
    counts = await asyncio.gather(
        *(
            _connection(
                host=host,
                port=int(port),
                make=make,
                expect=expect,
                until=until,
                latencies=latencies,
                errors=errors,
            )
            for _ in range(connections)
        )
    )
    return sum(counts), latencies, errors, time.perf_counter() - started


def drive(
    name: str,
    url: str,
    make: Callable[[], bytes],
    expect: int,
    args: argparse.Namespace,
    *,
    meter: common.CpuMeter,
) -> Result:
    asyncio.run(_load(url, make, expect, args.connections, args.warmup))  # warm-up, not counted
    meter.start()
    count, latencies, errors, took = asyncio.run(
        _load(url, make, expect, args.connections, args.seconds)
    )
    used = meter.stop()
    result = Result(name, count, len(errors), took, latencies)
    per_request = ", ".join(
        f"{group} {cpu / max(count, 1) * 1e6:.0f}" for group, cpu in used.items()
    )
    result.cpu = f"CPU µs per request: {per_request}"
    print(result.row(), flush=True)
    return result


def pgbench(db_url: str, script: str, name: str, args: argparse.Namespace) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as fh:
        fh.write(script)
    try:
        argv = [
            common.pg_bin("pgbench"), "-n", "-M", "prepared", "-c", str(args.connections),
            "-j", "2", "-T", str(int(args.seconds)), "-r", "-f", fh.name, db_url,
        ]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    finally:
        os.unlink(fh.name)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    mean = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    result = Result(name, count, 0, count / tps, [mean / 1000])
    print(f"| {name} | {tps:,.0f} | {mean:.1f} (mean) | - | {count:,} | 0 |", flush=True)
    return result


def start_api(
    children: common.Children, found: object, db_url: str, args: argparse.Namespace
) -> tuple[str, str, common.Child]:
    """``paydispatch api`` on a free port over ``db_url``; returns its URL and a site key."""
    port = common.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env |= {
        "PAYDISPATCH_DATABASE_URL": db_url,
        "PAYDISPATCH_BROKER_URL": getattr(found, "broker_url", ""),
        "PAYDISPATCH_ADAPTERS": "sandbox",
        "PAYDISPATCH_PUBLIC_URL": url,
        "PAYDISPATCH_LOG_FORMAT": "json",
    }
    argv = ["-m", "dispatcher.cli", "api", "--port", str(port), "--workers", str(args.workers)]
    server = children.spawn("api", argv, env)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start:\n{server.log_text()[-3000:]}")
        time.sleep(0.1)
    pool = open_pool(db_url, max_size=1, name="bench-keys")
    _, key = ApiKeys(pool).create("bench")
    pool.close()
    return url, key, server


def http_scenarios(
    url: str, key: str, args: argparse.Namespace, meter: common.CpuMeter
) -> list[Result]:
    host = url.removeprefix("http://")
    head = f"Host: {host}\r\n"
    auth = f"Authorization: Bearer {key}\r\n"
    health = f"GET /healthz HTTP/1.1\r\n{head}\r\n".encode()

    def create_request() -> bytes:
        body = json.dumps(
            {"user_id": f"u{random.randrange(1000)}", "amount": 1999, "currency": "USD",
             "adapter": "sandbox", "description": "bench"}
        ).encode()  # fmt: skip
        return (
            f"POST /v1/orders HTTP/1.1\r\n{head}{auth}Idempotency-Key: {uuid.uuid4()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    rows = [
        drive("GET /healthz (trivial, same server)", url, lambda: health, 200, args, meter=meter),
        drive("POST /v1/orders", url, create_request, 201, args, meter=meter),
    ]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        created = [o["id"] for o in http.get("/v1/orders", params={"limit": 500}).json()["items"]]

    def status_request() -> bytes:
        return f"GET /pay/{random.choice(created)}/status HTTP/1.1\r\n{head}\r\n".encode()

    rows.append(drive("GET /pay/{id}/status", url, status_request, 200, args, meter=meter))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--write", type=Path, help="also write the Markdown report to this file")
    args = parser.parse_args()

    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    children = common.Children()
    try:
        with common.fresh_database(found, "api") as db_url:
            url, key, server = start_api(children, found, db_url, args)
            meter = common.CpuMeter({server.pid: "api"})
            print("\n| what | requests/s | p50 ms | p99 ms | requests | errors |")
            print("|---|---:|---:|---:|---:|---:|")
            rows = http_scenarios(url, key, args, meter)
            children.stop_all()  # pgbench gets the machine to itself, as the API did
            rows.append(pgbench(db_url, INSERT_SQL, "pgbench: single INSERT", args))
            rows.append(pgbench(db_url, CREATE_SQL, "pgbench: create transaction", args))
    finally:
        children.stop_all()

    create, insert, create_tx = rows[1], rows[3], rows[4]
    share = create.rate / insert.rate * 100
    verdict = "met" if share >= 40 else "NOT met"
    summary = (
        f"\norder creation: {create.rate:,.0f}/s = {share:.0f}% of pgbench's single-insert rate "
        f"({insert.rate:,.0f}/s) and {create.rate / create_tx.rate * 100:.0f}% of the same "
        f"create transaction under pgbench ({create_tx.rate:,.0f}/s); target >= 40%: {verdict}"
    )
    print()
    for r in rows:
        if r.cpu:
            print(f"{r.name}: {r.cpu}")
    print(summary)
    if args.write:
        write_doc(info, rows, summary, args)
    return 0


def write_doc(
    info: dict[str, object], rows: list[Result], summary: str, args: argparse.Namespace
) -> None:
    lines = [
        "# API benchmark",
        "",
        "`POST /v1/orders` and `GET /pay/{id}/status` against `paydispatch api`, beside the same",
        "server's trivial `/healthz` and pgbench on the same PostgreSQL, in one run.",
        "",
        "```sh",
        f".venv/bin/python -m bench.api --seconds {args.seconds:g} --connections "
        f"{args.connections} --workers {args.workers} --write FILE",
        "```",
        "",
        f"- machine: {info['nproc']} cores ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}, PostgreSQL {info['postgresql']} {info['postgresql_settings']}, "
        f"Redis {info['redis']}",
        f"- services: {info['services']}",
        f"- code: {info['code']}, {info['date']}",
        f"- {args.connections} keep-alive connections from one asyncio process on this machine, "
        f"{args.seconds:g} s measured after {args.warmup:g} s of warm-up; uvicorn with "
        f"{args.workers} worker process(es); pgbench `-M prepared -c {args.connections} -j 2`.",
        "",
        "| what | requests/s | p50 ms | p99 ms | requests | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.name.startswith("pgbench"):
            lines.append(
                f"| {r.name} | {r.rate:,.0f} | {r.pct(0.5):.1f} (mean) | - | {r.requests:,} | 0 |"
            )
        else:
            lines.append(r.row())
    lines += [""] + [f"- {r.name}: {r.cpu}" for r in rows if r.cpu] + ["", summary.strip(), ""]
    args.write.write_text("\n".join(lines))
    print(f"wrote {args.write}")


if __name__ == "__main__":
    sys.exit(main())
