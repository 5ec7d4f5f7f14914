"""Each process imports only what it runs (issue #13, item 2).

Every process here is the real ``paydispatch`` command in a fresh interpreter, started through
``dispatcher.cli`` as in production, over the test's database and the sandbox's published
credentials (a development setup): it builds its parts from the settings
(:mod:`dispatcher.compose`), says it has started, is stopped with SIGTERM, and writes the
``sys.modules`` it ended with. The sweeper must load nothing of the worker or the API, the API
nothing of dramatiq, the worker or the sweeper, the worker nothing of the API or the sweeper, and
the operators' ``orders list`` no broker, HTTP server or client transport of the daemon.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher import cli
from dispatcher.services import Services
from tests.dispatch_support import own_namespace, wait_until

ROOT = Path(__file__).resolve().parents[2]

# Runs ``paydispatch ARGS`` and, when the interpreter exits, writes its sys.modules to a file.
# uvicorn re-raises the SIGTERM it stopped on once it is done, with the handler it found: this
# one, so the interpreter exits normally and writes the file.
PROBE = """
import atexit, json, signal, sys

def dump(path=sys.argv[1]):
    with open(path, "w") as fh:
        json.dump(sorted(sys.modules), fh)

atexit.register(dump)
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
from dispatcher.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Each process: its command, the line it logs once started (None: it runs to its end), a module
# of its own it must load, and what it must not load (modules, or packages with their modules).
PROCESSES: dict[str, tuple[list[str], str | None, str, set[str]]] = {
    "sweeper": (
        ["sweeper"], "sweeper started", "dispatcher.sweeper.loop",
        {"aiohttp", "dispatcher.worker", "fastapi", "uvicorn"},
    ),
    "api": (
        ["api", "--port", "0"], "api listening", "dispatcher.api.app",
        {"dramatiq", "dispatcher.worker", "dispatcher.sweeper"},
    ),
    "worker": (
        ["worker", "--threads", "1"], "worker started", "dispatcher.worker.engine",
        {"fastapi", "uvicorn", "dispatcher.api", "dispatcher.sweeper"},
    ),
    "orders list": (
        ["orders", "list"], None, "dispatcher.ops.orders", {"dramatiq", "aiohttp", "fastapi"},
    ),
}  # fmt: skip


def loaded(database_url: str, broker_url: str, tmp_path: Path, name: str) -> list[str]:
    """The modules the process ``name`` had loaded when it stopped."""
    argv, started, _, _ = PROCESSES[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYDISPATCH_")}
    env |= {
        "PAYDISPATCH_DATABASE_URL": database_url,
        "PAYDISPATCH_BROKER_URL": broker_url,
        "PAYDISPATCH_BROKER_NAMESPACE": own_namespace(),
        "PAYDISPATCH_ADAPTERS": "sandbox",
        "PAYDISPATCH_DEV": "1",
        "PAYDISPATCH_LOG_FORMAT": "json",
    }
    modules, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(modules), *argv],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if started is not None:
            wait_until(
                lambda: f'"event": "{started}"' in log.read_text() or process.poll() is not None,
                timeout=60,
                what=f"{name}: {started!r}",
            )
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, f"paydispatch {' '.join(argv)} exited {code}:\n{log.read_text()}"
    names: list[str] = json.loads(modules.read_text())
    return names


def dragged_in(modules: list[str], unwanted: set[str]) -> list[str]:
    """The modules that are one of ``unwanted`` or inside one of them."""
    return [m for m in modules if any(m == u or m.startswith(f"{u}.") for u in unwanted)]


@pytest.mark.parametrize("name", list(PROCESSES))
def test_each_process_loads_only_what_it_runs(
    found_services: Services, database_url: str, tmp_path: Path, name: str
) -> None:
    _, _, own, unwanted = PROCESSES[name]
    # Given the process started from the settings as in production, and stopped,
    modules = loaded(database_url, found_services.broker_url, tmp_path, name)
    # then it had loaded its own modules (so the list is the process's),
    assert own in modules
    # and nothing of what it does not run.
    assert dragged_in(modules, unwanted) == []


def test_each_command_family_registers_exactly_the_commands_the_cli_names_it_for() -> None:
    for module, names in cli.FAMILIES.items():
        # Given a family of commands registered on a parser of its own,
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        # then it adds the commands the CLI imports it for, and only those
        assert set(sub.choices) == set(names), module
    # And the CLI's parser built without a command (``--help``) knows every family's command.
    parser = cli.build_parser()
    for name in (n for names in cli.FAMILIES.values() for n in names):
        with pytest.raises(SystemExit) as leaving:
            parser.parse_args([name, "--help"])
        assert leaving.value.code == 0, name
