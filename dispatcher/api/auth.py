"""``Authorization: Bearer <site API key>``: the dependency that names the calling site."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dispatcher.api.context import ApiContext, get_context
from dispatcher.api.errors import HttpError

SCHEME = "SiteKey"
bearer = HTTPBearer(
    auto_error=False,
    scheme_name=SCHEME,
    description="A site API key from `paydispatch keys create SITE`",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="paydispatch"'}


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, read as :data:`bearer` reads it
    (the scheme in any case, the key stripped); None for a missing or other header."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if not key or scheme.lower() != "bearer":
        return None
    return key


async def authenticate(ctx: ApiContext, key: str | None) -> str:
    """The site whose key came with the request; 401 for a missing, unknown or revoked key.

    The one check of a site's key: the :data:`Site` dependency calls it, and so does the
    create, which reads its request itself (``dispatcher.api.orders.create_order``).
    """
    if key is None:
        raise HttpError(
            401, "unauthorized", "send Authorization: Bearer <API key>", headers=_CHALLENGE
        )
    site = await ctx.keys.verify(key, ctx.orders.pool)
    if site is None:
        raise HttpError(401, "unauthorized", "unknown or revoked API key", headers=_CHALLENGE)
    return site


async def require_site(
    ctx: Annotated[ApiContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """:func:`authenticate` as a dependency."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        return await authenticate(ctx, None)
    return await authenticate(ctx, credentials.credentials)


Site = Annotated[str, Depends(require_site)]
Context = Annotated[ApiContext, Depends(get_context)]
