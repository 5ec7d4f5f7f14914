"""Site endpoints refuse query parameters they do not read, as they refuse unknown body fields:
a misspelt filter (``?stauts=paid``) is an error, not a silently unfiltered answer."""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from dispatcher.api.errors import HttpError

_KNOWN: dict[int, frozenset[str]] = {}


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _known(route: APIRoute) -> frozenset[str]:
    names = _KNOWN.get(id(route))
    if names is None:
        names = _KNOWN[id(route)] = frozenset(_query_names(route.dependant))
    return names


async def no_unknown_query(request: Request) -> None:
    """A router dependency: 422 ``unknown_field`` naming the first parameter the route lacks
    (``invalid_field`` for one given twice)."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        refuse_unknown_query(request, _known(route))


def refuse_unknown_query(request: Request, known: frozenset[str] = frozenset()) -> None:
    """:func:`no_unknown_query` for a route that reads its request itself (no parameters)."""
    if not request.scope["query_string"]:
        return
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in known:
            raise HttpError(
                422, "unknown_field", f"{name}: is not a parameter of this request", field=name
            )
        if name in seen:  # every parameter here takes one value
            raise HttpError(422, "invalid_field", f"{name}: is given more than once", field=name)
        seen.add(name)
