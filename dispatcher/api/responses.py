"""The error responses each route documents in /openapi.json."""

from __future__ import annotations

from typing import Any

from dispatcher.api.schemas import ErrorResponse

_MEANING = {
    400: "Malformed JSON or an unreadable request",
    401: "Missing, unknown or revoked API key",
    404: "No such resource (or not this site's)",
    409: "Conflicts with an earlier request or the resource's state",
    413: "Body over the size limit",
    422: "Invalid input; `error.field` names the culprit",
    503: "The database (or broker) is unavailable; retry",
}


def errors(
    *codes: int, also: dict[int | str, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The error responses ``codes``, plus ``also`` (other successes, e.g. a replay's 200)."""
    found: dict[int | str, dict[str, Any]] = dict(also or {})
    for code in codes:
        found[code] = {"model": ErrorResponse, "description": _MEANING[code]}
    return found
