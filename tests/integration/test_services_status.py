"""``paydispatch services status`` only reports (issue #16): it starts nothing, creates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dispatcher import services
from dispatcher.services import Services

ROOT = Path(__file__).resolve().parents[2]


def _status(cwd: Path, **values: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env.update(values)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "services", "status"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        if text in args:
            found.append(args)
    return found


def test_status_with_a_new_home_starts_nothing_creates_nothing_and_says_not_running(
    tmp_path: Path,
) -> None:
    home = tmp_path / "new-home"
    try:
        result = _status(tmp_path, PAYDISPATCH_HOME=str(home))

        assert result.returncode == 3, result.stderr
        assert f"PostgreSQL: embedded, not running ({home / 'pgdata'})" in result.stdout
        assert f"Redis: embedded, not running ({home / 'redis'})" in result.stdout
        assert "paydispatch services start" in result.stdout
        assert not home.exists()
        assert list(tmp_path.iterdir()) == []
        assert _processes_mentioning(str(home)) == []
    finally:
        if home.exists():  # the old behaviour started a pair there: do not leave it running
            services.stop(home)


def test_status_reports_configured_servers_that_answer(
    found_services: Services, tmp_path: Path
) -> None:
    result = _status(
        tmp_path,
        PAYDISPATCH_DATABASE_URL=found_services.database_url,
        PAYDISPATCH_BROKER_URL=found_services.broker_url,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "PostgreSQL: configured, reachable" in result.stdout
    assert "Redis: configured, reachable" in result.stdout


def test_status_says_which_configured_server_does_not_answer(
    found_services: Services, tmp_path: Path
) -> None:
    result = _status(
        tmp_path,
        PAYDISPATCH_DATABASE_URL=found_services.database_url,
        PAYDISPATCH_BROKER_URL="redis://127.0.0.1:1/0",  # port 1: nothing listens there
    )

    assert result.returncode == 3
    assert "PostgreSQL: configured, reachable" in result.stdout
    assert "Redis: configured, not reachable (redis://127.0.0.1:1/0)" in result.stdout
    assert not (tmp_path / ".paydispatch").exists()
