"""A site that only calls the API installs paydispatch-client (clients/python), not the daemon
(issue #13, item 9): into an empty virtualenv it brings only httpx and tenacity (from the
package index pip is configured for), and its client works with nothing of the checkout or of
the daemon's dependencies on the path.

Slow for a test (a build and an install into a fresh virtualenv), so it has a timeout of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(900)

# Run inside the client's virtualenv: the daemon's dependencies are absent, and the client's
# sync and async faces answer through httpx's MockTransport with the API's error shape.
CHECK = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys
    from importlib.metadata import distributions

    import httpx

    import orders
    from orders import Money, OrderNotFound
    from orders.client import ApiError, AsyncClient, Client, NotFound

    for name in ("psycopg", "psycopg_pool", "dramatiq", "fastapi", "starlette", "pydantic",
                 "redis", "aiohttp", "uvicorn", "structlog", "dispatcher", "adapters"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed"
    print(orders.__file__)
    print(json.dumps(sorted(d.metadata["Name"].lower() for d in distributions())))

    def answer(request):
        assert request.headers["authorization"] == "Bearer key-1"
        body = {"error": {"code": "order_not_found", "message": "no such order", "field": None}}
        return httpx.Response(404, json=body)

    order_id = "00000000-0000-4000-8000-000000000001"
    with Client("http://api.test", "key-1", transport=httpx.MockTransport(answer)) as pd:
        try:
            pd.get_order(order_id)
        except NotFound as exc:
            assert isinstance(exc, ApiError) and isinstance(exc, OrderNotFound)
            assert exc.code == "order_not_found"
        else:
            sys.exit("no NotFound from the sync client")

    async def main():
        async with AsyncClient(
            "http://api.test", "key-1", transport=httpx.MockTransport(answer)
        ) as pd:
            try:
                await pd.get_order(order_id)
            except NotFound:
                return
            sys.exit("no NotFound from the async client")

    asyncio.run(main())
    assert Money.parse("19.99", "USD").amount == 1999
    print("ok")
    """
)


def _run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{argv[:4]} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def _clean_environ() -> dict[str, str]:
    """The environment without this checkout's virtualenv, path or paydispatch settings."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("PAYDISPATCH_")
    }


def test_the_client_installs_alone_and_works_without_the_daemons_dependencies(
    tmp_path: Path,
) -> None:
    # Given an empty virtualenv,
    env = _clean_environ()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    python = str(venv / "bin" / "python")

    # when paydispatch-client is installed from the checkout with its dependencies,
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-compile",
            "--disable-pip-version-check",
            str(ROOT / "clients" / "python"),
        ],
        cwd=tmp_path,
        env=env,
    )

    # then only it, httpx, tenacity and what they need are there (pip's own aside), its
    # modules are the installed ones, and both clients answer with the error tree.
    out = _run([python, "-c", CHECK], cwd=tmp_path, env=env).splitlines()
    assert Path(out[0]).is_relative_to(venv), f"orders imported from {out[0]}"
    installed = set(json.loads(out[1]))
    assert {"paydispatch-client", "httpx", "tenacity"} <= installed
    assert "paydispatch" not in installed
    assert installed - {"pip", "setuptools"} <= {
        "paydispatch-client",
        "httpx",
        "httpcore",
        "h11",
        "anyio",
        "idna",
        "certifi",
        "sniffio",
        "typing-extensions",
        "typing_extensions",
        "tenacity",
    }, f"more than the client's dependencies: {sorted(installed)}"
    assert out[-1] == "ok"
