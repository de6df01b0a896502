"""The `/api` routes: thin handlers over `api.jobs.Jobs` and the read models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter, QueryParameter
from pydantic import BaseModel

from api.auth import principal
from api.errors import MalformedRequest
from api.jobs import Document, Jobs
from api.keys import Principal
from api.schemas import (
    BatchOut,
    ErrorOut,
    EventList,
    JobList,
    JobOut,
    StatsOut,
    StatusName,
)
from api.state import resources
from api.submissions import parse_json, to_batch, to_item

MAX_BODY = 256 * 1024
MAX_BATCH_BODY = 16 * 1024 * 1024  # a full batch of 1,000 jobs may well pass 256 KiB

REASONS = {
    200: "OK (for a repeated idempotency key with the same body: the existing job)",
    202: "cancel requested: the worker stops the running attempt",
    400: "malformed JSON or a bad query parameter",
    401: "missing or unknown API key",
    404: "no such job (or another organisation's)",
    409: "conflict: the job's status does not allow this, or the key is bound to another body",
    413: "request body too large",
    422: "invalid job: unknown type, invalid payload or bad option (field errors in extra)",
    429: "the organisation is at its active-job limit; see Retry-After",
    503: "storage unavailable",
}
TYPE_NAME = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"  # as job types are named
ORG_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
ADMIN_ORG = "admin keys only: limit to this organisation (other keys: ignored)"
JobId = Annotated[str, PathParameter(description="the job's id (a UUID)")]


def answers(ok: dict[int, type[BaseModel]], *errors: int) -> dict[int, ResponseSpec]:
    """Documented answers: the successes' models, then the error shape for each error code."""
    specs = {
        code: ResponseSpec(data_container=model, description=REASONS.get(code, "OK"))
        for code, model in ok.items()
    }
    for code in (*errors, 401, 503):
        specs[code] = ResponseSpec(data_container=ErrorOut, description=REASONS[code])
    return specs


Req = Request[Any, Any, Any]


async def caller(request: Req) -> tuple[Principal, Jobs]:
    """Who asks (401 if nobody we know), and the job operations on their behalf."""
    return await principal(request), Jobs(resources(request))


def _created(doc: Document) -> Response[Document]:
    return Response(doc, status_code=201, headers={"Location": f"/api/jobs/{doc['id']}"})


class JobRoutes(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post(
        "/",
        status_code=201,
        request_max_body_size=MAX_BODY,
        responses=answers({201: JobOut, 200: JobOut}, 400, 409, 413, 422, 429),
        summary="Submit a job",
    )
    async def submit(self, request: Req) -> Response[Document]:
        who, jobs = await caller(request)
        res = resources(request)
        item = to_item(
            parse_json(await request.body()),
            org=who.org,
            registry=res.registry,
            retry_delays_s=res.settings.retry_delays_s,
        )
        [(doc, created)] = await jobs.submit([item])
        return _created(doc) if created else Response(doc, status_code=200)

    @post(
        "/batch",
        status_code=201,
        request_max_body_size=MAX_BATCH_BODY,
        responses=answers({201: BatchOut}, 400, 409, 413, 422, 429),
        summary="Submit up to 1,000 jobs atomically",
    )
    async def submit_batch(self, request: Req) -> Response[Document]:
        who, jobs = await caller(request)
        res = resources(request)
        items = to_batch(
            parse_json(await request.body()),
            org=who.org,
            registry=res.registry,
            retry_delays_s=res.settings.retry_delays_s,
        )
        results = await jobs.submit(items)
        return Response({"items": [doc for doc, _ in results]}, status_code=201)

    @get("/", responses=answers({200: JobList}, 400), summary="List jobs, newest first")
    async def list_jobs(
        self,
        *,
        request: Req,
        status: Annotated[StatusName | None, QueryParameter()] = None,
        job_type: Annotated[
            str | None, QueryParameter(name="type", pattern=TYPE_NAME, max_length=100)
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=500)] = None,
        org: Annotated[str | None, QueryParameter(pattern=ORG_NAME, description=ADMIN_ORG)] = None,
    ) -> Response[Document]:
        who = await principal(request)
        queries = resources(request).queries
        try:
            items, next_cursor = await queries.list(
                who.scope(org), status=status, type=job_type, limit=limit, cursor=cursor
            )
        except ValueError as e:  # projections.InvalidCursor
            raise MalformedRequest(f"invalid cursor: {e}") from None
        return Response({"items": items, "next_cursor": next_cursor})

    @get(
        "/{job_id:str}",
        responses=answers({200: JobOut}, 400, 404),
        summary="A job, now or as it was at `at`",
    )
    async def get_job(
        self,
        request: Req,
        job_id: JobId,
        at: Annotated[
            datetime | None, QueryParameter(description="replay the ledger up to this instant")
        ] = None,
    ) -> Response[Document]:
        who, jobs = await caller(request)
        if at is None:
            return Response(await jobs.get(who, job_id))
        if at.tzinfo is None:
            raise MalformedRequest("at needs a time zone, e.g. 2026-01-01T12:00:00Z")
        return Response(await jobs.get_at(who, job_id, at))

    @get(
        "/{job_id:str}/events",
        responses=answers({200: EventList}, 404),
        summary="A job's events, in order",
    )
    async def job_events(self, request: Req, job_id: JobId) -> Response[Document]:
        who, jobs = await caller(request)
        return Response({"items": await jobs.events(who, job_id)})

    @delete(
        "/{job_id:str}",
        status_code=200,
        responses=answers({200: JobOut, 202: JobOut}, 404, 409),
        summary="Cancel a job",
    )
    async def cancel(self, request: Req, job_id: JobId) -> Response[Document]:
        who, jobs = await caller(request)
        doc = await jobs.cancel(who, job_id)
        return Response(doc, status_code=200 if doc["status"] == "cancelled" else 202)

    @post(
        "/{job_id:str}/retry",
        status_code=200,
        responses=answers({200: JobOut}, 404, 409, 429),
        summary="Retry a failed or cancelled job",
    )
    async def retry(self, request: Req, job_id: JobId) -> Response[Document]:
        who, jobs = await caller(request)
        return Response(await jobs.retry(who, job_id))


@get(
    "/api/stats",
    responses=answers({200: StatsOut}, 400),
    tags=["jobs"],
    summary="Counts of the organisation's jobs by status and by type",
)
async def stats(
    request: Req,
    org: Annotated[str | None, QueryParameter(pattern=ORG_NAME, description=ADMIN_ORG)] = None,
) -> Response[Document]:
    who = await principal(request)
    return Response(await resources(request).queries.stats(who.scope(org)))
