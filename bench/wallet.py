"""Wallet throughput: credits and debits per second, on one hot wallet and spread over many.

    .venv/bin/python -m bench.wallet            # about a minute; stops by itself

For each layout (``hot``: every thread on one wallet; ``spread``: 1000 wallets) it runs
``Wallets.credit``/``Wallets.debit`` (through their synchronous face ``SyncWallets``: every call
runs on the one background event loop) from N threads for a fixed time on a fresh database (half
the threads credit, half debit, every call with its own idempotency key), then
``bench/wallet.pgbench.sql`` under pgbench on the same server: the same statements, in the same
transaction, without Python. Prints one line per run, and the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from bench import common
from dispatcher.billing.wallet import EntryKind, SyncWallets
from orders import Money
from orders.errors import InsufficientFunds

PGBENCH_SCRIPT = Path(__file__).resolve().parent / "wallet.pgbench.sql"
START_BALANCE = 10**12  # debits never run dry within a run


def seed(db_url: str, wallets: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO wallets (site, user_id, currency, balance) "
            "SELECT 'bench', 'u' || g, 'USD', %s FROM generate_series(1, %s) g",
            (START_BALANCE, wallets),
        )
        conn.execute(
            "INSERT INTO wallet_entries (site, user_id, currency, amount, balance_after, kind,"
            " idempotency_key, description) SELECT 'bench', 'u' || g, 'USD', %s, %s,"
            " 'adjustment', 'seed-' || g, 'seed' FROM generate_series(1, %s) g",
            (START_BALANCE, START_BALANCE, wallets),
        )


def run_python(found: Any, *, wallets: int, threads: int, seconds: float) -> dict[str, Any]:
    with common.fresh_database(found, "wallet") as db_url:
        seed(db_url, wallets)
        ledger = SyncWallets(db_url, max_size=threads, name="bench-wallet")
        counts = [0] * threads
        refused = [0] * threads
        stop = threading.Event()
        start = threading.Barrier(threads + 1)

        def work(t: int) -> None:
            rng = random.Random(t)
            start.wait()
            i = 0
            while not stop.is_set():
                user = f"u{rng.randint(1, wallets)}"
                key = f"t{t}-{i}"
                try:
                    amount = Money(100, "USD")
                    if t % 2 == 0:
                        ledger.credit(
                            "bench", user, amount, kind=EntryKind.ADJUSTMENT, key=key,
                            description="bench",
                        )  # fmt: skip
                    else:
                        ledger.debit("bench", user, amount, key=key, description="bench")
                    counts[t] += 1
                except InsufficientFunds:
                    refused[t] += 1
                i += 1

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        start.wait()
        began = time.monotonic()
        time.sleep(seconds)  # the measurement window, not synchronisation
        stop.set()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - began
        ledger.close()
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT sum(balance) FROM wallets) = (SELECT sum(amount) FROM "
                "wallet_entries) AS consistent, (SELECT count(*) FROM wallet_entries) AS n"
            ).fetchone()
    assert row is not None
    return {
        "layout": "hot" if wallets == 1 else f"spread over {wallets}",
        "threads": threads,
        "seconds": round(elapsed, 1),
        "ops": sum(counts),
        "ops_per_second": round(sum(counts) / elapsed, 1),
        "refused": sum(refused),
        "ledger_consistent": bool(row[0]),
    }


def run_pgbench(found: Any, *, wallets: int, clients: int, seconds: int) -> dict[str, Any]:
    with common.fresh_database(found, "walletpgb") as db_url:
        seed(db_url, wallets)
        argv, report = common.pgbench(
            db_url,
            PGBENCH_SCRIPT,
            clients=clients,
            threads=min(clients, 2),
            seconds=seconds,
            defines={"wallets": wallets},
        )
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", report)
    latency = re.search(r"latency average = ([\d.]+) ms", report)
    return {
        "layout": "hot" if wallets == 1 else f"spread over {wallets}",
        "clients": clients,
        "command": " ".join(argv),
        "ops_per_second": float(tps.group(1)) if tps else None,
        "latency_ms": float(latency.group(1)) if latency else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8, help="Python threads / pgbench clients")
    parser.add_argument("--seconds", type=int, default=10, help="per run")
    parser.add_argument("--wallets", type=int, default=1000, help="wallets of the spread layout")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    found = common.found_services()
    info = common.machine(found)
    common.print_machine(info)
    results: list[dict[str, Any]] = []
    for wallets in (1, args.wallets):
        py = run_python(found, wallets=wallets, threads=args.threads, seconds=args.seconds)
        pg = run_pgbench(found, wallets=wallets, clients=args.threads, seconds=args.seconds)
        ratio = py["ops_per_second"] / pg["ops_per_second"] if pg["ops_per_second"] else 0.0
        print(
            f"{py['layout']:>16}: Wallets {py['ops_per_second']:8.1f} ops/s "
            f"({py['threads']} threads, {py['ops']} ops, consistent={py['ledger_consistent']})"
            f"   pgbench {pg['ops_per_second']:8.1f} tps ({pg['clients']} clients, "
            f"{pg['latency_ms']} ms)   ratio {ratio:.0%}",
            flush=True,
        )
        print(f"    {pg['command']}")
        results.append({"python": py, "pgbench": pg, "ratio": round(ratio, 3)})
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
