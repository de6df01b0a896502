"""One structlog JSON line per request: method, path, status, duration, org. No headers."""

from __future__ import annotations

import time
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("jobledger.api")


def access_log(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: wraps `send` to see the status, logs once the answer is out."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if nothing is sent at all, the server answers 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_and_note)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            who = state.get("principal")
            log.info(
                "request",
                method=scope.get("method"),
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                org=getattr(who, "org", None),
                key_id=getattr(who, "key_id", None),
                client=(scope.get("client") or ("?",))[0],
            )

    return middleware
