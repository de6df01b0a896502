"""One structlog JSON line per request: method, path, status, duration, org. No headers.

A write to stderr costs a system call, and system calls are slow on small VMs
(0.3-1 ms here): at thousands of requests per second that is a core. So the
lines are rendered by the configured structlog processors as usual but
gathered in memory and written every 100 ms, in writes of whole lines of at
most 4 KiB (which a pipe keeps whole, even beside other writers).
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

ATOMIC_WRITE = 4096  # PIPE_BUF on Linux
FLUSH_EVERY_S = 0.1


class LineBuffer:
    """A structlog logger that keeps rendered lines until `flush` writes them."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self.lines: list[str] = []

    def msg(self, message: str) -> None:
        self.lines.append(message)

    info = debug = warning = error = critical = msg

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "replace") + b"\n"
            if chunk and size + len(data) > ATOMIC_WRITE:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # nowhere to log to: the requests matter more than their log

    async def run(self) -> None:
        """Flush every 100 ms until cancelled, then once more."""
        try:
            while True:
                await anyio.sleep(FLUSH_EVERY_S)
                if self.lines:
                    self.flush()
        finally:
            self.flush()


class AccessLog:
    """ASGI middleware: wraps `send` to see the status, logs once the answer is out."""

    def __init__(self, app: ASGIApp, buffer: LineBuffer) -> None:
        self.app = app
        self.buffer = buffer
        config = structlog.get_config()
        self.log = structlog.wrap_logger(
            buffer,
            processors=config["processors"],
            wrapper_class=config["wrapper_class"],
        ).bind()  # the bound logger itself: the lazy proxy would rebuild it per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if nothing is sent at all, the server answers 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            who = state.get("principal")
            self.log.info(
                "request",
                method=scope.get("method"),
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                org=getattr(who, "org", None),
                key_id=getattr(who, "key_id", None),
                client=(scope.get("client") or ("?",))[0],
            )
