"""Installing paydispatch from a wheel built from this checkout, as the README's operations
section says: the wheel with its dependencies goes into an empty virtualenv (from the package
index pip is configured for), and the installed command works with nothing of the checkout on
its path.

Slow for a test (a wheel build and an install of every dependency, about half a minute with
pip's cache warm), so it has a timeout of its own.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.services import Services
from orders.db import schema
from tests.conftest import ROOT, drop_database, make_database

pytestmark = pytest.mark.timeout(900)


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv[:4]} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def _clean_environ() -> dict[str, str]:
    """The environment without this checkout's virtualenv, path or paydispatch settings."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("PAYDISPATCH_")
    }


def build_wheel(out: Path) -> Path:
    """``python -m build --wheel`` where ``build`` is installed, else ``pip wheel``."""
    if importlib.util.find_spec("build") is not None:
        argv = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)]
    else:
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)]
    _run(argv, cwd=out, env=_clean_environ())
    (wheel,) = out.glob("paydispatch-*.whl")
    return wheel


@pytest.fixture
def empty_database(found_services: Services) -> Iterator[str]:
    url = make_database(found_services, template=None)
    yield url
    drop_database(found_services, url)


def test_a_wheel_built_from_the_checkout_installs_and_runs_in_an_empty_virtualenv(
    tmp_path: Path, empty_database: str
) -> None:
    # Given a wheel built from this checkout and an empty virtualenv,
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = build_wheel(dist)
    venv = tmp_path / "venv"
    env = _clean_environ()
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    bin_dir = venv / "bin"

    # when the wheel is installed with its dependencies from the configured package index
    # (no byte-compiling: the first run compiles what it imports),
    _run(
        [
            str(bin_dir / "pip"),
            "install",
            "--no-compile",
            "--disable-pip-version-check",
            str(wheel),
        ],
        cwd=tmp_path,
        env=env,
    )

    # then its modules are the installed ones, not the checkout's,
    where = _run(
        [str(bin_dir / "python"), "-c", "import dispatcher, orders; print(orders.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert Path(where.strip()).is_relative_to(venv)
    # `paydispatch --help` lists the commands,
    helped = _run([str(bin_dir / "paydispatch"), "--help"], cwd=tmp_path, env=env)
    assert "db" in helped
    assert "worker" in helped
    # and `paydispatch db init` builds the schema in an empty database, which then checks.
    env |= {
        "PAYDISPATCH_DATABASE_URL": empty_database,
        "PAYDISPATCH_BROKER_URL": "redis://127.0.0.1:1/0",  # not used by these commands
    }
    initialised = _run([str(bin_dir / "paydispatch"), "db", "init"], cwd=tmp_path, env=env)
    assert f"applied schema.sql (version {schema.latest_version()})" in initialised
    checked = _run([str(bin_dir / "paydispatch"), "db", "check"], cwd=tmp_path, env=env)
    assert "database matches schema.sql" in checked
