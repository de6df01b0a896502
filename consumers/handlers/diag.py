"""`diag.echo`: the diagnostics and benchmark job type of the contract."""

from __future__ import annotations

from typing import Any, Protocol

import anyio

from consumers.context import AttemptContext
from ledger import NonRetryableError


class EchoPayload(Protocol):
    """The fields of `diag.echo`'s payload model (declared with the job type in `ledger`)."""

    @property
    def sleep_ms(self) -> int: ...
    @property
    def fail_times(self) -> int: ...
    @property
    def retryable(self) -> bool: ...
    @property
    def error(self) -> str: ...
    @property
    def result(self) -> Any: ...


class EchoError(Exception):
    """The retryable failure `diag.echo` raises on its first `fail_times` attempts."""


async def echo(payload: EchoPayload, context: AttemptContext) -> dict[str, Any]:
    """Sleep (cancellably), fail on attempts up to `fail_times`, else echo `result`."""
    if payload.sleep_ms:
        await anyio.sleep(payload.sleep_ms / 1000)
    if context.attempt <= payload.fail_times:
        if not payload.retryable:
            raise NonRetryableError(payload.error)
        raise EchoError(payload.error)
    return {"echo": payload.result}
