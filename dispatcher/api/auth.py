"""``Authorization: Bearer <site API key>``: the dependency that names the calling site."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dispatcher.api.context import ApiContext, get_context
from dispatcher.api.errors import HttpError

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="SiteKey",
    description="A site API key from `paydispatch keys create SITE`",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="paydispatch"'}


async def require_site(
    ctx: Annotated[ApiContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The site whose key came with the request; 401 for a missing, unknown or revoked key."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HttpError(
            401, "unauthorized", "send Authorization: Bearer <API key>", headers=_CHALLENGE
        )
    key = credentials.credentials
    site = ctx.keys.cached_site(key)
    if site is None:
        site = await to_thread.run_sync(ctx.keys.verify, key)
    if site is None:
        raise HttpError(401, "unauthorized", "unknown or revoked API key", headers=_CHALLENGE)
    return site


Site = Annotated[str, Depends(require_site)]
Context = Annotated[ApiContext, Depends(get_context)]
