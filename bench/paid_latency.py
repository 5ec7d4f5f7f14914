"""Time to paid as the buyer sees it (issue #15 item 3): from the payment system marking a payment
paid to the buyer's open status page showing it paid, at a steady rate of orders.

    .venv/bin/python -m bench.paid_latency [--rate 200] [--seconds 60] [--push both]

Starts the sandbox payment system, ``paydispatch api``, a sweeper and workers on a fresh
database (embedded PostgreSQL and Redis unless PAYDISPATCH_DATABASE_URL / PAYDISPATCH_BROKER_URL
are set), then, in this process, creates orders through ``POST /v1/orders`` at ``--rate`` per
second and follows each one with a buyer's status page that behaves as the page's own script
(``dispatcher/api/pages.py``): ``GET /pay/{id}``, then ``GET /pay/{id}/status`` after 1 s and
then every ``retry_after_ms``; when the state changes, the page is loaded again. When the page
first shows the invoice ready, the buyer pays a random short time later: the sandbox's control
API marks the invoice paid and answers its ``paid_at`` (the sandbox's own clock), which starts
the measured time; it ends when a load of the page shows "paid". ``--page open``: the page stays
open while the buyer pays elsewhere (another tab, a phone), as if the script had already sent
the buyer to the pay page once; ``--page return``: as the script does, the page leaves for the
pay page when the invoice is ready, and the sandbox's redirect after paying loads it again.

Each run is done twice, with a push notification (the sandbox's signed webhook to
``/v1/callbacks/sandbox``) and without one (polls only, the open page pulling the next poll
forward), each on a fresh database and a fresh daemon. Orders created in the first
``--warmup`` seconds are not measured. Not a test: it prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psycopg

from bench import common
from dispatcher.api.keys import ApiKeys
from orders.db import open_pool

GOAL_P50 = 2.0
FINAL = {"paid", "declined", "expired", "cancelled", "failed"}
_STATE = re.compile(rb'<body[^>]*data-state="([a-z]+)"')
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


class Http:
    """A small HTTP/1.1 keep-alive client: at most ``size`` connections to one server, each
    carrying one request at a time (as a browser's connection does)."""

    def __init__(self, url: str, size: int) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(size)

    async def request(
        self, method: str, path: str, headers: str = "", body: bytes = b""
    ) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        request = head.encode() + b"\r\n" + body
        async with self._slots:
            while self._idle:
                reader, writer = self._idle.pop()
                try:
                    return await self._exchange(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass  # the server closed an idle connection (keep-alive timeout): next
            reader, writer = await asyncio.open_connection(self.host, self.port)
            return await self._exchange(reader, writer, request)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, bytes]:
        try:
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(answer)
            if length is None:
                raise RuntimeError(f"no Content-Length in {answer[:200]!r}")
            content = await reader.readexactly(int(length.group(1)))
        except BaseException:
            writer.close()
            raise
        if b"connection: close" in answer.lower():
            writer.close()
        else:
            self._idle.append((reader, writer))
        return int(answer.split(b" ", 2)[1]), content

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


@dataclass
class Buyer:
    """One order followed by its buyer's page; times are unix seconds (the machine's clock)."""

    n: int
    order_id: str = ""
    created: float = 0.0
    ready: float | None = None  # the page first showed the invoice ready
    paid: float | None = None  # the sandbox's paid_at
    seen: float | None = None  # the page's status JSON said paid
    shown: float | None = None  # a load of the page showed paid
    db_paid: float | None = None  # orders.paid_at
    status_reads: int = 0
    page_loads: int = 0
    error: str | None = None


class Load:
    """Creates orders at a steady rate and follows each with its buyer's page."""

    def __init__(self, api_url: str, sandbox_url: str, key: str, args: argparse.Namespace):
        self.api = Http(api_url, args.connections)
        self.sandbox = Http(sandbox_url, max(8, args.connections // 4))
        self.auth = f"Authorization: Bearer {key}\r\n"
        self.args = args
        self.buyers: list[Buyer] = []
        self.run = uuid.uuid4().hex[:8]

    async def drive(self, total: int) -> float:
        """Start ``total`` buyers at ``rate``; returns when the last page is done."""
        rate = self.args.rate
        tasks = []
        started = time.monotonic()
        for n in range(total):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            buyer = Buyer(n)
            self.buyers.append(buyer)
            tasks.append(asyncio.ensure_future(self.buyer(buyer)))
        behind = time.monotonic() - (started + (total - 1) / rate)
        await asyncio.gather(*tasks)
        self.api.close()
        self.sandbox.close()
        return float(behind)

    async def buyer(self, b: Buyer) -> None:
        try:
            await asyncio.wait_for(self._buyer(b), self.args.timeout)
        except Exception as exc:  # one page's failure is counted, not fatal
            b.error = f"{type(exc).__name__}: {exc}"[:200]

    async def _buyer(self, b: Buyer) -> None:
        body = json.dumps(
            {"user_id": f"u{b.n % 1000}", "amount": 1000 + b.n % 500, "currency": "USD",
             "adapter": "sandbox", "description": f"paid latency #{b.n}"}
        ).encode()  # fmt: skip
        headers = f"{self.auth}Idempotency-Key: pl-{self.run}-{b.n}\r\n"
        headers += "Content-Type: application/json\r\n"
        status, answer = await self.api.request("POST", "/v1/orders", headers, body)
        if status != 201:
            raise RuntimeError(f"create answered {status}: {answer[:200]!r}")
        b.order_id = json.loads(answer)["id"]
        b.created = time.time()
        open_page = self.args.page == "open"
        paying: asyncio.Task[None] | None = None

        def on_ready(pay_url: str) -> None:
            nonlocal paying
            if paying is None:
                b.ready = time.time()
                paying = asyncio.ensure_future(self.pay(b, pay_url))

        # "open": the buyer pays in another tab, so this page never leaves (its script behaves
        # as once it has sent the buyer to the pay page); "return": it leaves for the pay page.
        try:
            left = await self.page(b, sent=open_page, on_ready=on_ready)
            if paying is not None:
                await paying
            if left:  # the sandbox sends the buyer back to the status page after paying
                await self.page(b, sent=True, on_ready=on_ready)
        finally:
            if paying is not None:
                paying.cancel()

    async def page(self, b: Buyer, *, sent: bool, on_ready: Any) -> bool:
        """One status page and its script until it shows a final state (False) or leaves for
        the pay page (True); a change of state loads the page again, as ``location.reload``."""
        while True:
            status, html = await self.api.request("GET", f"/pay/{b.order_id}")
            b.page_loads += 1
            found = _STATE.search(html)
            if status != 200 or found is None:
                raise RuntimeError(f"status page answered {status}")
            state = found.group(1).decode()
            if state in FINAL:
                if state == "paid":
                    b.shown = time.time()
                return False
            if state == "ready":
                pay_url = re.search(rb'data-pay-url="([^"]*)"', html)
                on_ready(pay_url.group(1).decode() if pay_url else "")
                if not sent:
                    return True
            delay = 1.0
            while True:
                await asyncio.sleep(delay)
                code, answer = await self.api.request("GET", f"/pay/{b.order_id}/status")
                b.status_reads += 1
                if code != 200:
                    delay = 3.0
                    continue
                shown = json.loads(answer)
                if shown["state"] != state:
                    if shown["state"] == "paid":
                        b.seen = time.time()
                    if shown["state"] == "ready" and not sent:
                        on_ready(shown["pay_url"] or "")
                        return True
                    break  # location.reload()
                delay = (shown.get("retry_after_ms") or 1500) / 1000

    async def pay(self, b: Buyer, pay_url: str) -> None:
        """The buyer pays a random short time after the invoice is ready."""
        await asyncio.sleep(random.uniform(self.args.pay_min, self.args.pay_max))
        invoice = pay_url.rstrip("/").rsplit("/", 1)[-1]
        status, answer = await self.sandbox.request("POST", f"/_control/invoices/{invoice}/pay")
        if status != 200:
            raise RuntimeError(f"sandbox pay answered {status}: {answer[:200]!r}")
        b.paid = datetime.fromisoformat(json.loads(answer)["paid_at"]).timestamp()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_api(
    children: common.Children, env: dict[str, str], port: int, workers: int
) -> common.Child:
    url = f"http://127.0.0.1:{port}"
    argv = ["-m", "dispatcher.cli", "api", "--port", str(port), "--workers", str(workers)]
    server = children.spawn("api", argv, env)
    deadline = time.monotonic() + 180  # a busy 2-core machine takes a minute to import it
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start:\n{server.log_text()[-3000:]}")
        time.sleep(0.1)


def loadavg() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def run_once(
    found: Any,
    sandbox: common.Child,
    sandbox_url: str,
    broker_url: str,
    *,
    push: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    children = common.Children()
    with common.fresh_database(found, "paid") as db_url:
        common.flush_redis(broker_url)
        httpx.post(f"{sandbox_url}/_control/reset", timeout=60).raise_for_status()
        port = common.free_port()
        api_url = f"http://127.0.0.1:{port}"
        env = common.daemon_env(db_url, broker_url, sandbox_url, rate=str(args.psp_rate))
        env["PAYDISPATCH_PUBLIC_URL"] = api_url
        env["PAYDISPATCH_BILLING_HOOKS"] = args.hooks
        env["PAYDISPATCH_SANDBOX_NOTIFY_URL"] = (
            f"{api_url}/v1/callbacks/sandbox" if push else "none"
        )
        try:
            # All start at once: on a busy 2-core machine each takes up to a minute to import.
            daemon = [children.spawn("sweeper", ["-m", "dispatcher.cli", "sweeper"], env)]
            worker_argv = ["-m", "dispatcher.cli", "worker", "--threads", str(args.threads)]
            worker_argv += ["--in-flight", str(args.in_flight)]
            daemon += [children.spawn(f"worker{i}", worker_argv, env) for i in range(args.workers)]
            api = start_api(children, env, port, args.api_workers)
            for child in daemon:
                started = "sweeper started" if child.name == "sweeper" else "worker started"
                children.wait_log(child, started, timeout=180)
            pool = open_pool(db_url, max_size=1, name="bench-keys")
            _, key = ApiKeys(pool).create("bench")
            pool.close()
            time.sleep(0.5)  # dramatiq's consumers connect
            named = {c.pid: c.name for c in children.items} | {sandbox.pid: "sandbox"}
            meter = common.CpuMeter(named, postmaster=common.postmaster_pid(db_url))
            load = Load(api_url, sandbox_url, key, args)
            total = int(args.rate * (args.warmup + args.seconds))
            before = loadavg()
            meter.start()
            behind = asyncio.run(load.drive(total))
            meter.stop()
            after = loadavg()
            try:  # a sandbox still sending a backlog of webhooks may answer late
                stats = httpx.get(f"{sandbox_url}/_control/stats", timeout=60).json()
            except httpx.HTTPError as exc:
                stats = {"error": repr(exc)}
            errors = [line for line in api.log_text().splitlines() if '"level": "error"' in line]
        finally:
            children.stop_all(grace=20)
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id::text, extract(epoch FROM paid_at) FROM orders WHERE paid_at IS NOT NULL"
            ).fetchall()
            statuses: dict[str, int] = dict(
                conn.execute("SELECT status, count(*) FROM orders GROUP BY 1")
            )
    paid_at = {order_id: float(at) for order_id, at in rows}
    for b in load.buyers:
        b.db_paid = paid_at.get(b.order_id)
    return summarise(
        load, push=push, behind=behind, before=before, after=after, stats=stats,
        statuses=statuses, meter=meter, errors=errors,
    )  # fmt: skip


def summarise(
    load: Load,
    *,
    push: bool,
    behind: float,
    before: str,
    after: str,
    stats: dict[str, Any],
    statuses: dict[str, int],
    meter: common.CpuMeter,
    errors: list[str],
) -> dict[str, Any]:
    args = load.args
    first = min(b.created for b in load.buyers if b.created) if load.buyers else 0.0
    measured = load.buyers[int(args.rate * args.warmup) :]
    made = [b.created for b in measured if b.created]
    span = max(made) - min(made) if len(made) > 1 else float("nan")
    done = [b for b in measured if b.paid is not None and b.shown is not None]
    latency = [b.shown - b.paid for b in done]  # type: ignore[operator]
    to_db = [b.db_paid - b.paid for b in done if b.db_paid is not None]  # type: ignore[operator]
    db_to_page = [b.shown - b.db_paid for b in done if b.db_paid is not None]  # type: ignore[operator]
    n = max(len(load.buyers), 1)
    # What the daemon took to paid, whatever the pages saw: orders paid over the run's span.
    paid_times = [b.db_paid for b in load.buyers if b.db_paid is not None]
    paid_rate = len(paid_times) / (max(paid_times) - first) if paid_times else 0.0
    return {
        "push": push,
        "page": args.page,
        "orders": len(load.buyers),
        "measured": len(measured),
        "shown_paid": len(done),
        "failed_pages": sum(1 for b in measured if b.error),
        "first_errors": sorted({b.error for b in load.buyers if b.error})[:3],
        "created_per_second": round((len(made) - 1) / span, 1) if len(made) > 1 else None,
        "creation_behind_s": round(behind, 2),
        "paid_per_second": round(paid_rate, 1),
        "first_create": first,
        "p50": pct(latency, 0.50),
        "p95": pct(latency, 0.95),
        "p99": pct(latency, 0.99),
        "max": max(latency, default=float("nan")),
        "to_db_p50": pct(to_db, 0.50),
        "to_db_p95": pct(to_db, 0.95),
        "db_to_page_p50": pct(db_to_page, 0.50),
        "db_to_page_p95": pct(db_to_page, 0.95),
        "status_reads_per_order": round(sum(b.status_reads for b in load.buyers) / n, 2),
        "page_loads_per_order": round(sum(b.page_loads for b in load.buyers) / n, 2),
        "psp_status_calls_per_order": round(stats.get("status_calls", 0) / n, 2),
        "psp_create_calls": stats.get("create_calls"),
        "webhooks": stats.get("webhooks"),
        "statuses": statuses,
        "uptime_before": before,
        "uptime_after": after,
        "cpu": {k: round(v, 1) for k, v in meter.result.items()},
        "cpu_wall": round(meter.wall, 1),
        "api_errors_logged": len(errors),
    }


def report(res: dict[str, Any]) -> None:
    kind = "with push notifications" if res["push"] else "without (polls only)"
    verdict = "met" if res["p50"] < GOAL_P50 else "NOT met"
    print(f"\n{kind}, page {res['page']}:")
    print(f"  uptime before: {res['uptime_before']}")
    print(f"  uptime after:  {res['uptime_after']}")
    print(
        f"  {res['orders']} orders, {res['measured']} measured, {res['shown_paid']} shown paid, "
        f"{res['failed_pages']} pages failed {res['first_errors']}; created "
        f"{res['created_per_second']}/s (creation ended {res['creation_behind_s']} s behind); "
        f"the daemon paid {res['paid_per_second']}/s from the first create to its last paid_at"
    )
    print(
        f"  paid -> page shows paid: p50 {res['p50']:.2f} s (goal < {GOAL_P50:g} s: {verdict}), "
        f"p95 {res['p95']:.2f} s, p99 {res['p99']:.2f} s, max {res['max']:.2f} s"
    )
    print(
        f"  of which paid -> orders.paid_at p50 {res['to_db_p50']:.2f} s p95 "
        f"{res['to_db_p95']:.2f} s; orders.paid_at -> page p50 {res['db_to_page_p50']:.2f} s "
        f"p95 {res['db_to_page_p95']:.2f} s"
    )
    print(
        f"  per order: {res['status_reads_per_order']} status reads, "
        f"{res['page_loads_per_order']} page loads, {res['psp_status_calls_per_order']} PSP "
        f"status calls; webhooks {res['webhooks']}; statuses {res['statuses']}; "
        f"API error lines {res['api_errors_logged']}"
    )
    parts = ", ".join(
        f"{k} {v:.0f}s ({100 * v / res['cpu_wall']:.0f}%)" for k, v in res["cpu"].items()
    )
    print(f"  CPU over {res['cpu_wall']} s: {parts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rate", type=float, default=200.0, help="orders created per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds of orders")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of orders not measured")
    parser.add_argument("--pay-min", type=float, default=1.0, help="buyer pays after, at least (s)")
    parser.add_argument("--pay-max", type=float, default=5.0, help="... and at most (s)")
    parser.add_argument("--push", choices=["both", "on", "off"], default="both")
    parser.add_argument("--page", choices=["open", "return"], default="open")
    parser.add_argument("--connections", type=int, default=128, help="to the API, at most")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--workers", type=int, default=2, help="paydispatch worker processes")
    parser.add_argument("--threads", type=int, default=2, help="dramatiq threads per worker")
    parser.add_argument("--in-flight", type=int, default=500, help="worker --in-flight")
    parser.add_argument(
        "--psp-rate", type=float, default=5000.0,
        help="PAYDISPATCH_SANDBOX_RATE, calls/s per worker (the default of 100 is for real "
        "payment systems' limits; the sandbox has none)",
    )  # fmt: skip
    parser.add_argument("--hooks", default="wallet", help="PAYDISPATCH_BILLING_HOOKS")
    parser.add_argument("--timeout", type=float, default=60.0, help="per buyer, s")
    parser.add_argument("--redis-db", type=int, default=12, help="Redis database (flushed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    print(f"argv: {' '.join(sys.argv)}")
    broker_url = common.redis_db_url(found.broker_url, args.redis_db)
    results: dict[str, Any] = {"machine": info, "argv": sys.argv, "runs": []}
    sandbox_children = common.Children()
    try:
        sandbox, sandbox_url = common.start_sandbox(sandbox_children)
        for push in {"both": (False, True), "on": (True,), "off": (False,)}[args.push]:
            res = run_once(found, sandbox, sandbox_url, broker_url, push=push, args=args)
            results["runs"].append(res)
            report(res)
    finally:
        sandbox_children.stop_all()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nresults written to {args.json}")
    return 0 if all(r["p50"] < GOAL_P50 for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
