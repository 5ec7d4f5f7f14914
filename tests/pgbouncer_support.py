"""PgBouncer in transaction mode in front of a test's PostgreSQL (used by tests and bench/hosts.py).

Debian's ``pgbouncer`` package (``.ci/run`` installs it); without the binary :func:`binary`
returns None and the tests that need it are skipped. PgBouncer refuses to run as root, so as
root it runs as the user that can reach the server (:func:`_run_as`), with its files in a
directory it owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import conninfo

from dispatcher.services import free_port


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _run_as(host: str) -> str:
    """Who PgBouncer runs as under root: the owner of the server's socket directory (the
    embedded PostgreSQL's is private to its user), else ``postgres``, else ``nobody``."""
    if host.startswith("/"):
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    return "postgres" if _user_exists("postgres") else "nobody"


@contextmanager
def running_pgbouncer(
    database_url: str, *, pool_size: int = 20, round_robin: bool = False
) -> Iterator[str]:
    """PgBouncer in transaction mode on a free port in front of ``database_url``; yields the URL
    that reaches the same database through it (same user and password)."""
    found = binary()
    if found is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
    params = conninfo.conninfo_to_dict(database_url)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pd-pgbouncer-"))
    folder.chmod(0o755)
    server = " ".join(
        f"{key}={params[key]}" for key in ("host", "port", "user", "password") if params.get(key)
    )
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = {server}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = 1000\n"
        f"server_round_robin = {int(round_robin)}\n"
        f"admin_users = {params.get('user') or 'postgres'}\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    (folder / "pgbouncer.ini").chmod(0o644)
    argv = [found, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        user = _run_as(str(params.get("host") or ""))
        argv[1:1] = ["-u", user]
        shutil.chown(folder, user=user)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(port))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RuntimeError(f"pgbouncer did not start:\n{text}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def admin_stats(url: str) -> dict[str, int]:
    """PgBouncer's ``SHOW STATS`` totals for the database ``url`` names (its admin console)."""
    params = conninfo.conninfo_to_dict(url)
    admin = conninfo.make_conninfo(url, dbname="pgbouncer")
    # The admin console speaks the simple query protocol only: a client-side cursor.
    with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute("SHOW STATS")
        names = [c.name for c in cur.description or ()]
        for row in cur.fetchall():
            stats = dict(zip(names, row, strict=True))
            if stats.get("database") == params.get("dbname"):
                return {k: int(v) for k, v in stats.items() if isinstance(v, int | Decimal)}
    return {}
