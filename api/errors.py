"""The one place where errors become HTTP answers: `{"status_code", "detail", "extra"}`.

ApiError                   conditions the API itself finds in a request
├── NotAuthenticated       no key, or one we do not know          → 401
├── MalformedRequest       body is not JSON, bad query value      → 400
└── InvalidRequest         JSON that is not a valid submission    → 422

The ledger's errors (`ledger.JobledgerError`) map by class below; Litestar's
own (unknown route 404, 405, 413 body too large, 400 bad parameter) keep their
code but take our shape. Anything else is a bug: logged with its traceback,
answered with a bare JSON 500.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from ledger import (
    DATABASE_DOWN,
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidJob,
    InvalidTransition,
    JobledgerError,
    JobNotFound,
    QuotaExceeded,
)

log = structlog.get_logger("jobledger.api")

RETRY_AFTER_S = 5
"""What a 429 suggests: long enough for some of the org's jobs to finish."""


class ApiError(Exception):
    """Root of the API's own request errors."""

    def __init__(self, detail: str, extra: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotAuthenticated(ApiError):
    pass


class MalformedRequest(ApiError):
    pass


class InvalidRequest(ApiError):
    pass


STATUS: Mapping[type[Exception], int] = {
    NotAuthenticated: 401,
    MalformedRequest: 400,
    InvalidRequest: 422,
    JobNotFound: 404,
    InvalidTransition: 409,
    IdempotencyConflict: 409,
    ConcurrencyConflict: 409,
    InvalidJob: 422,
    QuotaExceeded: 429,
}


def error_body(status_code: int, detail: str, extra: Any = None) -> dict[str, Any]:
    return {"status_code": status_code, "detail": detail, "extra": extra}


def _answer(
    status_code: int, detail: str, extra: Any = None, headers: Mapping[str, str] | None = None
) -> Response[dict[str, Any]]:
    return Response(
        error_body(status_code, detail, extra), status_code=status_code, headers=headers
    )


def _status_for(e: Exception) -> int:
    for cls in type(e).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def field_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic-style errors reduced to what a client needs: where, what, which kind."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]


def on_api_error(_: Request[Any, Any, Any], e: ApiError) -> Response[dict[str, Any]]:
    return _answer(_status_for(e), e.detail, e.extra)


def on_ledger_error(_: Request[Any, Any, Any], e: JobledgerError) -> Response[dict[str, Any]]:
    status = _status_for(e)
    if isinstance(e, InvalidJob):
        return _answer(status, str(e), field_errors(e.errors))
    if isinstance(e, QuotaExceeded):
        extra = {"org": e.org, "limit": e.limit}
        return _answer(status, str(e), extra, {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, JobNotFound):
        return _answer(status, "job not found")  # the same words for missing and foreign
    return _answer(status, str(e))


def on_http_error(_: Request[Any, Any, Any], e: HTTPException) -> Response[dict[str, Any]]:
    status = e.status_code if 400 <= e.status_code < 500 else 500
    extra = e.extra if status < 500 else None
    detail = e.detail[:300] if status < 500 else "internal server error"
    headers = {k: v for k, v in (e.headers or {}).items() if k.lower() == "allow"}
    return _answer(status, detail, extra or None, headers)


def on_unavailable(request: Request[Any, Any, Any], e: Exception) -> Response[dict[str, Any]]:
    log.warning("storage unavailable", path=request.url.path, error=type(e).__name__)
    return _answer(503, "storage unavailable, try again", None, {"Retry-After": "1"})


def on_bug(request: Request[Any, Any, Any], e: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled error", path=request.url.path, exc_info=e)
    return _answer(500, "internal server error")


def exception_handlers() -> ExceptionHandlersMap:
    handlers: ExceptionHandlersMap = {
        ApiError: on_api_error,
        JobledgerError: on_ledger_error,
        HTTPException: on_http_error,
        Exception: on_bug,
    }
    for cls in DATABASE_DOWN:
        handlers[cls] = on_unavailable
    return handlers
