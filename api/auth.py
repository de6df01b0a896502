"""Bearer-key authentication: every `/api` route depends on `principal`."""

from __future__ import annotations

from typing import Any

from litestar import Request

from api.errors import NotAuthenticated
from api.keys import Principal
from api.state import resources


async def principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 when missing or unknown."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthenticated("missing API key: send Authorization: Bearer <key>")
    found = await resources(request).keys.find(key.strip())
    if found is None:
        raise NotAuthenticated("unknown API key")
    request.state.principal = found  # the access log names the caller
    return found
