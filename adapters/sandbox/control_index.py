"""What the sandbox's control API offers, read from the code itself (``GET /_control/``).

The routes come from the app's route table (each described by its handler's docstring), the
fault kinds, their parameters and defaults from :mod:`adapters.sandbox.faults`: a route or a
fault added there is listed without anyone remembering to. docs/sandbox.md says the same for
readers; a test holds it to this listing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute, Route

from adapters.sandbox.faults import (
    FAULT_KIND_HELP,
    WEBHOOK_FAULT_HELP,
    Fault,
    FaultKind,
    MalformedStyle,
    Operation,
)

CONTROL_PREFIX = "/_control/"


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def control_routes(
    routes: Sequence[BaseRoute], choices: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """One entry per method and path under ``/_control/``, in the app's order; ``choices``
    gives the values a path parameter takes (``{"operation": ["create", ...]}``)."""
    listed: list[dict[str, Any]] = []
    for route in routes:
        if not isinstance(route, Route) or not route.path.startswith(CONTROL_PREFIX):
            continue
        params = {name: list(choices[name]) for name in route.param_convertors if name in choices}
        for method in sorted((route.methods or set()) - {"HEAD"}):
            entry: dict[str, Any] = {
                "method": method,
                "path": route.path_format,
                "description": _first_line(route.endpoint.__doc__),
            }
            if params:
                entry["choices"] = params
            listed.append(entry)
    return listed


def fault_kinds(hang_seconds: float) -> dict[str, dict[str, Any]]:
    """Every fault kind: what it does and the parameters it reads, with their defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(Fault) if f.name != "kind"}
    defaults["seconds"] = hang_seconds  # None in Fault: the sandbox's own hang_seconds
    kinds = {}
    for kind in FaultKind:
        description, params = FAULT_KIND_HELP[kind]
        kinds[kind.value] = {
            "description": description,
            "parameters": {name: _plain(defaults[name]) for name in params},
        }
    return kinds


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, MalformedStyle) else value


def control_index(
    routes: Sequence[BaseRoute], choices: Mapping[str, Sequence[str]], hang_seconds: float
) -> dict[str, Any]:
    return {
        "routes": control_routes(routes, choices),
        "operations": [operation.value for operation in Operation],
        "fault_kinds": fault_kinds(hang_seconds),
        "malformed_styles": [style.value for style in MalformedStyle],
        "webhook_faults": dict(WEBHOOK_FAULT_HELP),
        "example": {
            "POST /_control/faults/create": {
                "queue": ["http_500", {"kind": "latency", "ms": 200}],
                "rate": 0.1,
                "choices": ["timeout"],
            }
        },
    }
