"""HTTP API throughput: ``POST /v1/orders`` and ``GET /pay/{id}/status`` at 32 connections, beside
the same server's trivial ``/healthz`` and pgbench doing the single insert, in one run.

    .venv/bin/python -m bench.api [--seconds 10] [--connections 32] [--workers 2]

Starts ``paydispatch api`` as a real process on a fresh database (embedded PostgreSQL and Redis
unless PAYDISPATCH_DATABASE_URL / PAYDISPATCH_BROKER_URL are set), drives it with ``wrk`` (a C
load generator, as pgbench is a C client; ``apt-get install wrk``) or, without it, a small
asyncio HTTP/1.1 keep-alive client in this process, and runs pgbench on the same PostgreSQL.
All traffic stays on 127.0.0.1. Not a test: it prints a Markdown report (``--write FILE`` also
saves it; docs/benchmarks.md holds the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench import common
from dispatcher.api.keys import ApiKeys
from orders.db import open_pool

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
    sent: int = 0  # requests including the warm-up's, to check creates against the table
    percentiles: dict[str, float] | None = None  # from wrk, which keeps no single latencies

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if self.percentiles is not None:
            return self.percentiles.get(f"{q * 100:.0f}%", float("nan"))
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
    warm, *_ = asyncio.run(_load(url, make, expect, args.connections, args.warmup))  # not timed
    meter.start()
    count, latencies, errors, took = asyncio.run(
        _load(url, make, expect, args.connections, args.seconds)
    )
    used = meter.stop()
    result = Result(name, count, len(errors), took, latencies, sent=warm + count)
    _cpu_note(result, used, meter, count)
    print(result.row(), flush=True)
    return result


# wrk (C, like pgbench's client) when installed: the load generator's own CPU then stays small.
WRK_CREATE = """
local n = 0
local threads = 0
-- setup runs in the main Lua state; thread:set makes "tid" a global of that thread's own state
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function request()
  n = n + 1
  local body = string.format(
    '{"user_id":"u%d","amount":1999,"currency":"USD","adapter":"sandbox","description":"bench"}',
    math.random(1000))
  return wrk.format("POST", "/v1/orders", {
    ["Authorization"] = "Bearer KEY",
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("wrk-RUN-%s-%d", tid, n),
  }, body)
end
"""
WRK_STATUS = """
local ids = {}
for line in io.lines("IDS") do ids[#ids + 1] = line end
function request()
  return wrk.format("GET", "/pay/" .. ids[math.random(#ids)] .. "/status")
end
"""


def drive_wrk(
    name: str,
    url: str,
    script: str | None,
    args: argparse.Namespace,
    *,
    meter: common.CpuMeter,
) -> Result:
    """The same load from ``wrk -t2 -c<connections>``; latency percentiles from ``--latency``.

    ``RUN`` in the script becomes a new token for the warm-up and again for the measured run, so
    the measured creates carry keys the warm-up did not use: they are creates, not replays.
    """

    def run(seconds: float, timeout: float) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write((script or "").replace("RUN", uuid.uuid4().hex[:12]))
        try:
            argv = ["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{seconds:g}s"]
            argv += ["--latency", "-s", fh.name, url]
            return subprocess.run(
                argv, capture_output=True, text=True, check=True, timeout=timeout
            ).stdout
        finally:
            os.unlink(fh.name)

    warm = _wrk_requests(run(args.warmup, 120))
    meter.start()
    text = run(args.seconds, 600)
    used = meter.stop()
    count = _wrk_requests(text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result = Result(name, count, int(errors.group(1)) if errors else 0, meter.wall, [])
    result.sent = warm + count
    result.percentiles = {q: _wrk_ms(text, q) for q in ("50%", "99%")}
    _cpu_note(result, used, meter, count)
    print(result.row(), flush=True)
    return result


def _wrk_requests(text: str) -> int:
    return int(re.search(r"(\d+) requests in ([\d.]+)(m?s)", text).group(1))  # type: ignore[union-attr]


def _wrk_ms(text: str, q: str) -> float:
    found = re.search(rf"^\s*{re.escape(q)}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if found is None:
        return float("nan")
    value, unit = float(found.group(1)), found.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _cpu_note(result: Result, used: dict[str, float], meter: common.CpuMeter, count: int) -> None:
    per_request = ", ".join(f"{who} {cpu / max(count, 1) * 1e6:.0f}" for who, cpu in used.items())
    shares = meter.per_process.get("api", [])
    busy = sorted((cpu / meter.wall for cpu in shares if cpu > 0.05), reverse=True)
    split = " + ".join(f"{share:.0%}" for share in busy)
    result.cpu = f"CPU µs per request: {per_request}; API processes busy {split} of a core"


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
        "PAYDISPATCH_DEV": "1",  # the sandbox's published credentials are accepted
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
    url: str, key: str, db_url: str, args: argparse.Namespace, meter: common.CpuMeter
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

    names = ("GET /healthz (trivial, same server)", "POST /v1/orders", "GET /pay/{id}/status")
    if args.client == "wrk":
        rows = [drive_wrk(names[0], f"{url}/healthz", None, args, meter=meter)]
    else:
        rows = [drive(names[0], url, lambda: health, 200, args, meter=meter)]
    # Creates and pgbench's single insert take turns, so a drift of the machine's speed over the
    # run (it is shared, and fsync times wander) weighs on both sides of the ratio alike.
    for n in range(1, args.rounds + 1):
        name = f"{names[1]} (round {n})"
        if args.client == "wrk":
            rows.append(drive_wrk(name, url, WRK_CREATE.replace("KEY", key), args, meter=meter))
        else:
            rows.append(drive(name, url, create_request, 201, args, meter=meter))
        rows.append(pgbench(db_url, INSERT_SQL, f"pgbench: single INSERT (round {n})", args))
    # Every create request must have made its own order: a replay (200) or a lost create would
    # make the rate mean something else. The load generators count answered requests only, so
    # up to one request per connection and run may have made an order without being counted.
    sent = sum(r.sent for r in rows if r.name.startswith(names[1]))
    slack = args.connections * 2 * args.rounds
    with psycopg.connect(db_url) as conn:
        found = conn.execute("SELECT count(*) FROM orders WHERE site = 'bench'").fetchone()
    made = found[0] if found else 0
    if not sent <= made <= sent + slack:
        raise RuntimeError(f"{sent:,} answered create requests made {made:,} orders")
    print(f"\n{sent:,} answered create requests (warm-up included) made {made:,} orders\n")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        created = [o["id"] for o in http.get("/v1/orders", params={"limit": 500}).json()["items"]]

    def status_request() -> bytes:
        return f"GET /pay/{random.choice(created)}/status HTTP/1.1\r\n{head}\r\n".encode()

    if args.client == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".ids") as ids:
            ids.write("\n".join(created) + "\n")
            ids.flush()
            script = WRK_STATUS.replace("IDS", ids.name)
            rows.append(drive_wrk(names[2], url, script, args, meter=meter))
    else:
        rows.append(drive(names[2], url, status_request, 200, args, meter=meter))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument(
        "--rounds", type=int, default=3, help="create / single-insert rounds, taken in turn"
    )
    parser.add_argument("--write", type=Path, help="also write the Markdown report to this file")
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "asyncio"],
        default="auto",
        help="load generator: wrk (C, apt-get install wrk) or the built-in asyncio client; "
        "auto takes wrk when it is installed",
    )
    args = parser.parse_args()
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "asyncio"

    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    children = common.Children()
    try:
        with common.fresh_database(found, "api") as db_url:
            url, key, server = start_api(children, found, db_url, args)
            meter = common.CpuMeter({server.pid: "api"}, postmaster=common.postmaster_pid(db_url))
            print("\n| what | requests/s | p50 ms | p99 ms | requests | errors |")
            print("|---|---:|---:|---:|---:|---:|")
            rows = http_scenarios(url, key, db_url, args, meter)
            children.stop_all()
            rows.append(pgbench(db_url, CREATE_SQL, "pgbench: create transaction", args))
    finally:
        children.stop_all()

    creates = [r for r in rows if r.name.startswith("POST /v1/orders")]
    inserts = [r for r in rows if r.name.startswith("pgbench: single INSERT")]
    create_tx = rows[-1]
    create = statistics.median(r.rate for r in creates)
    insert = statistics.median(r.rate for r in inserts)
    share = create / insert * 100
    rounds = ", ".join(f"{c.rate / i.rate:.0%}" for c, i in zip(creates, inserts, strict=True))
    verdict = "met" if share >= 40 else "NOT met"
    summary = (
        f"\norder creation (median of {len(creates)} rounds): {create:,.0f}/s = {share:.0f}% of "
        f"pgbench's single-insert rate ({insert:,.0f}/s; round by round {rounds}) and "
        f"{create / create_tx.rate * 100:.0f}% of the same create transaction under pgbench "
        f"({create_tx.rate:,.0f}/s); target >= 40%: {verdict}"
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
        f"{args.connections} --workers {args.workers} --rounds {args.rounds} "
        f"--client {args.client} --write FILE",
        "```",
        "",
        f"- machine: {info['nproc']} cores ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}, PostgreSQL {info['postgresql']} {info['postgresql_settings']}, "
        f"Redis {info['redis']}",
        f"- services: {info['services']}",
        f"- code: {info['code']}, {info['date']}",
        f"- {args.connections} keep-alive connections from {args.client} on this machine, "
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
