"""One attempt of one job: running its handler, and what the ledger records of it.

`run` calls the handler under the job's timeout and turns whatever happens
(a result, an error, a timeout, a stop from outside) into an `Outcome`;
`outcome_events` is the pure decision of the events that record it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ValidationError

from consumers.context import AttemptContext
from consumers.streams import Message
from ledger import Job, JobEvent, JobType, NonRetryableError, RetryPolicy, commands

Kind = Literal["succeeded", "error", "timeout", "cancelled", "shutdown", "lost"]
StopReason = Literal["cancelled", "shutdown", "lost"]
MAX_MESSAGE = 2000

STOP_MESSAGES: dict[str, str] = {
    "timeout": "the attempt ran past its timeout of {timeout:g} s",
    "shutdown": "the worker shut down before the attempt ended",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    duration_ms: float
    result: Any = None
    error_type: str = ""
    message: str = ""
    retryable: bool = True


class Attempt:
    """An attempt this worker started: the job as last recorded, and how to stop it."""

    __slots__ = ("ended", "job", "message", "number", "scope", "stale", "started_at", "stop_reason")

    def __init__(self, message: Message, job: Job) -> None:
        self.message = message
        self.job = job
        self.number = job.attempts
        self.scope: anyio.CancelScope | None = None
        self.stop_reason: StopReason | None = None
        self.stale = False  # the job moved on in the ledger (e.g. a cancel request)
        self.started_at = 0.0  # wall clock, as the handler starts
        self.ended = False  # the handler has returned (its outcome may not be recorded yet)

    def stop(self, reason: StopReason) -> None:
        """Stop the handler (at once, or as soon as it starts); the first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.scope is not None:
            self.scope.cancel()


async def run(attempt: Attempt, kind: JobType) -> Outcome:
    """Run the handler under the job's timeout; never raises for what the handler does."""
    job = attempt.job
    assert kind.handler is not None
    context = AttemptContext(job.id, job.org, job.type, attempt.number)
    with anyio.CancelScope(deadline=anyio.current_time() + job.timeout_s) as scope:
        attempt.scope = scope
        if attempt.stop_reason is not None:
            scope.cancel()
        attempt.started_at = time.time()
        began = time.perf_counter()
        try:
            payload = kind.payload_model.model_validate(job.payload)
            result = _as_json(await kind.handler(payload, context))
        except (NonRetryableError, ValidationError) as e:
            if not scope.cancel_called:
                return _error(e, began, retryable=False)
        except Exception as e:
            if not scope.cancel_called:
                return _error(e, began, retryable=True)
        else:
            return Outcome("succeeded", _ms(began), result=result)
        finally:
            attempt.ended = True
    kind_: Kind = attempt.stop_reason or "timeout"
    message = STOP_MESSAGES.get(kind_, kind_).format(timeout=job.timeout_s)
    return Outcome(kind_, _ms(began), error_type=kind_, message=message)


def outcome_events(
    job: Job, attempt: int, outcome: Outcome, policy: RetryPolicy, now: Any
) -> list[JobEvent]:
    """The events recording how the attempt ended (raises InvalidTransition if it can't)."""
    if outcome.kind == "succeeded":
        return commands.succeed(job, attempt, outcome.result, outcome.duration_ms, now)
    if outcome.kind == "cancelled":
        return commands.confirm_cancel(job, attempt, now)
    return commands.fail_attempt(
        job,
        attempt,
        reason=outcome.kind,
        error_type=outcome.error_type,
        message=outcome.message,
        retryable=outcome.retryable,
        duration_ms=outcome.duration_ms,
        policy=policy,
        now=now,
    )


def _error(e: BaseException, began: float, *, retryable: bool) -> Outcome:
    return Outcome(
        "error",
        _ms(began),
        error_type=type(e).__name__,
        message=str(e)[:MAX_MESSAGE],
        retryable=retryable,
    )


class UnserializableResult(NonRetryableError):
    """The handler returned something that is not JSON."""


def _as_json(result: Any) -> Any:
    """The result as the ledger stores it: plain JSON."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if _is_plain(result):
        return result
    try:
        json.dumps(result)
    except (TypeError, ValueError) as e:
        raise UnserializableResult(f"the handler's result is not JSON: {e}") from None
    return result


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Cheaply true for the small results most handlers return (json.dumps decides the rest)."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    if depth < 2 and type(value) is dict:
        return all(type(k) is str and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _ms(began: float) -> float:
    return round((time.perf_counter() - began) * 1000, 3)
