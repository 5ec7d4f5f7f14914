"""Every process says on start what it serves and where (issue #16): the API's URL and pages,
the sweeper's and each worker's metrics and queues, ``run``'s summary, the sandbox's pages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.services import Services, free_port
from tests.conftest import switch_off_track_counts
from tests.dispatch_support import own_namespace, wait_until
from tests.ports_support import free_ports_in_a_row

ROOT = Path(__file__).resolve().parents[2]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env.update(values)
    return env


def _daemon_env(services: Services, database_url: str, **values: str) -> dict[str, str]:
    """The daemon's processes on their own database and broker namespace, the sandbox adapter
    in development mode, logging JSON; ``values`` add to it."""
    return _env(
        PAYDISPATCH_DATABASE_URL=database_url,
        PAYDISPATCH_BROKER_URL=services.broker_url,
        PAYDISPATCH_BROKER_NAMESPACE=own_namespace(),
        PAYDISPATCH_DEV="1",
        PAYDISPATCH_ADAPTERS="sandbox",
        PAYDISPATCH_LOG_FORMAT="json",
        **values,
    )


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the children inherit the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _json_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def _event(log: Path, name: str) -> dict[str, Any] | None:
    return next((line for line in _json_lines(log) if line.get("event") == name), None)


def _ports() -> tuple[int, int]:
    """A free API port, and two free ports in a row for the sweeper and a worker."""
    return free_port(), free_ports_in_a_row(2)


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return tmp_path / "run.log"


@pytest.fixture
def daemon(
    found_services: Services, own_database_url: str, run_log: Path
) -> Iterator[tuple[int, int]]:
    api_port, metrics_base = _ports()
    env = _daemon_env(
        found_services,
        own_database_url,
        # The flag wins over the variable: nothing may listen here.
        PAYDISPATCH_API_PORT=str(free_port()),
    )
    args = ["run", "--api-host", "127.0.0.1", "--api-port", str(api_port)]
    process = _start(env, run_log, *args, "--metrics-base", str(metrics_base))
    try:
        yield api_port, metrics_base
    finally:
        _stop(process)


def test_run_says_where_the_api_listens_and_what_each_process_serves(
    daemon: tuple[int, int], run_log: Path
) -> None:
    api_port, metrics_base = daemon
    url = f"http://127.0.0.1:{api_port}"

    wait_until(
        lambda: all(
            _event(run_log, name) is not None
            for name in ("api listening", "sweeper started", "worker started")
        ),
        timeout=90,
        what=f"the start lines in {run_log}",
    )

    summary = _event(run_log, "supervisor started")
    assert summary is not None
    assert summary["api"] == url
    assert summary["adapters"] == ["sandbox"]
    assert summary["metrics"] == [
        f"http://127.0.0.1:{metrics_base}/metrics",
        f"http://127.0.0.1:{metrics_base + 1}/metrics",
    ]
    api = _event(run_log, "api listening")
    assert api is not None
    assert api["url"] == url
    assert api["docs"] == f"{url}/docs"
    assert api["metrics"] == f"{url}/metrics"
    assert api["console"] == f"{url}/console/"
    sweeper = _event(run_log, "sweeper started")
    assert sweeper is not None
    assert sweeper["metrics"] == f"http://127.0.0.1:{metrics_base}/metrics"
    assert sweeper["queues"] == ["paydispatch.sandbox"]
    worker = _event(run_log, "worker started")
    assert worker is not None
    assert worker["metrics"] == f"http://127.0.0.1:{metrics_base + 1}/metrics"
    assert "paydispatch.sandbox" in worker["queues"]
    # What the lines say is true: each address answers.
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    for address in (api["metrics"], sweeper["metrics"], worker["metrics"]):
        assert "paydispatch_" in httpx.get(address, timeout=10).text


def test_api_says_which_pages_are_off(
    found_services: Services, own_database_url: str, run_log: Path
) -> None:
    port = free_port()
    env = _daemon_env(
        found_services, own_database_url, PAYDISPATCH_API_DOCS="0", PAYDISPATCH_CONSOLE="off"
    )
    process = _start(env, run_log, "api", "--port", str(port))
    try:
        wait_until(lambda: _event(run_log, "api listening") is not None, timeout=60)
        line = _event(run_log, "api listening")
        assert line is not None
        assert line["url"] == f"http://127.0.0.1:{port}"
        assert (line["docs"], line["console"]) == ("off", "off")
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10).status_code == 404
    finally:
        _stop(process)


def test_sandbox_says_where_its_pages_and_control_api_are_in_the_console_format(
    run_log: Path,
) -> None:
    port = free_port()
    env = _env(PAYDISPATCH_LOG_FORMAT="console")
    process = _start(env, run_log, "sandbox", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "sandbox listening" in run_log.read_text(errors="replace"))
        line = next(
            line for line in run_log.read_text().splitlines() if "sandbox listening" in line
        )
        assert f"url={url}" in line
        assert f"pay_pages={url}/pay/{{invoice_id}}" in line
        assert f"control={url}/_control/" in line
        assert httpx.get(f"{url}/_control/", timeout=10).status_code == 200
    finally:
        _stop(process)


@pytest.mark.parametrize("access_log", [True, False])
def test_sandbox_logs_a_line_per_request_unless_told_not_to(
    run_log: Path, access_log: bool
) -> None:
    port = free_port()
    flag = "--access-log" if access_log else "--no-access-log"
    process = _start(_env(), run_log, "sandbox", "--port", str(port), flag)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "sandbox listening" in run_log.read_text(errors="replace"))
        assert httpx.get(f"{url}/_control/calls", timeout=10).status_code == 200
    finally:
        _stop(process)
    logged = run_log.read_text(errors="replace")
    assert "Application shutdown complete" in logged  # the log is whole
    assert ('"GET /_control/calls HTTP/1.1" 200' in logged) is access_log


def test_sweeper_says_at_start_when_the_server_will_never_vacuum_orders(
    found_services: Services, own_database_url: str, run_log: Path
) -> None:
    switch_off_track_counts(own_database_url)
    env = _daemon_env(found_services, own_database_url)
    process = _start(env, run_log, "sweeper")
    try:
        wait_until(lambda: _event(run_log, "database upkeep") is not None, timeout=60)
    finally:
        _stop(process)
    said = [line for line in _json_lines(run_log) if line.get("event") == "database upkeep"]
    assert any(line["problem"].startswith("track_counts is off") for line in said)
    assert {line["level"] for line in said} == {"warning"}
