"""Operator routes: liveness, readiness and Prometheus metrics (no key needed)."""

from __future__ import annotations

import time
from typing import Any

import anyio
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from api.errors import error_body
from api.metrics import render
from api.schemas import ErrorOut, HealthOut, ReadyOut
from api.state import Resources, resources

MAX_LAG_S = 5.0
CHECK_TIMEOUT_S = 2.0


@get("/health", tags=["ops"], summary="The process is alive")
async def health() -> HealthOut:
    return HealthOut(status="ok")


async def _check(name: str, probe: Any, checks: dict[str, Any]) -> None:
    started = time.perf_counter()
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            checks[name] = await probe()
    except Exception as e:  # a failed probe is an answer (not ready), not an error
        checks[name] = {"ok": False, "error": type(e).__name__}
        return
    checks[name].setdefault("ms", round((time.perf_counter() - started) * 1000, 2))


async def _postgres(res: Resources) -> dict[str, Any]:
    async with res.pool.connection() as conn:
        await conn.execute("SELECT 1")
    return {"ok": True}


async def _redis(res: Resources) -> dict[str, Any]:
    await res.redis.ping()
    return {"ok": True}


async def _projections(res: Resources) -> dict[str, Any]:
    lag = await res.queries.lag()
    return {"ok": lag.seconds <= MAX_LAG_S, "lag_events": lag.events, "lag_s": lag.seconds}


@get(
    "/ready",
    tags=["ops"],
    summary="PostgreSQL and Redis reachable, projections within 5 s",
    responses={
        200: ResponseSpec(ReadyOut, description="ready"),
        503: ResponseSpec(ErrorOut, description="not ready; the failing checks in extra"),
    },
)
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    res = resources(request)
    checks: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_check, "postgres", lambda: _postgres(res), checks)
        tg.start_soon(_check, "redis", lambda: _redis(res), checks)
        tg.start_soon(_check, "projections", lambda: _projections(res), checks)
    if all(c["ok"] for c in checks.values()):
        return Response({"status": "ready", "checks": checks})
    return Response(error_body(503, "not ready", checks), status_code=503)


@get(
    "/metrics",
    tags=["ops"],
    summary="Prometheus metrics",
    media_type="text/plain; version=0.0.4; charset=utf-8",
)
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    queries = resources(request).queries
    return render(await queries.metrics(), await queries.lag())
